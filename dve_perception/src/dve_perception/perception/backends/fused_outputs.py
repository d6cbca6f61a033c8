"""Outputs fused into the exported graph, so a deployment copies only what it publishes.

The official export has one output, the raw fp32 embedding: 0.94 GB per full-res 480x640 frame
at batch 1 (768 x 480 x 640 x 4 bytes). `FusedOutputs` chooses, at export time, what the graph
computes after the network, all with the core functions' exact semantics:

- `dense_visual_embedding_decoder_0` (B, D, h, w): raw fp32 as the official export; unit-norm
  with `normalize`; unit-norm fp16 with `half` as well.
- `class_scores` (B, K, h, w) fp32: cosine similarity with K fixed prototypes, i.e.
  `postprocess.class_scores` (a 1x1 convolution with the L2-normalised prototypes).
- `class_labels` (B, h, w) int32: the argmax of the scores (int32 because TensorRT handles it
  better than int64, and 2^31 classes are plenty).
- `embedding_publish` (B, D, ph, pw) fp16: unit embeddings averaged over equal areas and
  re-normalised, `postprocess.downsample_unit_embedding`, the vectors EmbeddingFrame messages
  carry.

Outputs always come in the order above (`ALL_OUTPUT_NAMES`), those not chosen left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from dve_perception.errors import ConfigError
from dve_perception.perception.postprocess import downsample_unit_embedding, normalize_embedding

__all__ = [
    "ALL_OUTPUT_NAMES",
    "LABELS_OUTPUT",
    "OUTPUT_NAME",
    "PUBLISH_OUTPUT",
    "SCORES_OUTPUT",
    "FusedGraph",
    "FusedOutputs",
    "check_publish_size",
]

#: The official export's output name: the decoder's name plus the output index.
OUTPUT_NAME = "dense_visual_embedding_decoder_0"
SCORES_OUTPUT = "class_scores"
LABELS_OUTPUT = "class_labels"
PUBLISH_OUTPUT = "embedding_publish"
#: Every output name, in the order the graph returns them.
ALL_OUTPUT_NAMES = (OUTPUT_NAME, SCORES_OUTPUT, LABELS_OUTPUT, PUBLISH_OUTPUT)


@dataclass(frozen=True)
class FusedOutputs:
    """Which outputs the exported graph computes (the default is the official single output).

    `half` requires `normalize`: a unit vector's components lie in [-1, 1], where fp16 keeps
    about 3 significant digits and cannot overflow, whereas the raw embedding has no bound (fp16
    ends at 65504, and its squared norm, which every consumer computes, overflows as soon as
    components reach ~9 in a 768-d vector). Normalising in fp32 first, then casting, keeps fp16
    safe; the network itself runs as the backend's precision dictates.

    Attributes:
        normalize: the main output is L2-normalised over channels.
        half: the main output is fp16 (needs `normalize`).
        num_classes: K > 0 adds `class_scores` against K prototypes given at export.
        argmax: adds `class_labels` (needs `num_classes` > 0).
        publish_size: (ph, pw) adds `embedding_publish`; must divide the embedding size.

    Raises:
        ConfigError: an inconsistent or out-of-range choice.
    """

    normalize: bool = False
    half: bool = False
    num_classes: int = 0
    argmax: bool = False
    publish_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("normalize", "half", "argmax"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.half and not self.normalize:
            raise ConfigError(
                "half (--half) needs normalize (--normalize): fp16 is safe only for unit vectors; "
                "a raw embedding can exceed fp16's range"
            )
        if not _is_int(self.num_classes) or self.num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if self.argmax and self.num_classes == 0:
            raise ConfigError(
                "argmax (--argmax) needs class prototypes (num_classes > 0, --vocabulary): there "
                "are no scores to take the argmax of"
            )
        if self.publish_size is not None:
            size = self.publish_size
            if not (
                isinstance(size, (tuple, list))
                and len(size) == 2
                and all(_is_int(v) and v > 0 for v in size)
            ):
                raise ConfigError(
                    f"publish_size must be (height, width) positive integers, got {size!r}"
                )
            object.__setattr__(self, "publish_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's output names, in order."""
        chosen = (
            True,
            self.num_classes > 0,
            self.argmax,
            self.publish_size is not None,
        )
        return tuple(name for name, on in zip(ALL_OUTPUT_NAMES, chosen, strict=True) if on)

    @property
    def output_dtypes(self) -> dict[str, torch.dtype]:
        """The dtype of each output."""
        dtypes = {
            OUTPUT_NAME: torch.float16 if self.half else torch.float32,
            SCORES_OUTPUT: torch.float32,
            LABELS_OUTPUT: torch.int32,
            PUBLISH_OUTPUT: torch.float16,
        }
        return {name: dtypes[name] for name in self.output_names}

    @property
    def is_official(self) -> bool:
        """Whether the graph is the official export (one raw or normalised fp32 output)."""
        return self.output_names == (OUTPUT_NAME,) and not self.half


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_publish_size(publish_size: tuple[int, int], embedding_size: tuple[int, int]) -> None:
    """Raise `ConfigError` unless `publish_size` divides the network's output size.

    Args:
        publish_size: (ph, pw) of `embedding_publish`.
        embedding_size: (h, w) the network outputs for the export size (input / output stride).
    """
    (ph, pw), (h, w) = publish_size, embedding_size
    if ph > h or pw > w or h % ph or w % pw:
        options = [f"{h // k}x{w // k}" for k in (2, 4, 8) if h % k == 0 and w % k == 0]
        raise ConfigError(
            f"publish size {ph}x{pw} must divide the {h}x{w} embedding (equal areas, which "
            f"ONNX and TensorRT pool exactly); use e.g. {' or '.join(options) or f'{h}x{w}'}"
        )


