"""Settings of the perception and mapping nodes, declared once with defaults, docs and checks.

The ROS nodes declare every field as a read-only parameter (`ros/params.py`; the map's
`MapConfig` becomes `map.*`), `config/dve_perception.yaml` is generated from these classes, and
`parameters.load_parameters_yaml` reads that file without ROS. Regenerate the file with:

    python -m dve_perception.settings.node_config > config/dve_perception.yaml
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field

from dve_perception.errors import ConfigError
from dve_perception.mapping.map_config import MapConfig
from dve_perception.settings.parameters import render_parameters_yaml, validate_config_fields

__all__ = [
    "MappingNodeConfig",
    "NodeConfigBase",
    "PerceptionNodeConfig",
    "render_default_parameters_yaml",
]

# torch device strings the nodes accept: the CPU, the current CUDA device, or CUDA device N.
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
# A ROS 2 topic/service name: "/"- or "~/"-rooted or relative tokens of [A-Za-z0-9_], none
# starting with a digit, no empty tokens (so no "//" and no trailing "/").
_ROS_NAME = re.compile(r"(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")

_HEADER = """\
Parameters of the dve_perception nodes (perception_node, mapping_node and the combined
dve_perception_node) with their defaults. One file serves every node: each node reads the names
it declares and ignores the others. All parameters are read-only (read once at start-up).

