#!/usr/bin/env bash
# Source ROS 2 and the dve_perception workspace, then run the command (default: bash).
set -e
# shellcheck disable=SC1090,SC1091
source "/opt/ros/${ROS_DISTRO}/setup.bash"
# shellcheck disable=SC1091
source /ws/install/setup.bash
exec "$@"
