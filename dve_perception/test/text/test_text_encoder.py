"""Tests of the CLIP text encoder on randomly initialised towers with the real CLIP tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from dve_perception.text import clip_model_files
from dve_perception.text import embedding_cache as text_embedding_cache
from dve_perception.text import encoder as te

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real-size random tower (about 500 MB), written once per session."""
    folder = te.write_random_text_model(tmp_path_factory.mktemp("clip") / te.MODEL_FOLDER_NAME)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # pytest keeps old temp dirs; not 500 MB each


@pytest.fixture(scope="session")
def encoder(model_dir: Path) -> te.CLIPTextEncoder:
    return te.CLIPTextEncoder.from_folder(model_dir, use_cache=False)


@pytest.fixture(scope="session")
def full_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny full-CLIP folder like the HF repo: nested legacy text_config, pytorch_model.bin."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("full_clip")
    legacy_ids = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}  # as in the HF repo
    vision = {**TINY_TEXT, "image_size": 28, "patch_size": 14}
    config = CLIPConfig(text_config={**TINY_TEXT, **legacy_ids}, vision_config=vision)
    config.projection_dim = 768
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    state = model.state_dict()
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # old checkpoints have it
    torch.save(state, folder / "pytorch_model.bin")
    data = config.to_dict()
    data["text_config"].pop("projection_dim", None)  # old text_config blocks lack it
    data["text_config"].update(bad_words_ids=None, max_length=20, num_beams=1, torch_dtype=None)
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    te.write_tokenizer_files(folder)
    return folder, model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-only tower with a 768-d projection, for tests that copy or corrupt folders."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("tiny")
    config = CLIPTextConfig(**{**te.CLIP_VIT_L14_TEXT_CONFIG, **TINY_TEXT})
    torch.manual_seed(1)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    return te.write_tokenizer_files(folder)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing connection fail loudly, so a test shows that loading stays offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_vendored_vocabulary_gives_openai_clip_token_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    digest = hashlib.sha256(clip_model_files._BPE_FILE.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    tokenizer = CLIPTokenizer.from_pretrained(te.write_tokenizer_files(tmp_path))
    assert len(tokenizer) == 49408
    ids = tokenizer(["a photo of a cat", "a photo of a dog"])["input_ids"]
    assert ids == [
        [49406, 320, 1125, 539, 320, 2368, 49407],
        [49406, 320, 1125, 539, 320, 1929, 49407],
    ]
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_random_model_has_the_real_configuration(
    model_dir: Path, encoder: te.CLIPTextEncoder
) -> None:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for key, value in te.CLIP_VIT_L14_TEXT_CONFIG.items():
        assert config[key] == value, key
    assert (encoder.embedding_dim, encoder.context_length, encoder.is_random) == (768, 77, True)


def test_random_model_depends_only_on_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load_file

    for key, value in TINY_TEXT.items():
        monkeypatch.setitem(te.CLIP_VIT_L14_TEXT_CONFIG, key, value)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    weights = [
        load_file(te.write_random_text_model(tmp_path / f"m{i}", seed=s) / "model.safetensors")
        for i, s in enumerate([0, 0, 1])
    ]
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not np.array_equal(
        weights[0]["text_projection.weight"], weights[2]["text_projection.weight"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0", "m1", "m2"]  # no staging left over
    with pytest.raises(ConfigError, match="not empty"):
        te.write_random_text_model(tmp_path / "m0")
    with pytest.raises(ConfigError, match="non-negative int"):
        te.write_random_text_model(tmp_path / "m3", seed=-1)


def test_encode_gives_deterministic_unit_vectors(
    encoder: te.CLIPTextEncoder, model_dir: Path, no_network: None
) -> None:
    embeddings = encoder.encode(["chair", "table", "night stand"])
    assert embeddings.shape == (3, 768) and embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu"
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert torch.equal(encoder.encode(["chair", "table", "night stand"]), embeddings)
    reloaded = te.CLIPTextEncoder(model_dir, use_cache=False)
    assert reloaded.fingerprint == encoder.fingerprint
    assert torch.equal(reloaded.encode(["chair", "table", "night stand"]), embeddings)
    # Alone, "chair" is padded differently: equal up to float rounding.
    np.testing.assert_allclose(encoder.encode_numpy(["chair"]), embeddings[:1].numpy(), atol=1e-6)


def test_different_texts_give_different_vectors(encoder: te.CLIPTextEncoder) -> None:
    a, b, c = encoder.encode(["chair", "table", "chair"])
    assert torch.equal(a, c)
    assert float(a @ b) < 0.999


def test_prompt_template_is_applied(encoder: te.CLIPTextEncoder) -> None:
    assert encoder.render(["cat"]) == ["a detailed photo of a cat"]
    plain = encoder.with_prompt_template("{}")
    torch.testing.assert_close(encoder.encode(["cat"]), plain.encode(["a detailed photo of a cat"]))
    assert float(encoder.encode(["cat"])[0] @ plain.encode(["cat"])[0]) < 0.999
    assert encoder.prompt_template == te.DEFAULT_PROMPT_TEMPLATE  # the original is unchanged


def test_long_text_warns_and_is_truncated(
    encoder: te.CLIPTextEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    words = " ".join(["word"] * 90)
    with caplog.at_level(logging.WARNING, logger=te.__name__):
        encoder.encode(["cat"])
        assert not caplog.records
        a, b = encoder.encode([words + " cat", words + " dog"])
    assert len(caplog.records) == 2 and "77-token context" in caplog.records[0].getMessage()
    assert torch.equal(a, b)  # the words past the context do not count
    assert a.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_cache_hit_skips_model(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = te.CLIPTextEncoder(model_dir, cache_dir=tmp_path)
    first = encoder.encode(["chair", "table"])
    files = sorted((tmp_path / encoder.fingerprint).iterdir())
    assert [f.suffix for f in files] == [".npy", ".npy"]  # no temporary files left behind

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(encoder._model, "forward", boom)
    assert torch.equal(encoder.encode(["table", "chair", "table"]), first[[1, 0, 1]])
    # Another template is another prompt, hence a miss that runs the (patched) model.
    with pytest.raises(AssertionError, match="cache hit"):
        encoder.with_prompt_template("a photo of a {}").encode(["chair"])
    # A new encoder on the same folder finds the entries.
    reloaded = te.CLIPTextEncoder(model_dir, cache_dir=tmp_path)
    monkeypatch.setattr(reloaded._model, "forward", boom)
    assert torch.equal(reloaded.encode(["chair"]), first[:1])


def test_other_model_misses_the_cache(model_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    big = te.CLIPTextEncoder(model_dir, cache_dir=tmp_path)
    big.encode(["chair"])
    tiny = te.CLIPTextEncoder(tiny_dir, cache_dir=tmp_path)
    calls = []
    tiny._model.register_forward_hook(lambda *args: calls.append(1))
    tiny.encode(["chair"])
    assert calls == [1] and big.fingerprint != tiny.fingerprint
    assert len(list(tmp_path.iterdir())) == 2


def test_fingerprint_covers_weights_config_and_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    reference = te.CLIPTextEncoder(tiny_dir, use_cache=False).fingerprint
    edits = {
        "model.safetensors": lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # one weight bit
        "config.json": lambda data: data + b"\n",
        "vocab.json": lambda data: data + b"\n",
    }
    for name, edit in edits.items():
        folder = _copy(tiny_dir, tmp_path / name)
        (folder / name).write_bytes(edit((folder / name).read_bytes()))
        assert te.CLIPTextEncoder(folder, use_cache=False).fingerprint != reference, name


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "not_unit", "pickled"])
def test_bad_cache_file_is_recomputed(
    tiny_dir: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    encoder = te.CLIPTextEncoder(tiny_dir, cache_dir=tmp_path)
    expected = encoder.encode(["chair"])
    path = encoder._cache.path("a detailed photo of a chair")
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong_shape":
        np.save(path, np.ones(5, np.float32) / np.sqrt(5))
    elif damage == "not_unit":
        np.save(path, np.ones(768, np.float32))
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with caplog.at_level(logging.WARNING, logger=text_embedding_cache.__name__):
        assert torch.equal(encoder.encode(["chair"]), expected)
    assert "bad text-embedding cache file" in caplog.text
    assert np.array_equal(np.load(path, allow_pickle=False), expected[0].numpy())  # repaired


def test_unwritable_cache_only_warns(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    encoder = te.CLIPTextEncoder(tiny_dir, cache_dir=blocker)
    with caplog.at_level(logging.WARNING, logger=text_embedding_cache.__name__):
        assert encoder.encode(["chair"]).shape == (1, 768)
    assert "cannot write text-embedding cache file" in caplog.text


def test_default_cache_dir_follows_environment(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(te.CACHE_ENV_VAR, raising=False)
    assert te.default_cache_dir() == tmp_path / "xdg" / "dve_perception" / "text_embeddings"
    monkeypatch.setenv(te.CACHE_ENV_VAR, str(tmp_path / "root"))
    assert te.default_cache_dir() == tmp_path / "root" / "text_embeddings"
    encoder = te.CLIPTextEncoder(tiny_dir)
    encoder.encode(["chair"])
    assert len(list((tmp_path / "root" / "text_embeddings" / encoder.fingerprint).iterdir())) == 1


def test_full_clip_folder_loads_quietly_and_offline(
    full_clip: tuple[Path, torch.nn.Module], capfd: pytest.CaptureFixture[str], no_network: None
) -> None:
    folder, model = full_clip
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(handler)  # it does not propagate to caplog
    try:
        encoder = te.CLIPTextEncoder(folder, use_cache=False)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not records  # no report on the ignored vision keys
    assert capfd.readouterr().err == ""  # no progress bars
    assert encoder.embedding_dim == 768 and not encoder.is_random
    ids = encoder._tokenizer(["a detailed photo of a cat"], return_tensors="pt")
    with torch.no_grad():
        reference = model.get_text_features(**ids)
    reference = reference if isinstance(reference, torch.Tensor) else reference.pooler_output
    expected = torch.nn.functional.normalize(reference, dim=-1)
    torch.testing.assert_close(encoder.encode(["cat"]), expected, rtol=0, atol=1e-6)


def test_folder_problems_raise_checkpoint_error(
    model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="folder not found"):
        te.CLIPTextEncoder(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no config.json"):
        te.CLIPTextEncoder(tmp_path)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(model_dir / "config.json", no_weights)
    te.write_tokenizer_files(no_weights)
    with pytest.raises(
        CheckpointError,
        match="text folder without weights: expected model.safetensors or pytorch_model.bin",
    ):
        te.CLIPTextEncoder(no_weights)
    no_tokenizer = _copy(tiny_dir, tmp_path / "no_tok")
    (no_tokenizer / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer: expected vocab.json and merges.txt"):
        te.CLIPTextEncoder(no_tokenizer)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"model_type": "bert"}, "model_type 'bert'; expected 'clip'"),
        ({"projection_dim": 512}, "512-d text projection; expected 768"),
        ({"model_type": "clip"}, "model_type 'clip'; expected 'clip' with a text_config"),
        (None, "cannot read .* as JSON"),
    ],
)
def test_wrong_config_raises(tiny_dir: Path, tmp_path: Path, edit: dict | None, match: str) -> None:
    folder = _copy(tiny_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = "{not json" if edit is None else json.dumps({**config, **edit})
    (folder / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError, match=match):
        te.CLIPTextEncoder(folder, use_cache=False)


def test_weights_of_another_model_raise(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _copy(tiny_dir, tmp_path)
    save_file({"encoder.weight": torch.zeros(2, 2)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks .* CLIP text-tower tensors"):
        te.CLIPTextEncoder(folder, use_cache=False)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load a CLIP text tower"):
        te.CLIPTextEncoder(folder, use_cache=False)


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ([], "texts is empty"),
        ([""], r"texts\[0\] is an empty or blank string"),
        (["cat", "  "], r"texts\[1\] is an empty or blank string"),
        (["cat", 3], r"texts\[1\] is a int \(3\); expected a str"),
        ([None], r"texts\[0\] is a NoneType"),
        ([b"cat"], r"texts\[0\] is a bytes"),
        ("cat", "texts must be a list of str, got a str"),
        (7, "texts must be a list of str, got a int"),
    ],
)
def test_bad_texts_raise_input_error(
    encoder: te.CLIPTextEncoder, texts: object, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        encoder.encode(texts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"prompt_template": "a photo"}, "has no '{}' placeholder"),
        ({"prompt_template": "a {name}"}, "is not a format string"),
        ({"prompt_template": "{} and {}"}, "is not a format string"),
        ({"prompt_template": None}, "is a NoneType"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"device": "nonsense"}, "is not a torch device"),
    ],
)
def test_bad_options_raise_config_error(tiny_dir: Path, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        te.CLIPTextEncoder(tiny_dir, use_cache=False, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_raises_config_error(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot move the text encoder to 'cuda'"):
        te.CLIPTextEncoder(tiny_dir, use_cache=False, device="cuda")


def test_missing_transformers_raises_backend_error(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(BackendUnavailableError, match=r"pip install 'transformers"):
        te.CLIPTextEncoder(tiny_dir, use_cache=False)
    with pytest.raises(BackendUnavailableError, match="needs `transformers`"):
        te.write_random_text_model(tmp_path / "model")


def test_import_is_cheap() -> None:
    code = (
        "import sys, dve_perception.text.encoder\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
