"""Reading official checkpoint files: formats, renames, strict loading and failure messages."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dve_perception.errors import CheckpointError
from dve_perception.model import build_dveformer
from dve_perception.model.checkpoint import (
    detect_variant,
    load_checkpoint,
    load_linear_probing_weights,
    load_state_dict_strict,
    read_checkpoint_file,
    rename_official_keys,
)
from dve_perception.model.generated_weights import generate_state_dict


@pytest.fixture
def tiny_state(tiny_model):
    return tiny_model.state_dict()


def compiled_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as saved by a model whose submodules were compiled separately (`_orig_mod.`)."""
    out = {}
    for key, value in state.items():
        top, rest = key.split(".", 1)
        out[f"{top}._orig_mod.{rest}"] = value
    return out


def test_official_renames_are_applied():
    state = {
        "encoder._orig_mod.backbone.x": torch.zeros(1),
        "fused_encoders.backbone.y": torch.zeros(1),
        "decoders.z": torch.zeros(1),
    }
    assert sorted(rename_official_keys(state)) == [
        "decoders.z",
        "encoder.backbone.x",
        "encoder.backbone.y",
    ]


def test_loads_compiled_checkpoint_with_numpy_logs(
    tmp_path, tiny_config, tiny_state, official_checkpoint_writer
):
    # Training logs hold numpy scalars; a weights-only load must still accept them.
    logs = {"miou": np.float64(0.44), "loss": np.float32(0.1), "epoch_times": [1.5, 2.0]}
    path = official_checkpoint_writer(tmp_path / "a.pth", compiled_layout(tiny_state), logs=logs)
    model = load_checkpoint(path, tiny_config)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key


def test_fused_encoders_prefix_is_renamed(
    tmp_path, tiny_config, tiny_state, official_checkpoint_writer
):
    state = {k.replace("encoder.", "fused_encoders.", 1): v for k, v in tiny_state.items()}
    path = official_checkpoint_writer(tmp_path / "b.pth", state)
    model = load_checkpoint(path, tiny_config)
    assert torch.equal(
        model.encoder.backbone.layer_1[0].attn.qkv.weight,
        tiny_state["encoder.backbone.layer_1.0.attn.qkv.weight"],
    )


def test_bare_state_dict_file_is_accepted(tmp_path, tiny_config, tiny_state):
    torch.save(tiny_state, tmp_path / "bare.pth")
    load_checkpoint(tmp_path / "bare.pth", tiny_config)


def test_variant_is_detected_from_the_file(reducedres_checkpoint):
    model = load_checkpoint(reducedres_checkpoint)
    assert model.config.n_upsamplings == 0


def test_other_variant_error_names_the_variant_the_file_looks_like(reducedres_checkpoint):
    with pytest.raises(CheckpointError, match=r"looks like the 'reducedres' variant") as info:
        load_checkpoint(reducedres_checkpoint, "fullres")
    message = str(info.value)
    assert "4 missing keys" in message and "_task_head.upsample_0.conv.weight" in message
    assert "shape mismatches" in message and "(768, 512, 1, 1)" in message


def test_detect_variant_on_state_dict_layouts():
    assert detect_variant(generate_state_dict(build_dveformer("fullres"))) == "fullres"
    assert detect_variant({"other.weight": torch.zeros(1)}) is None


def test_mismatch_lists_missing_and_unexpected_keys(tiny_model, tiny_state):
    state = dict(tiny_state)
    del state["context_module.final_conv.conv.weight"]
    state["context_module.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(tiny_model, state)
    message = str(info.value)
    assert "1 missing keys: context_module.final_conv.conv.weight" in message
    assert "1 unexpected keys: context_module.extra.weight" in message


def test_model_is_unchanged_after_a_failed_load(tiny_model, tiny_state):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in tiny_state.items()}
    del bad["encoder.backbone.layer_4.1.weight"]
    with pytest.raises(CheckpointError):
        load_state_dict_strict(tiny_model, bad)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Payload:
    """A class a weights-only load must refuse to reconstruct."""


