"""The on-disk CLIP text-encoder folder: its layout, how to check it, fingerprint and write it.

A text-encoder folder is laid out like the Hugging Face repository
`openai/clip-vit-large-patch14-336` (config.json, model.safetensors or pytorch_model.bin, vocab.json
and merges.txt or tokenizer.json). This module checks such a folder, fingerprints the files that
determine its embeddings, and writes the tokenizer (from the vendored OpenAI CLIP BPE vocabulary) or
a randomly initialised text tower. `transformers` and `torch` are imported only inside the functions
that need them, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError

__all__ = [
    "CLIP_VIT_L14_TEXT_CONFIG",
    "EMBEDDING_DIM",
    "HF_REPO_ID",
    "MODEL_FOLDER_NAME",
    "RANDOM_MARKER",
    "WEIGHT_FILES",
    "check_model_folder",
    "import_transformers",
    "model_fingerprint",
    "no_progress_bars",
    "write_random_text_model",
    "write_tokenizer_files",
]

#: The Hugging Face repository a text-encoder folder is laid out like, and the folder's usual name.
HF_REPO_ID = "openai/clip-vit-large-patch14-336"
MODEL_FOLDER_NAME = "clip-vit-large-patch14-336"
EMBEDDING_DIM = 768
#: Marker file `write_random_text_model` leaves in its folders.
RANDOM_MARKER = "RANDOM_WEIGHTS.md"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # transformers prefers the first
_TOKENIZER_FILES = "vocab.json merges.txt tokenizer.json tokenizer_config.json".split()
_TOKENIZER_FILES += ["special_tokens_map.json", "added_tokens.json"]
_BPE_FILE = Path(__file__).parents[1] / "data" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
# Part of every fingerprint: bump it when something changes the stored embeddings (normalisation,
# dtype, file layout), so old cache entries stop matching. The text names the module that first
# computed fingerprints; it is a version tag, not a module path, so moving code leaves it alone.
_FINGERPRINT_VERSION = b"dve_perception.text.encoder/1"
#: The text tower of OpenAI CLIP ViT-L/14 (the 224 and 336 px models share it) and its token ids.
CLIP_VIT_L14_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": EMBEDDING_DIM,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
_LAYOUT = (
    f"a folder laid out like the Hugging Face repository {HF_REPO_ID} (config.json, "
    "model.safetensors or pytorch_model.bin, vocab.json and merges.txt or tokenizer.json)"
)


def import_transformers() -> Any:
    """Import and return `transformers`.

    Raises:
        BackendUnavailableError: transformers is not installed.
    """
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            "the CLIP text encoder needs `transformers`, which is not installed: run "
            "`pip install 'transformers>=4.45,<6'` or `pip install dve_perception[core]`"
        ) from exc
    return transformers


@contextlib.contextmanager
def no_progress_bars(transformers: Any) -> Iterator[None]:
    """Turn transformers' progress bars off for the duration of the block."""
    # transformers draws tqdm bars on stderr while loading and saving; the core never prints.
    bars = transformers.utils.logging
    enabled = bars.is_progress_bar_enabled()
    if enabled:
        bars.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            bars.enable_progress_bar()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(folder: Path, weights: Path) -> str:
    """Return the hex SHA-256 of the files in `folder` that determine its embeddings."""
    # Content hashes of every file that determines the embeddings: config, tokenizer and weights.
    # Size and mtime would be cheaper but survive an in-place replacement, and a stale cache entry
    # silently gives wrong prototypes. Hashing reads the weights once per load (about 0.5 s for the
    # 0.5 GB text tower, 1-2 s for the 1.7 GB full CLIP file).
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for name in ("config.json", *_TOKENIZER_FILES):
        if (folder / name).is_file():
            digest.update(f"\0{name}\0{_sha256_file(folder / name)}".encode())
    digest.update(f"\0weights\0{_sha256_file(weights)}".encode())
    return digest.hexdigest()


