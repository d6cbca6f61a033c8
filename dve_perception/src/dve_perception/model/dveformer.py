"""DVEFormer assembly: RGB-D SwinV2 encoder, pyramid pooling, MLP decoder, embedding head.

`build_dveformer("fullres" | "reducedres")` returns the published architecture, whose state_dict
has exactly the keys and shapes of the official checkpoints. `DVEFormerConfig` also describes
small configurations used by fast tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from dve_perception.errors import ConfigError, InputError
from dve_perception.model.context_module import PyramidPoolingModule
from dve_perception.model.decoder import EmbeddingDecoder
from dve_perception.model.encoder import RGBDSwinEncoder, SwinBackbone

__all__ = ["TINY_TEST_CONFIG", "VARIANTS", "DVEFormer", "DVEFormerConfig", "build_dveformer"]

#: Input sides must be multiples of the encoder's total stride.
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class DVEFormerConfig:
    """Architecture hyper-parameters; the defaults are the published full-resolution model.

    Attributes:
        rgb_embed_dim: RGB patch-embedding channels.
        depth_embed_dim: depth patch-embedding channels.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window: attention window side in tokens.
        ppm_bins: pyramid pooling output sizes.
        decoder_channels: projected widths [main, s16, s8, s4].
        decoder_fuse_channels: width after fusing the branches.
        embedding_dim: output embedding dimension (CLIP ViT-L/14's 768).
        n_upsamplings: learned x2 upsamplings in the head; 2 gives full resolution, 0 gives 1/4.
    """

    rgb_embed_dim: int = 96
    depth_embed_dim: int = 32
    depths: tuple[int, int, int, int] = (2, 2, 6, 2)
    num_heads: tuple[int, int, int, int] = (4, 8, 16, 32)
    window: int = 8
    ppm_bins: tuple[int, ...] = (1, 5)
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 64)
    decoder_fuse_channels: int = 512
    embedding_dim: int = 768
    n_upsamplings: int = 2

    def __post_init__(self) -> None:
        if self.n_upsamplings not in (0, 1, 2):
            raise ConfigError(f"n_upsamplings must be 0, 1 or 2, got {self.n_upsamplings}")
        width = self.rgb_embed_dim + self.depth_embed_dim
        for stage, heads in enumerate(self.num_heads):
            if (width * 2**stage) % heads:
                raise ConfigError(
                    f"stage {stage + 1} width {width * 2**stage} is not divisible by {heads} heads"
                )
        if self.window < 2:
            raise ConfigError(f"window must be at least 2, got {self.window}")

    @property
    def output_stride(self) -> int:
        """Input pixels per output pixel along each axis (1 for full-res, 4 for reduced-res)."""
        return 4 // 2**self.n_upsamplings

    @classmethod
    def variant(cls, name: str) -> DVEFormerConfig:
        """Return the configuration of a published variant, "fullres" or "reducedres"."""
        if name not in VARIANTS:
            raise ConfigError(
                f"unknown DVEFormer variant {name!r}; expected one of {sorted(VARIANTS)}"
            )
        return VARIANTS[name]


VARIANTS: dict[str, DVEFormerConfig] = {
    "fullres": DVEFormerConfig(),
    "reducedres": replace(DVEFormerConfig(), n_upsamplings=0),
}


#: A small configuration with every structural feature of the published ones (four stages,
#: shifted blocks, both pyramid bins, three skips) that runs in milliseconds: for fast tests and
#: examples, like timm's test_* models. Not a trained model and not a published variant.
TINY_TEST_CONFIG = DVEFormerConfig(
    rgb_embed_dim=12,
    depth_embed_dim=4,
    depths=(1, 2, 2, 1),
    num_heads=(1, 2, 2, 4),
    decoder_channels=(32, 16, 8, 8),
    decoder_fuse_channels=32,
    embedding_dim=16,
)


class DVEFormer(nn.Module):
    """The DVEFormer student: (rgb, depth) -> raw dense visual embedding.

    Submodules are named as in the official model: `encoder`, `context_module`,
    `decoders.dense_visual_embedding_decoder`.
    """

    def __init__(self, config: DVEFormerConfig) -> None:
        super().__init__()
        self.config = config
        backbone = SwinBackbone(
            config.rgb_embed_dim,
            config.depth_embed_dim,
            config.depths,
            config.num_heads,
            config.window,
        )
        s4, s8, s16, s32 = backbone.stage_channels
        self.encoder = RGBDSwinEncoder(backbone)
        self.context_module = PyramidPoolingModule(s32, config.ppm_bins)
        self.decoders = nn.ModuleDict(
            {
                "dense_visual_embedding_decoder": EmbeddingDecoder(
                    context_channels=s32,
                    skip_channels=(s16, s8, s4),
                    branch_channels=config.decoder_channels,
                    fuse_channels=config.decoder_fuse_channels,
                    embedding_dim=config.embedding_dim,
                    n_upsamplings=config.n_upsamplings,
                )
            }
        )

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Compute the raw embedding.

        Args:
            rgb: (B, 3, H, W) float32, ImageNet-normalised on the 0-255 scale, RGB order.
            depth: (B, 1, H, W) float32, (mm - mean) / std with invalid pixels 0.
                H and W are multiples of 32.

        Returns:
            (B, embedding_dim, H / s, W / s) float32, not L2-normalised; s is
            `config.output_stride` (1 for full-res, 4 for reduced-res).
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            check_input_pair(rgb, depth)
        s4, s8, s16, s32 = self.encoder(rgb, depth)
        context = self.context_module(s32)
        return self.decoders["dense_visual_embedding_decoder"](context, (s16, s8, s4))


def check_input_pair(rgb: torch.Tensor, depth: torch.Tensor) -> None:
    """Raise `InputError` unless rgb (B,3,H,W) and depth (B,1,H,W) are valid network inputs."""
    for name, t, channels in (("rgb", rgb, 3), ("depth", depth, 1)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != channels:
            raise InputError(f"{name} must have shape (B, {channels}, H, W), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if rgb.shape[0] != depth.shape[0] or rgb.shape[-2:] != depth.shape[-2:]:
        raise InputError(
            f"rgb {tuple(rgb.shape)} and depth {tuple(depth.shape)} differ in batch or size; "
            "register depth to colour and preprocess both to the same size"
        )
    h, w = rgb.shape[-2:]
    if h == 0 or w == 0 or rgb.shape[0] == 0:
        raise InputError(f"empty input of shape {tuple(rgb.shape)}")
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise InputError(
            f"input size {h}x{w} is not a multiple of {INPUT_MULTIPLE}; resize to e.g. "
            f"{_round_to_multiple(h)}x{_round_to_multiple(w)} (the model was trained at 480x640)"
        )


def _round_to_multiple(n: int) -> int:
    return max(INPUT_MULTIPLE, round(n / INPUT_MULTIPLE) * INPUT_MULTIPLE)


def build_dveformer(variant: str | DVEFormerConfig = "fullres") -> DVEFormer:
    """Build a randomly initialised DVEFormer in eval mode.

    Args:
        variant: "fullres", "reducedres", or a `DVEFormerConfig` (e.g. a small test config).

    Returns:
        The model in eval mode; load weights with `dve_perception.model.load_checkpoint`.
    """
    config = variant if isinstance(variant, DVEFormerConfig) else DVEFormerConfig.variant(variant)
    return DVEFormer(config).eval()
