"""The interface of an exported DVEFormer file: tensor names and `ExportMetadata`.

`onnx_export` writes these into every file it makes; backends read them back (e.g. from
onnxruntime's `custom_metadata_map`) to check their inputs against the size the pooling was fixed
to. This module needs neither onnx nor onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from dve_perception import __version__
from dve_perception.errors import CheckpointError
from dve_perception.model.dveformer import DVEFormerConfig

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "ExportMetadata"]

INPUT_NAMES = ("rgb", "depth")
#: The official export's output name: the decoder's name plus the output index.
OUTPUT_NAME = "dense_visual_embedding_decoder_0"


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file was made for; stored in the ONNX model's `metadata_props`.

    `output_stride` and `embedding_dim` are written as keys of their own too, for readers (such
    as C++ TensorRT code) that do not parse the config JSON.

    Attributes:
        variant: "fullres", "reducedres", or "custom" for any other configuration.
        config: the architecture.
        height: input height the pooling is fixed to; backends must feed exactly this size.
        width: input width, likewise.
        normalized: whether the graph L2-normalises the output over channels.
        version: the dve_perception version that wrote the file.
    """

    variant: str
    config: DVEFormerConfig
    height: int
    width: int
    normalized: bool
    version: str = __version__

    @property
    def output_stride(self) -> int:
        """Input pixels per output pixel (1 full-res, 4 reduced-res)."""
        return self.config.output_stride

    @property
    def embedding_dim(self) -> int:
        """Output channels."""
        return self.config.embedding_dim

    def to_props(self) -> dict[str, str]:
        """Return the key/value strings written to `metadata_props`."""
        return {
            "dve_perception_version": self.version,
            "variant": self.variant,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "height": str(self.height),
            "width": str(self.width),
            "normalized": str(self.normalized).lower(),
            "output_stride": str(self.output_stride),
            "embedding_dim": str(self.embedding_dim),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "ONNX model") -> ExportMetadata:
        """Parse `metadata_props` (or onnxruntime's `custom_metadata_map`).

        Raises:
            CheckpointError: keys missing (not a dve_perception export) or malformed.
        """
        keys = ("dve_perception_version", "variant", "config", "height", "width", "normalized")
        missing = [k for k in keys if k not in props]
        if missing:
            raise CheckpointError(
                f"{source} has no dve_perception export metadata (missing {missing}); "
                "export it with `dve-perception export-onnx`"
            )
        try:
            fields = {
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(props["config"]).items()
            }
            if props["normalized"] not in ("true", "false"):
                raise ValueError(f"normalized is {props['normalized']!r}, not true/false")
            return cls(
                variant=props["variant"],
                config=DVEFormerConfig(**fields),
                height=int(props["height"]),
                width=int(props["width"]),
                normalized=props["normalized"] == "true",
                version=props["dve_perception_version"],
            )
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{source} has malformed dve_perception metadata: {err}") from err
