"""Console entry points of the node executables (`ros2 run dve_perception perception_node`).

They live apart from the node modules so that a pip install without ROS still gets a clear
one-line message instead of an ImportError traceback when someone runs a node executable.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

__all__ = ["combined_node", "mapping_node", "perception_node"]


def _run(executable: str, module: str) -> None:
    if importlib.util.find_spec("rclpy") is None:
        print(
            f"{executable} needs ROS 2 (rclpy): source /opt/ros/<distro>/setup.bash and your "
            "workspace's install/setup.bash. Without ROS, `dve-perception replay` runs the same "
            "pipeline on a recording.",
            file=sys.stderr,
        )
        sys.exit(1)
    importlib.import_module(module).main()


def perception_node() -> None:
    """Run `perception_node`: RGB-D in, segmentation, previews and embedding frames out."""
    _run("perception_node", "dve_perception.ros.perception_node")


def mapping_node() -> None:
    """Run `mapping_node`: embedding frames and TF in, the map and its services out."""
    _run("mapping_node", "dve_perception.ros.mapping_node")


def combined_node() -> None:
    """Run `dve_perception_node`: perception and mapping in one process."""
    _run("dve_perception_node", "dve_perception.ros.combined_node")
