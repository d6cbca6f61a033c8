"""Packaging for dve_perception: an ament_python ROS 2 package that is also pip-installable.

Metadata lives here (not in pyproject.toml) because colcon's ament_python build on Humble runs
setup.py. Runtime dependencies are extras: on a Jetson torch comes from NVIDIA's wheels and numpy
from apt, and a plain `pip install` must not replace them.
"""

from setuptools import find_namespace_packages, setup

PACKAGE = "dve_perception"

CORE = [
    "torch>=2.5",
    "transformers>=4.45,<6",
    "safetensors>=0.4",
    "onnxruntime>=1.18",
    "pillow>=9",
    # Offline replay: rosbag2 I/O without ROS, the recording's TF tree, plots, progress.
    "rosbags>=0.10",
    "pytransform3d>=3.14",
    "matplotlib>=3.6",
    "tqdm>=4.64",
]
EXPORT = ["onnx>=1.16", "onnxscript>=0.2"]
TEST = ["pytest>=7"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Open-vocabulary 3D scene understanding with DVEFormer for ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Namespace discovery so the data folders count as package directories (setuptools warns
    # about data-only subfolders otherwise); tests and build outputs stay out.
    packages=find_namespace_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/*", "data/*/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["numpy>=1.24"],
    extras_require={
        "core": CORE,
        "export": EXPORT,
        "test": CORE + EXPORT + TEST,
    },
    zip_safe=False,
    entry_points={"console_scripts": ["dve-perception = dve_perception.cli:main"]},
)