Generated from the config dataclasses in dve_perception.settings.node_config
(PerceptionNodeConfig, MappingNodeConfig, and MapConfig under `map.`), where every parameter is
declared, documented and validated; a test keeps this file equal to them. Edit those classes, then
regenerate:
    python -m dve_perception.settings.node_config > config/dve_perception.yaml"""


def _doc(text: str, choices: tuple | None = None) -> dict[str, object]:
    return {"description": text} if choices is None else {"description": text, "choices": choices}


@dataclass(frozen=True)
class NodeConfigBase:
    """Settings both nodes share (same name, default and meaning; a combined node has one)."""

    models_dir: str = field(
        default="",
        metadata=_doc(
            "folder with the installed weights; empty: $DVE_PERCEPTION_MODELS, else ./models"
        ),
    )
    text_model_path: str = field(
        default="",
        metadata=_doc(
            "CLIP ViT-L/14@336 text model folder; empty: models_dir/clip-vit-large-patch14-336"
        ),
    )
    device: str = field(
        default="cpu",
        metadata=_doc(
            "torch device of the network, the text encoder and the map: cpu, cuda or cuda:N"
        ),
    )
    warn_period_s: float = field(
        default=5.0,
        metadata=_doc("a repeated warning is logged at most once per this period; 0: every time"),
    )

    def __post_init__(self) -> None:
        """Check types, choices and the shared settings."""
        validate_config_fields(self)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _non_negative("warn_period_s", self.warn_period_s)


@dataclass(frozen=True)
class PerceptionNodeConfig(NodeConfigBase):
    """How the perception node runs the network and what it publishes."""

    variant: str = field(
        default="reducedres",
        metadata=_doc("DVEFormer variant", ("reducedres", "fullres")),
    )
    backend: str = field(
        default="torch",
        metadata=_doc("inference backend", ("torch", "onnxruntime", "tensorrt")),
    )
    weights_path: str = field(
        default="",
        metadata=_doc("DVEFormer checkpoint (.pth); empty: the variant's file in models_dir"),
    )
    onnx_path: str = field(
        default="", metadata=_doc("exported model; required by the onnxruntime backend")
    )
    engine_path: str = field(
        default="", metadata=_doc("TensorRT plan; required by the tensorrt backend")
    )
    trust_checkpoint: bool = field(
        default=False,
        metadata=_doc("allow full unpickling of weights_path; only for files you trust"),
    )
    fallback_backend: str = field(
        default="",
        metadata=_doc(
            "backend used when the configured one cannot start; empty: fail instead",
            ("", "torch", "onnxruntime", "tensorrt"),
        ),
    )
    precision: str = field(
        default="fp32",
        metadata=_doc(
            "torch backend: fp16 runs the network under CUDA autocast (needs a cuda device); "
            "a TensorRT engine's precision is chosen when it is built",
            ("fp32", "fp16"),
        ),
    )
    cuda_graphs: bool = field(
        default=False,
        metadata=_doc(
            "torch backend on CUDA: replay the network as a captured CUDA graph (fixed input "
            "size; less launch overhead)"
        ),
    )
    vocabulary: str = field(
        default="",
        metadata=_doc(
            "segmentation classes: a file with one name per line, or comma-separated names; "
            "empty: the 40 NYUv2 classes"
        ),
    )
    input_qos: str = field(
        default="sensor_data",
        metadata=_doc(
            "QoS of the image subscriptions: sensor_data (best effort) or reliable",
            ("sensor_data", "reliable"),
        ),
    )
    qos_depth: int = field(
        default=5, metadata=_doc("history depth of the image subscriptions with input_qos reliable")
    )
    sync_queue_size: int = field(
        default=10, metadata=_doc("colour/depth/camera_info synchroniser queue, in messages")
    )
    sync_slop_s: float = field(
        default=0.05, metadata=_doc("largest stamp difference of a synchronised colour-depth pair")
    )
    publish_segmentation: bool = field(
        default=True, metadata=_doc("publish the class-index segmentation image")
    )
    publish_previews: bool = field(
        default=True,
        metadata=_doc("publish the colourised segmentation and the embedding PCA preview"),
    )
    publish_embedding: bool = field(
        default=True, metadata=_doc("publish the embedding frames (the mapping node's input)")
    )
    embedding_height: int = field(default=60, metadata=_doc("rows of a published embedding frame"))
    embedding_width: int = field(
        default=80, metadata=_doc("columns of a published embedding frame")
    )
    embedding_rate_hz: float = field(
        default=5.0, metadata=_doc("most embedding frames published per second; 0: every frame")
    )

    def __post_init__(self) -> None:
        """Check ranges and that the chosen backend has its model file."""
        super().__post_init__()
        for name in ("qos_depth", "sync_queue_size", "embedding_height", "embedding_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.sync_slop_s) and self.sync_slop_s > 0):
            raise ConfigError(f"sync_slop_s must be a positive number, got {self.sync_slop_s}")
        _non_negative("embedding_rate_hz", self.embedding_rate_hz)
        files = {
            "onnxruntime": ("onnx_path", "an exported model, see `dve-perception export-onnx`"),
            "tensorrt": ("engine_path", "a plan built on this machine, see `build-engine`"),
        }
        for backend in (self.backend, self.fallback_backend):
            name, what = files.get(backend, ("", ""))
            if name and not getattr(self, name):
                raise ConfigError(
                    f"backend or fallback_backend {backend!r} needs {name} ({what}), got {name} ''"
                )
        if (self.precision == "fp16" or self.cuda_graphs) and not self.device.startswith("cuda"):
            raise ConfigError(
                f"precision fp16 and cuda_graphs need a cuda device, got device {self.device!r}"
            )


@dataclass(frozen=True)
class MappingNodeConfig(NodeConfigBase):
    """How the mapping node fuses embeddings, answers queries and stores maps."""

    map: MapConfig = field(
        default_factory=MapConfig,
        metadata=_doc("the voxel embedding map: resolution, memory budget, depth range"),
    )
    world_frame: str = field(
        default="map", metadata=_doc("fixed TF frame of the map (REP 105: map or odom)")
    )
    tf_timeout_s: float = field(
        default=0.1, metadata=_doc("how long to wait for a frame's camera transform")
    )
    embedding_qos_depth: int = field(
        default=2, metadata=_doc("history depth of the embedding subscription (frames are large)")
    )
    query_service: str = field(
        default="/query_text", metadata=_doc("name of the QueryText service")
    )
    default_top_k: int = field(
        default=5, metadata=_doc("matches returned when a query's top_k is 0")
    )
    max_top_k: int = field(default=100, metadata=_doc("largest top_k a query may ask for"))
    max_query_chars: int = field(
        default=200, metadata=_doc("longest query text accepted, in characters")
    )
    cloud_period_s: float = field(
        default=2.0, metadata=_doc("period of the map point cloud publication; 0: never")
    )
    cloud_max_points: int = field(
        default=200_000, metadata=_doc("most voxels in a published map cloud (subsampled above)")
    )
    map_directory: str = field(
        default="~/.ros/dve_perception/maps",
        metadata=_doc("folder of saved maps; save/load paths must stay inside it"),
    )
    default_map_name: str = field(
        default="map.dvemap", metadata=_doc("file name used when a save request gives no path")
    )
    load_map_on_start: str = field(
        default="", metadata=_doc("map file in map_directory loaded at start-up; empty: none")
    )
    save_map_on_shutdown: bool = field(
        default=False, metadata=_doc("save the map to default_map_name when the node stops")
    )

    def __post_init__(self) -> None:
        """Check frames, names, timeouts and the top_k range."""
        super().__post_init__()
        if not self.world_frame or self.world_frame.startswith("/") or " " in self.world_frame:
            raise ConfigError(
                "world_frame must be a TF frame id without spaces or a leading '/' "
                f"(e.g. 'map'), got {self.world_frame!r}"
            )
        _non_negative("tf_timeout_s", self.tf_timeout_s)
        _non_negative("cloud_period_s", self.cloud_period_s)
        for name in ("embedding_qos_depth", "max_query_chars", "cloud_max_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ConfigError(
                f"need 1 <= default_top_k <= max_top_k, got {self.default_top_k}, {self.max_top_k}"
            )
        if not _ROS_NAME.fullmatch(self.query_service):
            raise ConfigError(
                "query_service must be a ROS name (tokens of letters, digits and '_' separated "
                f"by '/', e.g. '/query_text'), got {self.query_service!r}"
            )
        if not self.map_directory.strip():
            raise ConfigError("map_directory must be a folder, got ''")
        if not self.default_map_name or "/" in self.default_map_name:
            raise ConfigError(
                f"default_map_name must be a file name without '/', got {self.default_map_name!r}"
            )


def _non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")


def render_default_parameters_yaml() -> str:
    """Return the text of `config/dve_perception.yaml`: both configs, defaults, documentation."""
    return render_parameters_yaml([PerceptionNodeConfig, MappingNodeConfig], header=_HEADER)


if __name__ == "__main__":
    sys.stdout.write(render_default_parameters_yaml())
