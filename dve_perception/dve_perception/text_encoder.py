"""CLIP text encoder: class prototypes and free-text queries for DVEFormer's 768-d embeddings.

DVEFormer's pixel embeddings are aligned with the OpenAI CLIP ViT-L/14@336px text tower (Alpha-CLIP
uses it unchanged), so prototypes and queries are that tower's projected, L2-normalised embeddings
of a rendered prompt. The tower is loaded with `transformers` from a local folder laid out like the
Hugging Face repository `openai/clip-vit-large-patch14-336`, never from the network, and results
are cached on disk per model fingerprint and prompt. `transformers` and `torch` are imported only
inside the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dve_perception.errors import BackendUnavailableError, CheckpointError, ConfigError, InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_PROMPT_TEMPLATE",
    "EMBEDDING_DIM",
    "HF_REPO_ID",
    "MODEL_FOLDER_NAME",
    "CLIPTextEncoder",
    "default_cache_dir",
    "write_random_text_model",
    "write_tokenizer_files",
]

logger = logging.getLogger(__name__)

#: The prompt DVEFormer's text prototypes were computed with.
DEFAULT_PROMPT_TEMPLATE = "a detailed photo of a {}"
#: The Hugging Face repository a text-encoder folder is laid out like, and the folder's usual name.
HF_REPO_ID = "openai/clip-vit-large-patch14-336"
MODEL_FOLDER_NAME = "clip-vit-large-patch14-336"
EMBEDDING_DIM = 768
#: Environment variable naming the dve_perception cache root (embeddings go to `text_embeddings/`).
CACHE_ENV_VAR = "DVE_PERCEPTION_CACHE"
#: Marker file `write_random_text_model` leaves in its folders.
RANDOM_MARKER = "RANDOM_WEIGHTS.md"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # transformers prefers the first
_TOKENIZER_FILES = "vocab.json merges.txt tokenizer.json tokenizer_config.json".split()
_TOKENIZER_FILES += ["special_tokens_map.json", "added_tokens.json"]
_BPE_FILE = Path(__file__).parent / "data" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
# Part of every fingerprint: bump it when something changes the stored embeddings (normalisation,
# dtype, file layout), so old cache entries stop matching.
_FINGERPRINT_VERSION = b"dve_perception.text_encoder/1"
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


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            "the CLIP text encoder needs `transformers`, which is not installed: run "
            "`pip install 'transformers>=4.45,<6'` or `pip install dve_perception[core]`"
        ) from exc
    return transformers


@contextlib.contextmanager
def _no_progress_bars(transformers: Any) -> Iterator[None]:
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


def default_cache_dir() -> Path:
    """Return `$DVE_PERCEPTION_CACHE/text_embeddings`.

    Without that variable the root is `$XDG_CACHE_HOME/dve_perception`, else
    `~/.cache/dve_perception`.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "dve_perception") if xdg else "~/.cache/dve_perception"
    return Path(root).expanduser() / "text_embeddings"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(folder: Path, weights: Path) -> str:
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


def _check_template(template: object) -> str:
    if not isinstance(template, str):
        problem = f"is a {type(template).__name__}"
    else:
        try:
            if "\0" in template.format("\0"):
                return template
            problem = "has no '{}' placeholder for the text"
        except (IndexError, KeyError, ValueError) as exc:
            problem = f"is not a format string with one '{{}}' placeholder ({exc})"
    raise ConfigError(
        f"prompt_template {template!r} {problem}; expected e.g. {DEFAULT_PROMPT_TEMPLATE!r}"
    )


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
    transformers = _import_transformers()
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
            torch.manual_seed(seed)
            config = transformers.CLIPTextConfig(**CLIP_VIT_L14_TEXT_CONFIG)
            model = transformers.CLIPTextModelWithProjection(config)
        with _no_progress_bars(transformers):
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


