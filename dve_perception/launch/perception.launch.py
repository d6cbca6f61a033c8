"""Start only `perception_node` (see robot.launch.py for the arguments and topic names).

ros2 launch dve_perception perception.launch.py
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def generate_launch_description() -> LaunchDescription:
    """Include robot.launch.py with this node only and without RViz."""
    robot = os.path.join(get_package_share_directory("dve_perception"), "launch", "robot.launch.py")
    return LaunchDescription(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(robot),
                launch_arguments={
                    "combined": "false",
                    "only": "perception",
                    "rviz": "false",
                }.items(),
            )
        ]
    )
