"""Packaging for dve_perception: an ament_python ROS 2 package that is also pip-installable.

Metadata lives here (not in pyproject.toml) because colcon's ament_python build on Humble runs
setup.py. Runtime dependencies are extras: on a Jetson torch comes from NVIDIA's wheels and numpy
from apt, and a plain `pip install` must not replace them.
"""

from glob import glob

from setuptools import find_namespace_packages, setup

PACKAGE = "dve_perception"
# share/dve_perception/<folder> <- files matching the pattern (relative to this file); a test checks
# that every file in these folders is matched, so a new launch/config/RViz file cannot be forgotten.
SHARE_GLOBS = {
    "launch": "launch/*.launch.py",
    "config": "config/*.yaml",
    "rviz": "rviz/*.rviz",
}

CORE = [
    "torch>=2.5",
    "transformers>=4.45,<6",
    "safetensors>=0.4",
    "onnxruntime>=1.18",
    "pillow>=9",
    "pyyaml>=5.4",
    # Offline replay: rosbag2 I/O without ROS, the recording's TF tree, plots, progress.
    "rosbags>=0.10",
    "pytransform3d>=3.14",
    "matplotlib>=3.6",
    "tqdm>=4.64",
]
EXPORT = ["onnx>=1.16", "onnxscript>=0.2"]
# colcon discovers the two ROS packages in test_ros_packaging.py (colcon list is in
# colcon-package-information; colcon-ros pulls in catkin_pkg and colcon-recursive-crawl).
TEST = ["pytest>=7", "colcon-core>=0.15", "colcon-ros>=0.4", "colcon-package-information>=0.3"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Open-vocabulary 3D scene understanding with DVEFormer for ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    # src layout: the library lives in src/dve_perception, so this folder (named like the package
    # for colcon) is never mistaken for it. From the repository root, Python would otherwise import
    # ./dve_perception as an empty namespace package ahead of the installed one; with src/,
    # setuptools' editable install is a plain path entry, which a real package always wins over.
    package_dir={"": "src"},
    # Namespace discovery so the data folders count as package directories (setuptools warns
    # about data-only subfolders otherwise); tests and build outputs stay out.
    packages=find_namespace_packages(where="src", include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/*", "data/*/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *[
            (f"share/{PACKAGE}/{folder}", sorted(glob(pattern)))
            for folder, pattern in SHARE_GLOBS.items()
        ],
    ],
    install_requires=["numpy>=1.24"],
    extras_require={
        "core": CORE,
        "export": EXPORT,
        "test": CORE + EXPORT + TEST,
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "dve-perception = dve_perception.cli.main:main",
            "perception_node = dve_perception.ros.entry_points:perception_node",
            "mapping_node = dve_perception.ros.entry_points:mapping_node",
            "dve_perception_node = dve_perception.ros.entry_points:combined_node",
        ]
    },
)