class _EmbeddingCache:
    """One .npy file per (model fingerprint, rendered prompt); bad entries count as misses."""

    def __init__(self, root: Path, fingerprint: str, dim: int):
        self.folder = root / fingerprint
        self.dim = dim

    def path(self, prompt: str) -> Path:
        return self.folder / f"{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}.npy"

    def get(self, prompt: str) -> np.ndarray | None:
        path = self.path(prompt)
        try:
            with open(path, "rb") as f:
                vector = np.load(f, allow_pickle=False)
            if vector.shape != (self.dim,) or vector.dtype != np.float32:
                raise ValueError(f"holds a {vector.dtype} array of shape {vector.shape}")
            if not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:  # also catches NaN
                raise ValueError("does not hold a unit vector")
        except FileNotFoundError:
            return None
        except Exception as exc:  # truncated, garbage, pickled...: recompute rather than fail
            logger.warning("ignoring bad text-embedding cache file %s (%s)", path, exc)
            return None
        return vector

    def put(self, prompt: str, vector: np.ndarray) -> None:
        path = self.path(prompt)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, vector, allow_pickle=False)
                # Readers see the old file or the new one, never a partial one. No fsync: a file
                # torn by a crash is merely unreadable, i.e. recomputed.
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # the cache is an optimisation: a read-only or full disk is no error
            logger.warning("cannot write text-embedding cache file %s (%s)", path, exc)


