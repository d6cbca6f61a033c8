"""Download the CLIP ViT-L/14@336 text model into the models folder, failing fast offline.

Used by `dve-perception weights --download-text-model`. Nothing else in the package downloads;
the DVEFormer checkpoints sit behind a Google Drive confirmation page, so `installed.registry`
prints their links instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

from dve_perception.errors import BackendUnavailableError, CheckpointError
from dve_perception.installed.models_folder import TEXT_MODEL_FOLDER
from dve_perception.installed.registry import TEXT_MODEL_FILES
from dve_perception.text.clip_model_files import HF_REPO_ID, WEIGHT_FILES, check_model_folder

__all__ = ["download_text_model"]

_HF_ENDPOINT = "https://huggingface.co"


def download_text_model(models_dir: str | os.PathLike[str], *, timeout_s: float = 10.0) -> Path:
    """Download the CLIP ViT-L/14@336 text-model files into `<models_dir>/clip-vit-large-...`.

    Reachability of the Hugging Face endpoint ($HF_ENDPOINT, default huggingface.co:443) is
    checked first with a plain connect, so without network this fails within about `timeout_s`.
    Files land in a hidden staging folder in `models_dir` and are renamed into place only once
    complete and checked: the final folder never holds a partial download.

    Args:
        models_dir: the models folder (created if needed).
        timeout_s: connect and per-read timeout in seconds.

    Returns:
        The model folder (returned at once if a complete one is already there).

    Raises:
        CheckpointError: the endpoint is unreachable, the download failed, or an incomplete
            folder is in the way.
        BackendUnavailableError: huggingface_hub is not installed.
    """
    models_dir = Path(models_dir)
    target = models_dir / TEXT_MODEL_FOLDER
    if target.exists():
        try:
            check_model_folder(target)
        except CheckpointError as err:
            raise CheckpointError(
                f"{target} exists but is not a complete model ({err}); move it away and download "
                "again"
            ) from err
        return target
    endpoint = os.environ.get("HF_ENDPOINT", _HF_ENDPOINT).rstrip("/")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CheckpointError("HF_HUB_OFFLINE is set: not downloading. " + _offline_fix(target))
    _check_reachable(endpoint, timeout_s, target)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TEXT_MODEL_FOLDER}.download-", dir=models_dir))
    try:
        _fetch(staging, endpoint, timeout_s, target)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        check_model_folder(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _offline_fix(target: Path) -> str:
    return (
        f"On a machine with internet run `huggingface-cli download {HF_REPO_ID} --local-dir "
        f"{TEXT_MODEL_FOLDER}`, then copy that folder to {target}."
    )


def _check_reachable(endpoint: str, timeout_s: float, target: Path) -> None:
    """Connect to the endpoint's host once, resolution included, within about `timeout_s`."""
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(None)
        except OSError as err:
            result.append(err)

    # getaddrinfo ignores socket timeouts; a thread bounds a hanging DNS lookup as well.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if result and result[0] is None:
        return
    why = result[0] if result else f"no answer within {timeout_s:g} s"
    raise CheckpointError(
        f"cannot reach {host}:{port} to download {HF_REPO_ID} ({why}): the network is "
        f"unreachable from this machine. {_offline_fix(target)}"
    )


def _fetch(staging: Path, endpoint: str, timeout_s: float, target: Path) -> None:
    """Download the text files and the first weight file the repository has into `staging`."""
    # huggingface_hub reads these when first imported; etag_timeout covers an earlier import.
    seconds = str(max(1, math.ceil(timeout_s)))
    timeouts = {"HF_HUB_ETAG_TIMEOUT": seconds, "HF_HUB_DOWNLOAD_TIMEOUT": seconds}
    with _environ(timeouts):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as err:
            raise BackendUnavailableError(
                "downloading needs huggingface_hub: `pip install huggingface_hub`"
            ) from err
        for weights in WEIGHT_FILES:  # model.safetensors if the repo has it, else the .bin
            try:
                snapshot_download(
                    HF_REPO_ID,
                    local_dir=staging,
                    allow_patterns=[*TEXT_MODEL_FILES, weights],
                    etag_timeout=timeout_s,
                    endpoint=endpoint,
                )
            except Exception as err:  # noqa: BLE001 - HTTP, network and disk errors alike
                why = f"downloading {HF_REPO_ID} from {endpoint} failed: {err}."
                raise CheckpointError(f"{why} {_offline_fix(target)}") from err
            if (staging / weights).is_file():
                return


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the caller's values afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
