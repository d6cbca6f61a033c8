"""Replay a rosbag2 recording through the ROS nodes with simulated time.

    ros2 launch dve_perception replay_bag.launch.py bag:=/data/office_bag rate:=0.5

Plays the bag with `--clock` and starts robot.launch.py with `use_sim_time:=true`, so TF lookups
happen at the recorded stamps. Any robot.launch.py argument can be added (camera_namespace,
backend, ...). Without ROS, `dve-perception replay BAG --out DIR` does the same offline.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    """Declare bag and rate, play the bag with a clock, include the robot launch."""
    robot = os.path.join(get_package_share_directory("dve_perception"), "launch", "robot.launch.py")
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 folder or file to play"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
            ExecuteProcess(
                cmd=[
                    "ros2",
                    "bag",
                    "play",
                    LaunchConfiguration("bag"),
                    "--clock",
                    "--rate",
                    LaunchConfiguration("rate"),
                ],
                output="screen",
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(robot),
                launch_arguments={"use_sim_time": "true"}.items(),
            ),
        ]
    )