def _text_config(folder: Path) -> dict[str, Any]:
    """Return the text tower's config from config.json, checking that it fits DVEFormer."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; expected {_LAYOUT}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON ({exc}); expected {_LAYOUT}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type == "clip" and isinstance(config.get("text_config"), dict):
        # The full CLIPModel config nests the tower. CLIPModel sizes text_projection with the
        # top-level projection_dim, which old text_config blocks lack (transformers then assumes
        # 512 and rejects the 768-row projection), so the top-level value wins.
        text = {**config["text_config"], "model_type": "clip_text_model"}
        text["projection_dim"] = config.get("projection_dim", text.get("projection_dim"))
    elif model_type == "clip_text_model":
        text = dict(config)
    else:
        raise CheckpointError(
            f"{path} describes model_type {model_type!r}; expected 'clip' with a text_config "
            f"(the full {HF_REPO_ID} config) or 'clip_text_model' (its text tower)"
        )
    projection_dim = text.get("projection_dim") or 512  # transformers' default when absent
    if projection_dim != EMBEDDING_DIM:
        raise CheckpointError(
            f"{path} has a {projection_dim}-d text projection; expected {EMBEDDING_DIM}, the "
            f"CLIP ViT-L/14 text tower DVEFormer's embeddings are aligned with ({HF_REPO_ID})"
        )
    return text


def check_model_folder(folder: Path) -> tuple[dict[str, Any], Path]:
    """Check that `folder` holds a CLIP text tower with a 768-d projection and a tokenizer.

    The full CLIPModel folder and a text-tower-only one both pass; vision weights are ignored.

    Args:
        folder: The text-encoder folder.

    Returns:
        The text tower's config (a `clip_text_model` dict) and the weight file to load.

    Raises:
        CheckpointError: The folder, its config, tokenizer or weights are missing or do not
            describe a CLIP text tower with a 768-d projection.
    """
    if not folder.is_dir():
        raise CheckpointError(f"CLIP text-encoder folder not found: {folder}; expected {_LAYOUT}")
    text_config = _text_config(folder)
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"{folder} is a text folder without weights: expected {' or '.join(WEIGHT_FILES)}"
        )
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{folder} has no tokenizer: expected vocab.json and merges.txt, or tokenizer.json"
        )
    return text_config, weights


@cache
def _clip_bpe() -> tuple[dict[str, int], tuple[str, ...]]:
    """Return (vocab, merges) of the OpenAI CLIP tokenizer, built from the vendored BPE file."""
    # OpenAI's SimpleTokenizer does this at start-up: line 0 is a header, the next 49152-256-2
    # lines are the merges; the vocabulary is the 256 byte symbols, the same with the end-of-word
    # marker, one entry per merge, then the two special tokens.
    lines = gzip.decompress(_BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(lines[1 : 49152 - 256 - 2 + 1])
    # GPT-2's byte-to-unicode map: printable bytes stand for themselves, the others for 256, 257...
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    unprintable = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(unprintable))]
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str | os.PathLike[str]) -> Path:
    """Write the OpenAI CLIP tokenizer (vocab.json, merges.txt, its configs) into a folder.

    Args:
        folder: An existing folder.

    Returns:
        The folder as a Path.
    """
    folder = Path(folder)
    vocab, merges = _clip_bpe()
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    special.update(unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer_config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77}
    tokenizer_config.update(do_lower_case=True, errors="replace", add_prefix_space=False)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def write_random_text_model(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a randomly initialised ViT-L/14 CLIP text tower (about 500 MB) and its tokenizer.

    The folder loads and tokenises exactly like the real model, but its embeddings mean nothing; a
    RANDOM_WEIGHTS.md marker says so and `CLIPTextEncoder.is_random` reports it. The folder is built
    beside the target and renamed into place, so an interrupted write leaves no half-written model.

    Args:
        folder: Target folder; it must not exist or must be empty.
        seed: Seed of torch's generator for the initialisation; one seed gives one set of weights.

    Returns:
        The folder as a Path.

    Raises:
        ConfigError: `folder` is a file or a non-empty folder, or `seed` is not a non-negative int.
        BackendUnavailableError: transformers is not installed.
    """
    folder = Path(folder)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"will not write a random text model into {folder}: it is not empty")
    transformers = import_transformers()
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
            torch.manual_seed(seed)
            config = transformers.CLIPTextConfig(**CLIP_VIT_L14_TEXT_CONFIG)
            model = transformers.CLIPTextModelWithProjection(config)
        with no_progress_bars(transformers):
            model.save_pretrained(staging)
        write_tokenizer_files(staging)
        (staging / RANDOM_MARKER).write_text(
            f"Randomly initialised CLIP text tower (seed {seed}), written by dve_perception's "
            "write_random_text_model. Its embeddings are not CLIP-aligned: install the files of "
            f"{HF_REPO_ID} for meaningful results.\n",
            encoding="utf-8",
        )
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