def test_pickled_objects_need_explicit_trust(
    tmp_path, tiny_config, tiny_state, official_checkpoint_writer
):
    path = official_checkpoint_writer(tmp_path / "p.pth", tiny_state, extra=Payload())
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_checkpoint(path, tiny_config)
    load_checkpoint(path, tiny_config, trusted=True)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "not a readable torch checkpoint"),
        (b"this is a text file\n", "not a readable torch checkpoint"),
        (pickle.dumps([1, 2, 3]), "not a readable torch checkpoint"),
    ],
)
def test_foreign_files_are_rejected(tmp_path, content, match):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint_file(path)


def test_truncated_checkpoint_is_rejected(
    tmp_path, tiny_config, tiny_state, official_checkpoint_writer
):
    path = official_checkpoint_writer(tmp_path / "t.pth", tiny_state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, tiny_config)


def test_missing_file_and_wrong_containers_are_rejected(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pth", tiny_config)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pth", tiny_config)
    torch.save({"model": 1, "epoch": 2}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        load_checkpoint(tmp_path / "nostate.pth", tiny_config)
    torch.save({"state_dict": {"a": 1}}, tmp_path / "notensors.pth")
    with pytest.raises(CheckpointError, match="not a mapping of tensors"):
        load_checkpoint(tmp_path / "notensors.pth", tiny_config)


def test_linear_probing_file(tmp_path):
    weight = torch.randn(40, 768, 1, 1)
    path = tmp_path / "lp.pth"
    torch.save(
        {"linear_probing_head_state_dict": {"weight": weight}, "epoch": 49, "logs": {}}, path
    )
    assert torch.equal(load_linear_probing_weights(path), weight[:, :, 0, 0])
    with pytest.raises(CheckpointError, match="linear-probing head file, not a model checkpoint"):
        load_checkpoint(path, "reducedres")
    with pytest.raises(CheckpointError, match=r"expected \(classes, 512, 1, 1\)"):
        load_linear_probing_weights(path, embedding_dim=512)
    torch.save({"state_dict": {}}, tmp_path / "notlp.pth")
    with pytest.raises(CheckpointError, match="no 'linear_probing_head_state_dict'"):
        load_linear_probing_weights(tmp_path / "notlp.pth")


def _rename_pickled_global(path, old: bytes, new: bytes) -> None:
    """Rewrite a torch.save archive as if its pickle named another module (protocol-2 GLOBAL)."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            dst.writestr(info, data.replace(old, new) if info.filename.endswith(".pkl") else data)


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_scalars_pickled_by_either_numpy_major_version_load(
    tmp_path, tiny_config, tiny_state, official_checkpoint_writer, module
):
    path = official_checkpoint_writer(tmp_path / "n.pth", tiny_state, logs={"miou": np.float64(1)})
    data = zipfile_pickle(path)
    current = (
        b"numpy._core.multiarray" if b"numpy._core.multiarray" in data else b"numpy.core.multiarray"
    )
    _rename_pickled_global(path, current, module)
    assert module + b"\nscalar" in zipfile_pickle(path)
    assert read_checkpoint_file(path)["logs"]["miou"] == 1.0


def zipfile_pickle(path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))


def test_a_pde_checkpoint_loaded_into_an_official_model_says_it_has_a_pde_stem(tmp_path):
    from dve_perception.model import build_dveformer
    from dve_perception.model.checkpoint import load_state_dict_strict
    from dve_perception.model.dveformer import TINY_TEST_CONFIG
    from dve_perception.training.depth_encoding import with_pde_depth_stem

    trained = with_pde_depth_stem(build_dveformer(TINY_TEST_CONFIG), channels=32)
    with pytest.raises(CheckpointError, match="32-channel PDE depth stem") as info:
        load_state_dict_strict(build_dveformer(TINY_TEST_CONFIG), trained.state_dict(), "pde.pth")
    assert "looks like" not in str(info.value)
