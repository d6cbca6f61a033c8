"""CLIP text encoder: class prototypes and free-text queries for DVEFormer's 768-d embeddings.

DVEFormer's pixel embeddings are aligned with the OpenAI CLIP ViT-L/14@336px text tower (Alpha-CLIP
uses it unchanged), so prototypes and queries are that tower's projected, L2-normalised embeddings
of a rendered prompt. The tower is loaded with `transformers` from a local folder laid out like the
Hugging Face repository `openai/clip-vit-large-patch14-336`, never from the network, and results
are cached on disk per model fingerprint and prompt. `transformers` and `torch` are imported only
inside the functions that need them, so importing this module is cheap.

The folder layout, its checks, fingerprint and writers live in `clip_model_files` beside this
module, the embedding cache in `embedding_cache`; this module re-exports their public names so
that imports of them from here keep working.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dve_perception.errors import CheckpointError, ConfigError, InputError
from dve_perception.text.clip_model_files import (
    CLIP_VIT_L14_TEXT_CONFIG as CLIP_VIT_L14_TEXT_CONFIG,
)
from dve_perception.text.clip_model_files import (
    EMBEDDING_DIM,
    HF_REPO_ID,
    MODEL_FOLDER_NAME,
    RANDOM_MARKER,
    check_model_folder,
    import_transformers,
    model_fingerprint,
    no_progress_bars,
    write_random_text_model,
    write_tokenizer_files,
)
from dve_perception.text.clip_model_files import WEIGHT_FILES as WEIGHT_FILES
from dve_perception.text.embedding_cache import (
    CACHE_ENV_VAR,
    TextEmbeddingCache,
    default_cache_dir,
)

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
        text_config, weights = check_model_folder(folder)
        transformers = import_transformers()
        import torch

        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None
        self.fingerprint: str = model_fingerprint(folder, weights)
        try:
            config = transformers.CLIPTextConfig.from_dict(text_config)
            # transformers 4: the fast tokenizer needs no ftfy; in 5 both names are one class.
            tokenizer_cls = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)
            self._tokenizer = tokenizer_cls.from_pretrained(folder, local_files_only=True)
            with no_progress_bars(transformers):
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
            self._cache = TextEmbeddingCache(root, self.fingerprint, self.embedding_dim)
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
