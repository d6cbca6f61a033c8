"""Launch dve_perception on a robot: RGB-D camera in, segmentation and a 3D query map out.

    ros2 launch dve_perception robot.launch.py camera_namespace:=camera backend:=tensorrt \
        engine_path:=/models/dveformer_reducedres_480x640_fp16.plan rviz:=true

By default one process runs perception and mapping together (`combined:=true`), so the 768-d
embeddings never cross DDS: a 120x160 float16 embedding frame is 29 MB, and serialising it at
camera rate costs more than the mapping itself. `combined:=false` starts `perception_node` and
`mapping_node` separately (e.g. mapping on another machine), connected by the embedding topic.
Every node lives in the `dve_perception` namespace, so topic names are the same in both modes:
/dve_perception/segmentation, .../segmentation/color, .../embedding, .../embedding/pca,
.../map/cloud, .../query/heatmap, .../query/markers, services /query_text and
/dve_perception/{save_map,load_map,clear_map}.
"""

from __future__ import annotations

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

_CONFIG = os.path.join(
    get_package_share_directory("dve_perception"), "config", "dve_perception.yaml"
)

# (name, default, description): the launch arguments, in the order `ros2 launch -s` shows them.
ARGUMENTS = (
    ("camera_namespace", "camera", "namespace of the RGB-D driver's topics"),
    ("color_topic", "color/image_raw", "colour image, relative to camera_namespace"),
    ("depth_topic", "aligned_depth_to_color/image_raw", "depth registered to colour"),
    ("camera_info_topic", "color/camera_info", "camera_info of the colour camera"),
    ("world_frame", "", "fixed frame of the 3D map (REP 105: map or odom); empty: map"),
    ("backend", "", "inference backend: torch, onnxruntime or tensorrt; empty: torch"),
    ("device", "", "torch device of the network and the map: cpu, cuda; empty: cpu"),
    ("variant", "", "DVEFormer variant: reducedres or fullres; empty: reducedres"),
    ("models_dir", "", "installed weights folder; empty: $DVE_PERCEPTION_MODELS or ./models"),
    ("weights_path", "", "DVEFormer checkpoint; empty: models_dir default"),
    ("onnx_path", "", "exported model for the onnxruntime backend"),
    ("engine_path", "", "TensorRT plan for the tensorrt backend"),
    ("text_model_path", "", "CLIP ViT-L/14@336 folder; empty: models_dir default"),
    ("vocabulary", "", "class names for the segmentation (file or comma-separated)"),
    ("params_file", _CONFIG, "parameter YAML (default: the package's config/dve_perception.yaml)"),
    ("use_sim_time", "false", "use /clock (bag replay with ros2 bag play --clock)"),
    ("combined", "true", "run perception and mapping in one process"),
    (
        "publish_embedding",
        "",
        "publish embedding frames (true/false); empty: only with combined:=false, where the "
        "mapping node needs them",
    ),
    ("only", "", "with combined:=false, start just one node: perception or mapping"),
    ("rviz", "false", "also start RViz with rviz/dve_perception.rviz (needs rviz2 installed)"),
)


# Parameters the arguments override. Every default is empty, which leaves the parameters file's
# value (and the file's defaults are the dataclasses'): "empty: X" in a description names X.
OVERRIDES = (
    "backend",
    "device",
    "variant",
    "models_dir",
    "weights_path",
    "onnx_path",
    "engine_path",
    "text_model_path",
    "vocabulary",
    "world_frame",
)


def _true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def _check_rviz_installed() -> None:
    """Fail before any node starts when RViz is asked for but absent (a headless robot).

    Raised from the launch setup, the error ends `ros2 launch` with its message and code 1, and
    since no node was created yet, none is left running.
    """
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        raise RuntimeError(
            "rviz:=true, but the rviz2 package is not installed here (apt install "
            "ros-$ROS_DISTRO-rviz2); or leave rviz unset and open rviz/dve_perception.rviz on "
            "a workstation"
        ) from None


def _launch_setup(context: LaunchContext) -> list[Node]:
    """Build the nodes from the resolved arguments (so empty ones can be left out)."""
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    if _true(value["rviz"]):
        _check_rviz_installed()
    sim_time = _true(value["use_sim_time"])
    overrides = {name: value[name] for name in OVERRIDES if value[name]}
    combined = _true(value["combined"])
    publish = value["publish_embedding"]
    overrides["publish_embedding"] = _true(publish) if publish else not combined
    parameters = [value["params_file"], {**overrides, "use_sim_time": sim_time}]
    camera = "/" + value["camera_namespace"].strip("/")
    remappings = [
        ("color/image", f"{camera}/{value['color_topic']}"),
        ("depth/image", f"{camera}/{value['depth_topic']}"),
        ("color/camera_info", f"{camera}/{value['camera_info_topic']}"),
    ]
    common = dict(package="dve_perception", namespace="dve_perception", output="screen")
    if combined:
        nodes = [
            Node(
                executable="dve_perception_node",
                name="dve_perception",
                parameters=parameters,
                remappings=remappings,
                **common,
            )
        ]
    else:
        split = {
            "perception": Node(
                executable="perception_node",
                name="perception",
                parameters=parameters,
                remappings=remappings,
                **common,
            ),
            "mapping": Node(
                executable="mapping_node", name="mapping", parameters=parameters, **common
            ),
        }
        nodes = [node for key, node in split.items() if value["only"] in ("", key)]
    if _true(value["rviz"]):
        share = get_package_share_directory("dve_perception")
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", os.path.join(share, "rviz", "dve_perception.rviz")],
                parameters=[{"use_sim_time": sim_time}],
                output="screen",
            )
        )
    return nodes


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments; the nodes are built once they are resolved."""
    declared = [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