class FusedGraph(nn.Module):
    """The exported function: the network, then the outputs `fused` chooses, in fixed order.

    Args:
        model: a DVEFormer (or a module with its interface and a `config.embedding_dim`).
        fused: the outputs to compute.
        prototypes: (K, D) or (K, D, 1, 1) class vectors when `fused.num_classes` = K > 0, e.g.
            CLIP text embeddings; stored L2-normalised (cosine scores). None otherwise.

    Raises:
        ConfigError: prototypes missing, unexpected, or of the wrong shape.
    """

    def __init__(
        self, model: nn.Module, fused: FusedOutputs, prototypes: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        # `model` keeps the attribute name of the former export wrapper, so the official-output
        # graphs (initializer names included) are unchanged.
        self.model = model
        self.fused = fused
        weight = _check_prototypes(prototypes, fused.num_classes, model.config.embedding_dim)
        if weight is not None:
            # Exactly `postprocess.class_scores`: normalised prototypes as a 1x1 convolution.
            device = next(model.parameters(), torch.empty(0)).device
            weight = normalize_embedding(weight)[:, :, None, None].to(device)
            self.register_buffer("class_weight", weight)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the outputs named by `fused.output_names`, in that order."""
        return self.heads(self.model(rgb, depth))

    def heads(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Compute the fused outputs from the network's raw (B, D, h, w) embedding, in fp32.

        Separate from `forward` so that a backend can run the network under fp16 autocast and
        these in fp32 (norms and argmax want the range and precision).
        """
        fused = self.fused
        if raw.dtype != torch.float32:
            raw = raw.float()
        needs_unit = fused.normalize or fused.num_classes > 0 or fused.publish_size is not None
        # F.normalize is what the official-output export has always used; it computes the same
        # x / max(||x||, 1e-12) as `postprocess.normalize_embedding`.
        unit = F.normalize(raw, dim=1) if needs_unit else raw
        main = unit if fused.normalize else raw
        outputs = [main.half() if fused.half else main]
        if fused.num_classes > 0:
            scores = F.conv2d(unit, self.class_weight)
            outputs.append(scores)
            if fused.argmax:
                outputs.append(scores.argmax(dim=1).to(torch.int32))
        if fused.publish_size is not None:
            outputs.append(downsample_unit_embedding(unit, fused.publish_size).half())
        return tuple(outputs)


def _check_prototypes(
    prototypes: torch.Tensor | None, num_classes: int, embedding_dim: int
) -> torch.Tensor | None:
    if num_classes == 0:
        if prototypes is not None:
            raise ConfigError(
                "prototypes were given but no class outputs were asked for; set num_classes "
                "(--vocabulary) or leave the prototypes out"
            )
        return None
    if prototypes is None:
        raise ConfigError(
            f"num_classes is {num_classes} but no prototypes were given; pass the (K, D) class "
            "vectors, e.g. CLIP text embeddings of the class names"
        )
    if not isinstance(prototypes, torch.Tensor) or not prototypes.is_floating_point():
        got = (
            f"a {prototypes.dtype} tensor"
            if isinstance(prototypes, torch.Tensor)
            else type(prototypes).__name__
        )
        raise ConfigError(f"prototypes must be a floating-point tensor, got {got}")
    weight = prototypes.detach()
    if weight.ndim == 4 and tuple(weight.shape[2:]) == (1, 1):
        weight = weight[:, :, 0, 0]  # linear-probing checkpoints store Conv2d (K, D, 1, 1)
    if weight.ndim != 2 or tuple(weight.shape) != (num_classes, embedding_dim):
        raise ConfigError(
            f"prototypes must have shape ({num_classes}, {embedding_dim}) for {num_classes} "
            f"classes of the model's {embedding_dim}-d embedding, got {tuple(prototypes.shape)}"
        )
    return weight.float()
