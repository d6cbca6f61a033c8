"""The core never imports ROS, TensorRT or heavy optional libraries at module level."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import dve_perception

# Blocked in a subprocess by setting sys.modules[name] = None, which makes `import name` fail.
FORBIDDEN = [
    "rclpy",
    "message_filters",
    "tf2_ros",
    "cv_bridge",
    "sensor_msgs_py",
    "diagnostic_updater",
    "diagnostic_msgs",
    "std_msgs",
    "std_srvs",
    "sensor_msgs",
    "geometry_msgs",
    "visualization_msgs",
    "builtin_interfaces",
    "rcl_interfaces",
    "dve_perception_interfaces",
    "launch",
    "launch_ros",
    "tensorrt",
    "pycuda",
    # Optional/heavy: imported lazily inside the functions that need them.
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
]
# Adapters that may import ROS / TensorRT themselves.
ADAPTER_PREFIXES = ("dve_perception.ros", "dve_perception.perception.backends.tensorrt")


def core_modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.walk_packages(dve_perception.__path__, prefix="dve_perception.")
        if not m.name.startswith(ADAPTER_PREFIXES)
    ]
    return ["dve_perception", *names]


def test_core_modules_import_without_ros_tensorrt_or_optional_libraries():
    modules = core_modules()
    assert "dve_perception.model.dveformer" in modules
    script = (
        "import sys\n"
        f"for name in {FORBIDDEN!r}:\n"
        "    sys.modules[name] = None\n"
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_the_package_does_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, dve_perception; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"


def test_node_executables_without_ros_exit_with_a_one_line_hint():
    script = (
        "import sys\n"
        "sys.modules['rclpy'] = None\n"
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'rclpy' else 1\n"
        "from dve_perception.ros.entry_points import perception_node\n"
        "perception_node()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "perception_node needs ROS 2 (rclpy)" in result.stderr
    assert "Traceback" not in result.stderr
