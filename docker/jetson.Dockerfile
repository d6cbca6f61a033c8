# dve_perception on a Jetson (JetPack 6 / L4T r36, Ubuntu 22.04, arm64): CUDA, cuDNN and TensorRT
# from JetPack, ROS 2 Humble from the ROS apt repository, torch from NVIDIA's Jetson wheels.
# Build on the Jetson, from the repository root (see docker/README.md):
#   docker build -f docker/jetson.Dockerfile -t dve_perception:jetson .
ARG L4T_TAG=r36.4.0
FROM nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    ROS_DISTRO=humble \
    PIP_NO_CACHE_DIR=1 \
    DVE_PERCEPTION_MODELS=/models

# ROS 2 Humble from packages.ros.org; the ros2-apt-source package installs the signing key and
# the source list (the documented method since the old key expired in 2025).
ARG ROS_APT_SOURCE_VERSION=1.1.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl software-properties-common xz-utils \
    && add-apt-repository -y universe \
    && curl -fsSL -o /tmp/ros2-apt-source.deb "https://github.com/ros-infrastructure/ros-apt-source/releases/download/${ROS_APT_SOURCE_VERSION}/ros2-apt-source_${ROS_APT_SOURCE_VERSION}.$(. /etc/os-release && echo "${UBUNTU_CODENAME}")_all.deb" \
    && dpkg -i /tmp/ros2-apt-source.deb \
    && rm /tmp/ros2-apt-source.deb \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        ros-humble-ros-base python3-colcon-common-extensions python3-rosdep python3-pip \
        libopenblas-dev \
    && rosdep init \
    && rosdep update --rosdistro humble \
    && rm -rf /var/lib/apt/lists/*

# torch with CUDA for Tegra: NVIDIA's wheel for this JetPack. Never PyPI's aarch64 torch (no CUDA
# on Jetson). Pick the wheel matching your JetPack from NVIDIA's "Installing PyTorch for Jetson
# Platform" page or a Jetson wheel index. NVIDIA's torch >= 2.4 wheels link cuSPARSELt, which
# JetPack does not ship; set CUSPARSELT_ARCHIVE= (empty) for a wheel that does not need it.
# numpy < 2: ROS 2 Humble's compiled Python packages are built against numpy 1.x.
ARG TORCH_WHEEL=https://developer.download.nvidia.com/compute/redist/jp/v61/pytorch/torch-2.5.0a0+872d972e41.nv24.08.17622132-cp310-cp310-linux_aarch64.whl
ARG CUSPARSELT_ARCHIVE=https://developer.download.nvidia.com/compute/cusparselt/redist/libcusparse_lt/linux-sbsa/libcusparse_lt-linux-sbsa-0.6.2.3-archive.tar.xz
RUN if [ -n "${CUSPARSELT_ARCHIVE}" ]; then \
        mkdir /tmp/cusparselt \
        && curl -fsSL "${CUSPARSELT_ARCHIVE}" | tar -xJ -C /tmp/cusparselt --strip-components=1 \
        && cp -a /tmp/cusparselt/lib/. /usr/local/cuda/lib64/ \
        && rm -rf /tmp/cusparselt \
        && ldconfig; \
    fi \
    && python3 -m pip install "numpy>=1.24,<2" "${TORCH_WHEEL}" \
    && python3 -c "import torch; print('torch', torch.__version__, 'built with CUDA', torch.version.cuda)"

WORKDIR /ws

# System dependencies from the package manifests (copied alone so this layer survives code
# changes). rviz2 is skipped: RViz runs on a workstation, not on the robot.
COPY dve_perception/package.xml src/dve_perception/package.xml
COPY dve_perception_interfaces/package.xml src/dve_perception_interfaces/package.xml
RUN apt-get update \
    && rosdep install --from-paths src --ignore-src -y --rosdistro humble --skip-keys rviz2 \
    && rm -rf /var/lib/apt/lists/*

# The pip-only dependencies; torch above already satisfies everything that needs it.
COPY docker/requirements.txt /tmp/requirements.txt
RUN python3 -m pip install -r /tmp/requirements.txt

COPY dve_perception_interfaces src/dve_perception_interfaces
COPY dve_perception src/dve_perception
RUN . /opt/ros/humble/setup.sh \
    && colcon build --event-handlers console_direct+ \
    && rm -rf build log

COPY docker/entrypoint.sh /entrypoint.sh
VOLUME /models
ENTRYPOINT ["/entrypoint.sh"]
CMD ["ros2", "launch", "dve_perception", "robot.launch.py", "rviz:=false", "models_dir:=/models", \
     "device:=cuda"]
