"""The interface of an exported DVEFormer file: tensor names and `ExportMetadata`.

`onnx_export` writes these into every file it makes; backends read them back (e.g. from
onnxruntime's `custom_metadata_map`) to check their inputs against the size the pooling was fixed
to and to learn which outputs the graph has (`fused_outputs`). This module needs neither onnx nor
onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from dve_perception import __version__
from dve_perception.errors import CheckpointError, ConfigError
from dve_perception.model.dveformer import DVEFormerConfig
from dve_perception.perception.backends.fused_outputs import OUTPUT_NAME, FusedOutputs

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "ExportMetadata"]

INPUT_NAMES = ("rgb", "depth")
# Keys written only for graphs with more than the official output, so that the official
# exports (raw or --normalize) stay byte for byte what they were; absent keys read as defaults.
_FUSED_KEYS = ("outputs", "half", "num_classes", "argmax", "publish_size", "class_names")


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file was made for; stored in the ONNX model's `metadata_props`.

    `output_stride` and `embedding_dim` are written as keys of their own too, for readers (such
    as C++ TensorRT code) that do not parse the config JSON. Exports with fused outputs also
    write `outputs` (JSON list of the output names, in order), `half`, `argmax` ("true" or
    "false"), `num_classes`, `publish_size` ("HxW" or "") and `class_names` (JSON list); files
    without them have the official single output.

    Attributes:
        variant: "fullres", "reducedres", or "custom" for any other configuration.
        config: the architecture.
        height: input height the pooling is fixed to; backends must feed exactly this size.
        width: input width, likewise.
        normalized: whether the graph L2-normalises the output over channels.
        version: the dve_perception version that wrote the file.
        half: the main output is fp16 (see `FusedOutputs`).
        num_classes: K of the `class_scores` output, 0 without one.
        argmax: the graph outputs `class_labels`.
        publish_size: (ph, pw) of the `embedding_publish` output, or None.
        class_names: the K class names the prototypes encode, when known; else empty.

    Raises:
        ConfigError: an inconsistent fused configuration or class names that do not fit it.
    """

    variant: str
    config: DVEFormerConfig
    height: int
    width: int
    normalized: bool
    version: str = __version__
    half: bool = False
    num_classes: int = 0
    argmax: bool = False
    publish_size: tuple[int, int] | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fused = self.fused  # validates the combination
        object.__setattr__(self, "publish_size", fused.publish_size)
        names = self.class_names
        if isinstance(names, str) or (
            len(names) not in (0, fused.num_classes) or not all(isinstance(n, str) for n in names)
        ):
            raise ConfigError(
                f"class_names must be {fused.num_classes} strings, one per prototype (or none), "
                f"got {names!r:.200}"
            )
        names = tuple(names)
        object.__setattr__(self, "class_names", names)

    @classmethod
    def create(
        cls,
        variant: str,
        config: DVEFormerConfig,
        height: int,
        width: int,
        fused: FusedOutputs,
        class_names: Sequence[str] = (),
    ) -> ExportMetadata:
        """Build the metadata of an export from its fused-output choice."""
        return cls(
            variant,
            config,
            height,
            width,
            fused.normalize,
            half=fused.half,
            num_classes=fused.num_classes,
            argmax=fused.argmax,
            publish_size=fused.publish_size,
            class_names=class_names,
        )

    @property
    def fused(self) -> FusedOutputs:
        """The outputs the graph computes."""
        return FusedOutputs(
            normalize=self.normalized,
            half=self.half,
            num_classes=self.num_classes,
            argmax=self.argmax,
            publish_size=self.publish_size,
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's output names, in order."""
        return self.fused.output_names

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
        props = {
            "dve_perception_version": self.version,
            "variant": self.variant,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "height": str(self.height),
            "width": str(self.width),
            "normalized": str(self.normalized).lower(),
            "output_stride": str(self.output_stride),
            "embedding_dim": str(self.embedding_dim),
        }
        if self.fused.is_official:
            return props
        size = self.publish_size
        return props | {
            "outputs": json.dumps(list(self.output_names)),
            "half": str(self.half).lower(),
            "num_classes": str(self.num_classes),
            "argmax": str(self.argmax).lower(),
            "publish_size": "" if size is None else f"{size[0]}x{size[1]}",
            "class_names": json.dumps(list(self.class_names)),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "ONNX model") -> ExportMetadata:
        """Parse `metadata_props` (or onnxruntime's `custom_metadata_map`).

        Files written before fused outputs existed have none of their keys and read as the
        official single output.

        Raises:
            CheckpointError: keys missing (not a dve_perception export) or malformed, including
                an `outputs` list that disagrees with the fused configuration.
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
            metadata = cls(
                variant=props["variant"],
                config=DVEFormerConfig(**fields),
                height=int(props["height"]),
                width=int(props["width"]),
                normalized=_parse_bool(props, "normalized"),
                version=props["dve_perception_version"],
                **_parse_fused(props),
            )
            if "outputs" in props and json.loads(props["outputs"]) != list(metadata.output_names):
                raise ValueError(
                    f"outputs {props['outputs']} disagree with the fused configuration, which "
                    f"gives {list(metadata.output_names)}"
                )
        except (ValueError, TypeError) as err:  # ConfigError is a ValueError
            raise CheckpointError(f"{source} has malformed dve_perception metadata: {err}") from err
        return metadata


def _parse_bool(props: Mapping[str, str], key: str) -> bool:
    if props[key] not in ("true", "false"):
        raise ValueError(f"{key} is {props[key]!r}, not true/false")
    return props[key] == "true"


def _parse_fused(props: Mapping[str, str]) -> dict:
    """The fused-output fields present in `props` (absent ones keep their defaults)."""
    fields: dict = {}
    for key in ("half", "argmax"):
        if key in props:
            fields[key] = _parse_bool(props, key)
    if "num_classes" in props:
        fields["num_classes"] = int(props["num_classes"])
    if props.get("publish_size"):
        height, sep, width = props["publish_size"].partition("x")
        if not sep:
            raise ValueError(f"publish_size is {props['publish_size']!r}, not HxW")
        fields["publish_size"] = (int(height), int(width))
    if "class_names" in props:
        names = json.loads(props["class_names"])
        if not isinstance(names, list):
            raise ValueError(f"class_names is {props['class_names']!r}, not a JSON list")
        fields["class_names"] = tuple(names)
    return fields
