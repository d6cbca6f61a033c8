"""What is in the models folder, whether it is usable, and how to get what is missing.

The work behind `dve-perception weights`: `inspect_models` lists the expected files (both DVEFormer
checkpoints, the CLIP text folder) and anything else found, with size, SHA-256 and a status from
the loaders' own strict checks (checkpoints are read with `weights_only=True`; nothing runs).

No published checksums exist, so none are hard-coded: `record_checksums` writes `SHA256SUMS`
(sha256sum format, so `sha256sum -c SHA256SUMS` works too) once the files are installed and later
inspections compare against it. That detects corrupted, partial or replaced files after
installation; it does not authenticate a download. `download_text_model` fetches the CLIP files
from Hugging Face; the DVEFormer checkpoints are on Google Drive behind a browser confirmation, so
`installation_help` gives their links.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from dve_perception.atomic_file import atomic_write
from dve_perception.errors import CheckpointError
from dve_perception.installed.models_folder import (
    MODELS_ENV_VAR,
    TEXT_MODEL_FOLDER,
    checkpoint_name,
    default_models_dir,
)
from dve_perception.text.clip_model_files import HF_REPO_ID, WEIGHT_FILES, check_model_folder

__all__ = [
    "CHECKSUMS_FILE",
    "DRIVE_FILE_IDS",
    "TEXT_MODEL_FILES",
    "ModelEntry",
    "file_sha256",
    "format_models_table",
    "inspect_models",
    "installation_help",
    "read_checksums",
    "record_checksums",
]

CHECKSUMS_FILE = "SHA256SUMS"
#: Google Drive ids of the published archives (TUI-NICR/DVEFormer README, "Results & Weights").
DRIVE_FILE_IDS = {
    "fullres": "1FQzXfP08pYI7RGlYjODPQRpCxDBI2eDX",
    "reducedres": "1tkhkEA6RsvjznY-WlWqL3LtAGYU3wse_",
}
_VARIANTS = tuple(DRIVE_FILE_IDS)  # the published DVEFormer variants
#: What `download_text_model` fetches besides one weight file (transformers needs no more).
#: The non-weight files of the CLIP folder (config and tokenizer) fetched with the weights.
TEXT_MODEL_FILES = (
    "config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_NOT_LISTED = {"README.md", CHECKSUMS_FILE}
_CHUNK_BYTES = 1 << 20
#: A sha256sum line: digest, then "  name" (text mode) or " *name" (binary mode).
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_UNUSED = "unused: not a file dve_perception looks for"
_LP_SOURCE = "TUI-NICR/DVEFormer README, 'Results & Weights' (optional linear-probing heads)"


@dataclass(frozen=True)
class ModelEntry:
    """One file or folder in the models folder (or one that should be there).

    Attributes:
        name: path relative to the models folder.
        path: full path.
        kind: "dveformer", "clip_text", "linear_probing" or "unknown".
        present: whether it exists.
        size_bytes: file size, or the total of a folder's files; 0 when absent.
        sha256: hex digest of a file; None when absent and for folders (SHA256SUMS lists a
            folder's files one by one).
        variant: the DVEFormer variant the file's layout fits, if any.
        status: "ok", "missing", "wrong variant", "checksum mismatch", "unreadable: ...",
            "layout mismatch: ..." or "unused: ...".
        where_to_get: where the file comes from and where it goes.
        checksum: against SHA256SUMS: "verified", "mismatch", "not recorded", or None when
            there is no SHA256SUMS (or the entry is absent).
    """

    name: str
    path: Path
    kind: str
    present: bool
    size_bytes: int
    sha256: str | None
    variant: str | None
    status: str
    where_to_get: str
    checksum: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the entry is present and passed every check."""
        return self.status == "ok"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks (big files never sit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _payload(path: Path) -> list[Path]:
    """The files an entry consists of; hidden ones (e.g. huggingface_hub's .cache) do not count."""
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file()]
    return sorted(p for p in files if not any(s.startswith(".") for s in p.relative_to(path).parts))


def _where(kind: str, name: str) -> str:
    variant = next((v for v in _VARIANTS if checkpoint_name(v) == name), None)
    if variant is not None:
        return (
            f"TUI-NICR/DVEFormer README, 'Results & Weights': https://drive.google.com/file/d/"
            f"{DRIVE_FILE_IDS[variant]}/view (a .pth.tar.gz: unpack it and copy the .pth from "
            f"trained_models/mixed/ here as {name})"
        )
    if name == TEXT_MODEL_FOLDER:
        return (
            f"Hugging Face {HF_REPO_ID}: `huggingface-cli download {HF_REPO_ID} --local-dir "
            f"{TEXT_MODEL_FOLDER}` on a machine with internet, then copy the folder here"
        )
    return _LP_SOURCE if kind == "linear_probing" else ""  # other extras come from the user


def _fits(state: dict[str, Any], variant: str) -> str | None:
    """None if `state` has exactly the published layout of `variant`, else why not."""
    from dve_perception.model.checkpoint import load_state_dict_strict

    try:
        with warnings.catch_warnings():
            # Copying into a meta model is a no-op that torch warns about once per tensor.
            warnings.simplefilter("ignore", UserWarning)
            load_state_dict_strict(_layout_model(variant), state, source="the file")
    except CheckpointError as err:
        return str(err)
    return None


@cache
def _layout_model(variant: str) -> Any:
    """The variant's model on the meta device: its keys and shapes, without 200 MB of weights."""
    import torch

    from dve_perception.model.dveformer import build_dveformer

    with torch.device("meta"):
        return build_dveformer(variant)


def _check_dveformer(path: Path, expected: str | None) -> tuple[str, str | None]:
    """Return (status, variant whose layout fits) for a checkpoint file."""
    from dve_perception.model.checkpoint import _extract_state_dict, read_checkpoint_file

    try:
        # The loader's own reading (weights_only) and unwrapping, so the verdict matches it.
        state = _extract_state_dict(read_checkpoint_file(path), path)
    except CheckpointError as err:
        return f"unreadable: {err}", None
    reasons = {variant: _fits(state, variant) for variant in _VARIANTS}
    fitting = [variant for variant, reason in reasons.items() if reason is None]
    expected = expected or (fitting[0] if fitting else None)
    if expected in fitting:
        return "ok", expected
    if fitting:
        return "wrong variant", fitting[0]
    if expected is None:
        return "layout mismatch: fits no published DVEFormer variant", None
    return f"layout mismatch: {reasons[expected]}", None


def _entry(models_dir: Path, name: str, kind: str, variant: str | None = None) -> ModelEntry:
    path = models_dir / name
    where = _where(kind, name)
    if not path.exists():
        return ModelEntry(name, path, kind, False, 0, None, None, "missing", where)
    status, fitting = _status(path, kind, variant)
    size = sum(f.stat().st_size for f in _payload(path))
    digest = file_sha256(path) if path.is_file() else None
    return ModelEntry(name, path, kind, True, size, digest, fitting, status, where)


def _status(path: Path, kind: str, variant: str | None) -> tuple[str, str | None]:
    """(status, variant whose layout fits) from the loaders' own checks."""
    from dve_perception.model.checkpoint import load_linear_probing_weights

    if kind == "dveformer":
        return _check_dveformer(path, variant)
    if kind == "unknown":
        packed = path.name.endswith((".tar.gz", ".tgz"))
        return _UNUSED + ("; unpack it (see the installation help)" if packed else ""), None
    check = check_model_folder if kind == "clip_text" else load_linear_probing_weights
    try:
        check(path)
    except CheckpointError as err:
        return f"unreadable: {err}", None
    return "ok", None


def _classify(path: Path) -> str:
    """Guess the kind of a file or folder that is not one of the expected names."""
    if path.is_dir():
        return "clip_text" if (path / "config.json").is_file() else "unknown"
    if path.suffix not in (".pth", ".pt"):
        return "unknown"
    # Any other checkpoint is checked against the layout of the variant it fits.
    return "linear_probing" if "linear_probing" in path.name else "dveformer"


def inspect_models(models_dir: str | os.PathLike[str] | None = None) -> list[ModelEntry]:
    """Check the models folder: the expected files first, then everything else found there.

    Args:
        models_dir: the folder; None uses `default_models_dir()` ($DVE_PERCEPTION_MODELS).

    Returns:
        Both DVEFormer checkpoints, the CLIP text folder, then other entries sorted by name.

    Raises:
        CheckpointError: SHA256SUMS exists but is malformed.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    entries = [
        _entry(models_dir, name, kind, variant) for name, kind, variant in _listing(models_dir)
    ]
    recorded = read_checksums(models_dir)
    if recorded is None:
        return entries
    return [_verify(e, recorded, models_dir) for e in entries]


def _listing(models_dir: Path) -> list[tuple[str, str, str | None]]:
    """(name, kind, expected variant) of the expected entries, then of everything else found."""
    listing = [(checkpoint_name(v), "dveformer", v) for v in _VARIANTS]
    listing.append((TEXT_MODEL_FOLDER, "clip_text", None))
    expected = {name for name, _, _ in listing}
    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            # Hidden entries are ours or the system's: download staging folders, .gitignore.
            if path.name in expected or path.name in _NOT_LISTED or path.name.startswith("."):
                continue
            listing.append((path.name, _classify(path), None))
    return listing


def _verify(entry: ModelEntry, recorded: dict[str, str], models_dir: Path) -> ModelEntry:
    mine = {n: d for n, d in recorded.items() if n == entry.name or n.startswith(entry.name + "/")}
    if not entry.present or not mine:
        return replace(entry, checksum="not recorded" if entry.present else None)
    changed = sorted(
        name
        for name, digest in mine.items()
        if not (models_dir / name).is_file()
        or (entry.sha256 if name == entry.name else file_sha256(models_dir / name)) != digest
    )
    if not changed:
        return replace(entry, checksum="verified")
    # A file that changed since it was recorded is what the user must hear about first.
    return replace(
        entry,
        checksum="mismatch",
        status=f"checksum mismatch: {', '.join(changed)} changed since {CHECKSUMS_FILE} was "
        "recorded (corrupted or replaced? re-install it)",
    )


def read_checksums(models_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """Read `<models_dir>/SHA256SUMS` as {relative name: hex digest}; None if it does not exist.

    Raises:
        CheckpointError: a line is not `<64 hex digits>  <name>` (sha256sum's text or `*` form).
    """
    path = Path(models_dir) / CHECKSUMS_FILE
    if not path.is_file():
        return None
    recorded = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _SUM_LINE.fullmatch(line)
        if match is None and line.strip():
            raise CheckpointError(
                f"{path} line {number} is not '<sha256>  <name>' (got {line[:80]!r}); fix it, or "
                "delete the file and record the checksums again"
            )
        if match is not None:
            recorded[match[2]] = match[1].lower()
    return recorded


def record_checksums(models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write `SHA256SUMS` for every present file (folders file by file), atomically.

    Record once the installed files show "ok": later inspections then flag any file that changed.

    Returns:
        The SHA256SUMS path.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if not models_dir.is_dir():
        raise CheckpointError(f"models folder {models_dir} does not exist: nothing to record")
    lines = [
        f"{file_sha256(file)}  {file.relative_to(models_dir).as_posix()}\n"
        for name, _, _ in _listing(models_dir)
        if (models_dir / name).exists()
        for file in _payload(models_dir / name)
    ]
    path = models_dir / CHECKSUMS_FILE
    with atomic_write(path) as out:
        out.write("".join(sorted(lines, key=lambda s: s[66:])).encode("utf-8"))
    return path


def format_models_table(entries: Sequence[ModelEntry]) -> str:
    """Return a table of the entries, then where to get each one that is not ok."""
    header = f"{'name':<36} {'kind':<14} {'size MB':>9}  {'sha256':<16}  status"
    lines = [header, "-" * len(header)]
    for e in entries:
        size = f"{e.size_bytes / 1e6:.1f}" if e.present else "-"
        checked = f" (checksum {e.checksum})" if e.checksum and e.status == "ok" else ""
        variant = f" [{e.variant}]" if e.variant and e.status == "wrong variant" else ""
        lines.append(
            f"{e.name:<36} {e.kind:<14} {size:>9}  {(e.sha256 or '-')[:16]:<16}  "
            f"{e.status}{variant}{checked}"
        )
    todo = [e for e in entries if not e.ok and e.where_to_get]
    lines += ["", "to fix:"] if todo else []
    lines += [f"  {e.name}: {e.where_to_get}" for e in todo]
    return "\n".join(lines)


def installation_help(models_dir: str | os.PathLike[str] | None = None) -> str:
    """Return where to get each model file and where to put it (from models/README.md)."""
    target = Path(models_dir) if models_dir is not None else default_models_dir()
    lines = [
        f"Model files go in {target} (set ${MODELS_ENV_VAR} to use another folder).",
        "dve_perception never downloads at run time; without these files commands run on",
        "generated weights and say that their results carry no meaning.",
        "",
    ]
    for variant in _VARIANTS:
        name = checkpoint_name(variant)
        lines.append(f"{name}: DVEFormer {variant}")
        lines.append(f"  {_where('dveformer', name)}")
    lines += [
        "  Google Drive asks for a confirmation on large files: download in a browser, then",
        "  `tar -xzf <archive>.pth.tar.gz` and copy the checkpoint under the name above.",
        f"{TEXT_MODEL_FOLDER}/: OpenAI CLIP ViT-L/14@336 (text tower for prototypes and queries)",
        f"  {_where('clip_text', TEXT_MODEL_FOLDER)}",
        f"  (files: {', '.join(TEXT_MODEL_FILES)} and {' or '.join(WEIGHT_FILES)});",
        "  with network access on this machine, `download_text_model` fetches it.",
        f"*_linear_probing_*.pth (optional): {_LP_SOURCE}",
        "",
        f"Then record checksums ({CHECKSUMS_FILE}): later checks detect corrupted, partial or",
        "replaced files. No checksums are published, so this cannot authenticate a download.",
    ]
    return "\n".join(lines)
