# dve_perception on x86-64: ROS 2 (Humble by default; Jazzy works too) with CPU torch.
# Build from the repository root (see docker/README.md):
#   docker build -f docker/x86.Dockerfile -t dve_perception:humble .
#   docker build -f docker/x86.Dockerfile --build-arg ROS_DISTRO=jazzy -t dve_perception:jazzy .
ARG ROS_DISTRO=humble
FROM ros:${ROS_DISTRO}-ros-base

# Jazzy's Ubuntu 24.04 marks the system Python as externally managed (PEP 668). This image has a
# single purpose, so pip installs beside the apt packages instead of in a venv: one interpreter,
# one numpy for the ROS packages and ours. Humble's older pip ignores the variable.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    DVE_PERCEPTION_MODELS=/models

WORKDIR /ws

# System dependencies from the package manifests (copied alone so this layer survives code
# changes). rviz2 is skipped: RViz runs on a workstation, not in the robot's container.
COPY dve_perception/package.xml src/dve_perception/package.xml
COPY dve_perception_interfaces/package.xml src/dve_perception_interfaces/package.xml
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rosdep update --rosdistro "${ROS_DISTRO}" \
    && rosdep install --from-paths src --ignore-src -y --rosdistro "${ROS_DISTRO}" --skip-keys rviz2 \
    && rm -rf /var/lib/apt/lists/*

# CPU torch first, from PyTorch's CPU index: a plain `pip install torch` would pull the CUDA
# build (several GB). Then the pip-only dependencies (docker/requirements.txt).
ARG TORCH_SPEC="torch>=2.5"
RUN python3 -m pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}"
COPY docker/requirements.txt /tmp/requirements.txt
RUN python3 -m pip install -r /tmp/requirements.txt

COPY dve_perception_interfaces src/dve_perception_interfaces
COPY dve_perception src/dve_perception
RUN . "/opt/ros/${ROS_DISTRO}/setup.sh" \
    && colcon build --event-handlers console_direct+ \
    && rm -rf build log

COPY docker/entrypoint.sh /entrypoint.sh
VOLUME /models
ENTRYPOINT ["/entrypoint.sh"]
CMD ["ros2", "launch", "dve_perception", "robot.launch.py", "rviz:=false", "models_dir:=/models"]