class CLIPTextEncoder:
    """Encodes texts into L2-normalised 768-d CLIP text embeddings.

    Args:
        path: A folder laid out like `HF_REPO_ID` (usually named `MODEL_FOLDER_NAME`): the full
            CLIPModel folder or a text-tower-only one; vision weights are ignored.
        prompt_template: Format string with one `{}` for the text.
        cache_dir: Embedding cache folder; None means `default_cache_dir()`.
        use_cache: False neither reads nor writes the cache.
        device: Torch device the model runs on; embeddings are always returned on the CPU.
        batch_size: Prompts per forward pass.

    Raises:
        CheckpointError: The folder, its config, tokenizer or weights are missing or do not
            describe a CLIP text tower with a 768-d projection.
        ConfigError: A bad template, device or batch size.
        BackendUnavailableError: transformers is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        self.prompt_template = _check_template(prompt_template)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.folder = folder = Path(path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(
                f"CLIP text-encoder folder not found: {folder}; expected {_LAYOUT}"
            )
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
        transformers = _import_transformers()
        import torch

        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None
        self.fingerprint: str = _fingerprint(folder, weights)
        try:
            config = transformers.CLIPTextConfig.from_dict(text_config)
            # transformers 4: the fast tokenizer needs no ftfy; in 5 both names are one class.
            tokenizer_cls = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)
            self._tokenizer = tokenizer_cls.from_pretrained(folder, local_files_only=True)
            with _no_progress_bars(transformers):
                model, info = _text_tower_class(transformers).from_pretrained(
                    folder,
                    config=config,
                    local_files_only=True,
                    output_loading_info=True,
                    use_safetensors=weights.suffix == ".safetensors",  # the file we hashed
                )
        except Exception as exc:  # safetensors, torch.load and transformers raise many types
            raise CheckpointError(f"cannot load a CLIP text tower from {folder} ({exc})") from exc
        # transformers fills absent tensors with random values and merely logs it: refuse instead.
        bad = [*sorted(info.get("missing_keys", ())), *map(str, info.get("mismatched_keys", ()))]
        if bad:
            raise CheckpointError(
                f"{weights} lacks {len(bad)} CLIP text-tower tensors (e.g. {', '.join(bad[:3])}); "
                f"expected the weights of {HF_REPO_ID} or its text tower"
            )
        try:  # float32, as DVEFormer's prototypes were computed; torch asserts without CUDA
            self._model = model.float().eval().requires_grad_(False).to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(f"cannot move the text encoder to {device!r} ({exc})") from None
        self.context_length: int = config.max_position_embeddings
        self.embedding_dim: int = config.projection_dim
        self._cache = None
        if use_cache:
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            self._cache = _EmbeddingCache(root, self.fingerprint, self.embedding_dim)
        self.is_random = (folder / RANDOM_MARKER).is_file()
        if self.is_random:
            logger.warning(
                "%s holds RANDOMLY INITIALISED CLIP text weights: its embeddings are not "
                "CLIP-aligned and every text-based result is meaningless",
                folder,
            )

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> CLIPTextEncoder:
        """Load an encoder from a folder; the arguments are those of the class."""
        return cls(
            path,
            prompt_template=prompt_template,
            cache_dir=cache_dir,
            use_cache=use_cache,
            device=device,
            batch_size=batch_size,
        )

    def with_prompt_template(self, prompt_template: str) -> CLIPTextEncoder:
        """Return an encoder sharing this one's model and cache that renders another template."""
        other = copy.copy(self)
        other.prompt_template = _check_template(prompt_template)
        return other

    def render(self, texts: Sequence[str]) -> list[str]:
        """Return the prompts for `texts`, checking that each is a non-blank str.

        Raises:
            InputError: `texts` is a bare str, empty, or holds a non-str or blank entry.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise InputError(f"texts must be a list of str, got a {type(texts).__name__}")
        if len(texts) == 0:
            raise InputError("texts is empty; expected at least one text to encode")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(
                    f"texts[{i}] is a {type(text).__name__} ({text!r}); expected a str"
                )
            if not text.strip():
                raise InputError(
                    f"texts[{i}] is an empty or blank string; expected a name or query"
                )
        return [self.prompt_template.format(text) for text in texts]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed `texts`, rendered with the prompt template, as unit vectors.

        Prompts longer than the 77-token context are truncated, with a logged warning. Batches are
        padded to their longest prompt, so a row can differ in the last float bits (about 1e-7)
        with the other texts of the call; cached rows are returned as stored.

        Args:
            texts: Class names or free-text queries.

        Returns:
            A float32 CPU tensor of shape (len(texts), embedding_dim) with unit rows.

        Raises:
            InputError: See `render`.
        """
        import torch

        prompts = self.render(texts)
        self._warn_if_truncated(prompts)
        out = np.empty((len(prompts), self.embedding_dim), dtype=np.float32)
        pending: dict[str, list[int]] = {}  # prompt -> its rows, so duplicates run once
        for i, prompt in enumerate(prompts):
            hit = None
            if self._cache is not None and prompt not in pending:
                hit = self._cache.get(prompt)
            if hit is None:
                pending.setdefault(prompt, []).append(i)
            else:
                out[i] = hit
        if pending:
            vectors = self._run_model(list(pending))
            for (prompt, rows), vector in zip(pending.items(), vectors, strict=True):
                out[rows] = vector
                if self._cache is not None:
                    self._cache.put(prompt, vector)
        return torch.from_numpy(out)

    def encode_numpy(self, texts: Sequence[str]) -> np.ndarray:
        """Return `encode(texts)` as a float32 numpy array."""
        return self.encode(texts).numpy()

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        # verbose=False: transformers' own over-length warning would duplicate this one.
        ids = self._tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        for prompt, tokens in zip(prompts, ids, strict=True):
            if len(tokens) > self.context_length:
                logger.warning(
                    "prompt %r has %d tokens, more than CLIP's %d-token context; it is truncated",
                    prompt if len(prompt) <= 80 else prompt[:77] + "...",
                    len(tokens),
                    self.context_length,
                )

    def _run_model(self, prompts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = self._tokenizer(
                    prompts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,  # keeps <|endoftext|> last, like OpenAI's truncate=True
                    max_length=self.context_length,
                    return_tensors="pt",
                )
                inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}
                embeds = self._model(**inputs).text_embeds.float()
                chunks.append(torch.nn.functional.normalize(embeds, dim=-1).cpu().numpy())
        return np.concatenate(chunks)


@cache
def _text_tower_class(transformers: Any) -> Any:
    class _CLIPTextTower(transformers.CLIPTextModelWithProjection):
        # The full CLIP checkpoint also holds the vision tower; listing it here keeps transformers
        # from logging a report of several hundred "unexpected" keys on every load.
        _keys_to_ignore_on_load_unexpected = [
            r"^vision_model\.",
            r"^visual_projection\.",
            r"^logit_scale$",
        ]

    return _CLIPTextTower
