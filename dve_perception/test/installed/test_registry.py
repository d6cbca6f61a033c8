"""The models folder report: statuses, checksums, help text, and a download that fails safely."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from dve_perception.errors import CheckpointError
from dve_perception.installed.download import download_text_model
from dve_perception.installed.models_folder import MODELS_ENV_VAR, TEXT_MODEL_FOLDER
from dve_perception.installed.registry import (
    CHECKSUMS_FILE,
    DRIVE_FILE_IDS,
    file_sha256,
    format_models_table,
    inspect_models,
    installation_help,
    read_checksums,
    record_checksums,
)

DATA = Path(__file__).parents[1] / "data"
REDUCED = "dveformer_reducedres_mixed.pth"
FULL = "dveformer_fullres_mixed.pth"


def layout_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The published keys and shapes with one stored element each (stride 0): a ~70 kB file."""
    state = {}
    for line in (DATA / f"keys_{variant}.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        state[key] = torch.zeros((), dtype=getattr(torch, dtype)).expand(ast.literal_eval(shape))
    return state


@pytest.fixture(scope="module")
def reduced_state():
    return layout_state_dict("reducedres")


@pytest.fixture(autouse=True)
def _online_settings(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def by_name(entries):
    return {e.name: e for e in entries}


def write_clip_folder(folder: Path, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": "clip_text_model", "projection_dim": 768, "hidden_size": 768}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("#version: 0.2\n")
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    return folder


def test_empty_folder_lists_every_expected_file_as_missing_with_help(tmp_path):
    for folder in (tmp_path, tmp_path / "does_not_exist"):
        entries = inspect_models(folder)
        assert [e.name for e in entries] == [FULL, REDUCED, TEXT_MODEL_FOLDER]
        assert all(e.status == "missing" and not e.present and e.sha256 is None for e in entries)
        assert [e.kind for e in entries] == ["dveformer", "dveformer", "clip_text"]
    table = format_models_table(entries)
    assert table.count("missing") == 3
    assert f"https://drive.google.com/file/d/{DRIVE_FILE_IDS['reducedres']}/view" in table
    assert "openai/clip-vit-large-patch14-336" in table


def test_installation_help_names_every_source_and_the_env_var(tmp_path):
    text = installation_help(tmp_path)
    assert MODELS_ENV_VAR in text and str(tmp_path) in text
    for file_id in DRIVE_FILE_IDS.values():
        assert f"https://drive.google.com/file/d/{file_id}/view" in text
    assert "openai/clip-vit-large-patch14-336" in text and "tar -xzf" in text
    assert FULL in text and REDUCED in text and "linear_probing" in text
    assert "does not authenticate" in text or "cannot authenticate" in text


def test_correct_reducedres_file_is_ok_with_its_sha256(
    tmp_path, reduced_state, official_checkpoint_writer
):
    path = official_checkpoint_writer(tmp_path / REDUCED, reduced_state)
    entry = by_name(inspect_models(tmp_path))[REDUCED]
    assert entry.status == "ok" and entry.ok and entry.variant == "reducedres"
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.size_bytes == path.stat().st_size and entry.checksum is None
    assert by_name(inspect_models(tmp_path))[FULL].status == "missing"


def test_reducedres_file_under_the_fullres_name_is_the_wrong_variant(
    tmp_path, reduced_state, official_checkpoint_writer
):
    official_checkpoint_writer(tmp_path / FULL, reduced_state)
    entry = by_name(inspect_models(tmp_path))[FULL]
    assert entry.status == "wrong variant" and entry.variant == "reducedres"
    assert "wrong variant [reducedres]" in format_models_table([entry])


def test_fullres_layout_is_recognised(tmp_path, official_checkpoint_writer):
    official_checkpoint_writer(tmp_path / FULL, layout_state_dict("fullres"))
    entry = by_name(inspect_models(tmp_path))[FULL]
    assert entry.status == "ok" and entry.variant == "fullres"


def test_a_file_with_a_missing_key_is_a_layout_mismatch(
    tmp_path, reduced_state, official_checkpoint_writer
):
    state = dict(reduced_state)
    del state["encoder.backbone.patch_embedder.rgb_layers.0.bias"]
    official_checkpoint_writer(tmp_path / REDUCED, state)
    entry = by_name(inspect_models(tmp_path))[REDUCED]
    assert entry.status.startswith("layout mismatch:") and "missing keys" in entry.status


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04 truncated zip"])
def test_corrupt_files_are_unreadable(tmp_path, content):
    (tmp_path / REDUCED).write_bytes(content)
    entry = by_name(inspect_models(tmp_path))[REDUCED]
    assert entry.status.startswith("unreadable:") and entry.present
    assert entry.sha256 == hashlib.sha256(content).hexdigest()


def test_truncated_checkpoint_is_unreadable(tmp_path, reduced_state, official_checkpoint_writer):
    path = official_checkpoint_writer(tmp_path / "full.pth", reduced_state)
    (tmp_path / REDUCED).write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path.unlink()
    assert by_name(inspect_models(tmp_path))[REDUCED].status.startswith("unreadable:")


class _RunsCode:
    """Unpickling this would create a file: the registry must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_file_that_needs_unpickling_is_refused_without_running_it(tmp_path, reduced_state):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": reduced_state, "payload": _RunsCode(marker)}, tmp_path / REDUCED)
    entry = by_name(inspect_models(tmp_path))[REDUCED]
    assert entry.status.startswith("unreadable:") and "trust" in entry.status
    assert not marker.exists()


def test_checksums_record_verify_and_detect_a_change(
    tmp_path, reduced_state, official_checkpoint_writer
):
    official_checkpoint_writer(tmp_path / REDUCED, reduced_state)
    write_clip_folder(tmp_path / TEXT_MODEL_FOLDER)
    (tmp_path / "README.md").write_text("not recorded")
    path = record_checksums(tmp_path)
    recorded = read_checksums(tmp_path)
    assert path == tmp_path / CHECKSUMS_FILE
    assert recorded[REDUCED] == file_sha256(tmp_path / REDUCED)
    assert f"{TEXT_MODEL_FOLDER}/config.json" in recorded and "README.md" not in recorded
    assert all(line[64:66] == "  " for line in path.read_text().splitlines())
    entries = by_name(inspect_models(tmp_path))
    assert entries[REDUCED].checksum == "verified" and entries[REDUCED].status == "ok"
    assert entries[TEXT_MODEL_FOLDER].checksum == "verified"
    assert entries[TEXT_MODEL_FOLDER].status == "ok"
    assert entries[FULL].checksum is None and entries[FULL].status == "missing"

    (tmp_path / TEXT_MODEL_FOLDER / "merges.txt").write_text("#version: 0.2\nchanged\n")
    (tmp_path / "extra.pt").write_bytes(b"new")
    entries = by_name(inspect_models(tmp_path))
    assert entries[TEXT_MODEL_FOLDER].status.startswith("checksum mismatch")
    assert "merges.txt" in entries[TEXT_MODEL_FOLDER].status
    assert entries[TEXT_MODEL_FOLDER].checksum == "mismatch"
    assert entries[REDUCED].checksum == "verified"
    assert entries["extra.pt"].checksum == "not recorded"


def test_a_truncated_copy_is_a_checksum_mismatch(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"x" * 100)
    record_checksums(tmp_path)
    (tmp_path / "notes.bin").write_bytes(b"x" * 50)
    entry = by_name(inspect_models(tmp_path))["notes.bin"]
    assert entry.status.startswith("checksum mismatch") and entry.checksum == "mismatch"


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_the_checksum_file_is_sha256sum_compatible(tmp_path):
    write_clip_folder(tmp_path / TEXT_MODEL_FOLDER)
    (tmp_path / "a file with spaces.bin").write_bytes(b"abc")
    record_checksums(tmp_path)
    result = subprocess.run(
        ["sha256sum", "-c", CHECKSUMS_FILE], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_malformed_checksum_file_is_reported(tmp_path):
    (tmp_path / CHECKSUMS_FILE).write_text("abc  file\n")
    with pytest.raises(CheckpointError, match="line 1"):
        inspect_models(tmp_path)


def test_record_checksums_needs_an_existing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        record_checksums(tmp_path / "nope")


def test_extra_files_are_listed_and_classified(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "dveformer_mixed.pth.tar.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / ".hidden.tmp").write_text("staging")
    (tmp_path / "README.md").write_text("readme")
    weight = torch.zeros(40, 768, 1, 1)
    torch.save(
        {"linear_probing_head_state_dict": {"weight": weight}},
        tmp_path / "nyuv2_linear_probing_40.pth",
    )
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad_linear_probing.pth")
    entries = by_name(inspect_models(tmp_path))
    assert set(entries) == {
        FULL,
        REDUCED,
        TEXT_MODEL_FOLDER,
        "notes.txt",
        "dveformer_mixed.pth.tar.gz",
        "nyuv2_linear_probing_40.pth",
        "bad_linear_probing.pth",
    }
    assert entries["notes.txt"].kind == "unknown" and entries["notes.txt"].status.startswith(
        "unused"
    )
    assert "unpack" in entries["dveformer_mixed.pth.tar.gz"].status
    assert entries["nyuv2_linear_probing_40.pth"].kind == "linear_probing"
    assert entries["nyuv2_linear_probing_40.pth"].status == "ok"
    assert entries["bad_linear_probing.pth"].status.startswith("unreadable:")
    assert "notes.txt" in format_models_table(list(entries.values()))


def test_an_extra_checkpoint_is_checked_against_the_variant_it_fits(
    tmp_path, reduced_state, official_checkpoint_writer
):
    official_checkpoint_writer(tmp_path / "my_finetuned.pth", reduced_state)
    entry = by_name(inspect_models(tmp_path))["my_finetuned.pth"]
    assert entry.kind == "dveformer" and entry.status == "ok" and entry.variant == "reducedres"


def test_clip_folder_checks(tmp_path):
    write_clip_folder(tmp_path / TEXT_MODEL_FOLDER, weights=False)
    entry = by_name(inspect_models(tmp_path))[TEXT_MODEL_FOLDER]
    assert entry.present and entry.status.startswith("unreadable:") and "weights" in entry.status
    (tmp_path / TEXT_MODEL_FOLDER / "model.safetensors").write_bytes(b"\0" * 10)
    entry = by_name(inspect_models(tmp_path))[TEXT_MODEL_FOLDER]
    assert entry.status == "ok" and entry.sha256 is None and entry.size_bytes > 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_without_network_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="unreachable") as info:
        download_text_model(tmp_path / "models", timeout_s=1.0)
    assert time.monotonic() - start < 5.0
    assert "huggingface-cli download openai/clip-vit-large-patch14-336" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_a_hanging_lookup_or_connect_is_bounded_by_the_timeout(tmp_path, monkeypatch):
    from dve_perception.installed import download as model_download

    # getaddrinfo ignores socket timeouts; a resolver that never answers must not hang us.
    def hang(*args, **kwargs):
        time.sleep(30)
        raise OSError("answered too late")  # the checker must have given up long before

    monkeypatch.setattr(model_download.socket, "create_connection", hang)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="no answer within 0.5 s"):
        download_text_model(tmp_path, timeout_s=0.5)
    assert time.monotonic() - start < 3.0
    assert list(tmp_path.iterdir()) == []


def test_download_in_offline_mode_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        download_text_model(tmp_path)


def test_an_installed_model_is_not_downloaded_again(tmp_path, monkeypatch):
    write_clip_folder(tmp_path / TEXT_MODEL_FOLDER)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert download_text_model(tmp_path) == tmp_path / TEXT_MODEL_FOLDER


def test_an_incomplete_folder_in_the_way_is_reported(tmp_path):
    write_clip_folder(tmp_path / TEXT_MODEL_FOLDER, weights=False)
    with pytest.raises(CheckpointError, match="move it away"):
        download_text_model(tmp_path)


def _fake_snapshot(calls, fail=False):
    def snapshot_download(repo_id, *, local_dir, allow_patterns, **kwargs):
        import os

        calls.append((repo_id, sorted(allow_patterns), os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT")))
        if "model.safetensors" not in allow_patterns:
            return str(local_dir)
        write_clip_folder(Path(local_dir) / "tmp")
        for file in (Path(local_dir) / "tmp").iterdir():
            file.rename(Path(local_dir) / file.name)
        (Path(local_dir) / "tmp").rmdir()
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)
        if fail:
            raise OSError("connection reset while downloading model.safetensors")
        return str(local_dir)

    return snapshot_download


@pytest.mark.parametrize("fail", [False, True])
def test_download_is_staged_and_renamed_only_when_complete(tmp_path, monkeypatch, fail):
    import huggingface_hub

    from dve_perception.installed import download as model_download

    calls = []
    monkeypatch.setattr(model_download, "_check_reachable", lambda *args: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_snapshot(calls, fail))
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)
    target = tmp_path / TEXT_MODEL_FOLDER
    if fail:
        with pytest.raises(CheckpointError, match="connection reset"):
            download_text_model(tmp_path, timeout_s=3.0)
        assert list(tmp_path.iterdir()) == []
    else:
        assert download_text_model(tmp_path, timeout_s=3.0) == target
        assert [p.name for p in tmp_path.iterdir()] == [TEXT_MODEL_FOLDER]
        assert not (target / ".cache").exists() and (target / "model.safetensors").is_file()
        assert by_name(inspect_models(tmp_path))[TEXT_MODEL_FOLDER].status == "ok"
    repo, patterns, timeout = calls[0]
    assert repo == "openai/clip-vit-large-patch14-336" and "config.json" in patterns
    assert "model.safetensors" in patterns and "pytorch_model.bin" not in patterns
    assert timeout == "3"
    import os

    assert "HF_HUB_DOWNLOAD_TIMEOUT" not in os.environ
