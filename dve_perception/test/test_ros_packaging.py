"""The ROS 2 packaging is consistent, checked without ROS.

Manifests (catkin_pkg), colcon discovery, launch files, setup.py's installed files and console
scripts, the RViz config, the interface definitions (rosbags' parser) and the Docker images'
pip requirements. Nothing here imports rclpy or runs setup.py.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PKG_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PKG_DIR.parent
IFACE_DIR = REPO_ROOT / "dve_perception_interfaces"
LAUNCH_FILES = sorted((PKG_DIR / "launch").glob("*.py"))
RVIZ_FILE = PKG_DIR / "rviz" / "dve_perception.rviz"

# Every topic the nodes publish (docs/ros.md), with the QoS durability a display must request:
# transient-local publishers are only matched by transient-local (or volatile) subscribers, and a
# volatile subscriber would miss the map and query results published before RViz started.
PUBLISHED_TOPICS = {
    "/dve_perception/segmentation": "Volatile",
    "/dve_perception/segmentation/color": "Volatile",
    "/dve_perception/embedding": "Volatile",
    "/dve_perception/embedding/pca": "Volatile",
    "/dve_perception/map/cloud": "Transient Local",
    "/dve_perception/query/heatmap": "Transient Local",
    "/dve_perception/query/markers": "Transient Local",
}
# What the RViz config must show, and with which display class.
RVIZ_DISPLAYS = {
    "/dve_perception/segmentation/color": "rviz_default_plugins/Image",
    "/dve_perception/embedding/pca": "rviz_default_plugins/Image",
    "/dve_perception/map/cloud": "rviz_default_plugins/PointCloud2",
    "/dve_perception/query/heatmap": "rviz_default_plugins/PointCloud2",
    "/dve_perception/query/markers": "rviz_default_plugins/MarkerArray",
}
# Python module -> rosdep key, where they differ (tf2_ros's Python module is in tf2_ros_py).
MODULE_TO_ROSDEP = {
    "tf2_ros": "tf2_ros_py",
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "pytest": "python3-pytest",
}


def _parse_manifest(path: Path):
    package = pytest.importorskip("catkin_pkg.package", reason="needs catkin_pkg (test extra)")
    manifest = package.parse_package(str(path))
    manifest.validate()
    return manifest


# setup.py run with setup() replaced by a printer: its real globs, in a subprocess, writing nothing.
_SETUP_PRINTER = """
import json, runpy, setuptools
setuptools.setup = lambda **kwargs: print(json.dumps(kwargs, default=str))
runpy.run_path("setup.py", run_name="__main__")
"""


@functools.cache
def _setup_kwargs() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _SETUP_PRINTER],
        capture_output=True,
        text=True,
        cwd=PKG_DIR,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots - set(sys.stdlib_module_names) - {"__future__", "dve_perception"}


def _calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _keyword_constants(calls: list[ast.Call], keyword: str) -> set[str]:
    return {
        k.value.value
        for call in calls
        for k in call.keywords
        if k.arg == keyword and isinstance(k.value, ast.Constant)
    }


# --- manifests -----------------------------------------------------------------------------------


def test_perception_manifest_is_format_3_ament_python_and_needs_the_interfaces() -> None:
    manifest = _parse_manifest(PKG_DIR / "package.xml")
    assert manifest.name == "dve_perception"
    assert manifest.package_format == 3
    assert manifest.get_build_type() == "ament_python"
    assert "dve_perception_interfaces" in {d.name for d in manifest.exec_depends}


def test_interfaces_manifest_is_an_ament_cmake_rosidl_interface_package() -> None:
    manifest = _parse_manifest(IFACE_DIR / "package.xml")
    assert manifest.name == "dve_perception_interfaces"
    assert manifest.package_format == 3
    assert manifest.get_build_type() == "ament_cmake"
    assert [g.name for g in manifest.member_of_groups] == ["rosidl_interface_packages"]
    assert "rosidl_default_generators" in {d.name for d in manifest.buildtool_depends}
    assert "rosidl_default_runtime" in {d.name for d in manifest.exec_depends}


def test_every_package_the_nodes_and_launch_files_import_is_an_exec_dependency() -> None:
    manifest = _parse_manifest(PKG_DIR / "package.xml")
    declared = {d.name for d in manifest.exec_depends}
    sources = [*sorted((PKG_DIR / "src" / "dve_perception" / "ros").glob("*.py")), *LAUNCH_FILES]
    assert sources, "no ROS sources found"
    needed = {MODULE_TO_ROSDEP.get(m, m) for path in sources for m in _imported_roots(path)}
    assert needed - declared == set()


#: Installed with pip, not rosdep: package.xml says why each is left undeclared.
PIP_ONLY = {"torch", "transformers", "safetensors", "onnxruntime", "rosbags", "pytransform3d"}


def test_every_package_the_ros_tests_import_is_an_exec_or_test_dependency() -> None:
    manifest = _parse_manifest(PKG_DIR / "package.xml")
    declared = {d.name for d in (*manifest.exec_depends, *manifest.test_depends)}
    sources = sorted((PKG_DIR / "test" / "ros").glob("*.py"))
    # The suite's own helper modules (on sys.path under pytest) are no packages.
    test_dir = PKG_DIR / "test"
    helpers = {path.stem for path in [*test_dir.glob("*.py"), *test_dir.glob("ros/*.py")]}
    imported = {m for path in sources for m in _imported_roots(path)} - helpers - PIP_ONLY
    needed = {MODULE_TO_ROSDEP.get(m, m) for m in imported}
    assert needed - declared == set()


def test_every_package_the_launch_files_start_nodes_from_is_an_exec_dependency() -> None:
    manifest = _parse_manifest(PKG_DIR / "package.xml")
    declared = {d.name for d in manifest.exec_depends} | {"dve_perception"}
    calls = [call for path in LAUNCH_FILES for call in _calls(path)]
    assert _keyword_constants(calls, "package") - declared == set()
    # replay_bag.launch.py runs `ros2 bag play`, which the ros2bag package provides.
    commands = [
        [getattr(element, "value", None) for element in node.elts]
        for path in LAUNCH_FILES
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.List)
    ]
    assert any(command[:2] == ["ros2", "bag"] for command in commands)
    assert "ros2bag" in declared


# --- colcon ------------------------------------------------------------------------------------


def test_colcon_discovers_exactly_the_two_packages_with_their_build_types(tmp_path: Path) -> None:
    plugins = ("colcon_core", "colcon_ros", "colcon_package_information")
    missing = [name for name in plugins if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs colcon ({', '.join(missing)} missing; pip install -e '.[test]')")
    # A private COLCON_HOME ignores the user's defaults; /dev/null as log base writes no logs.
    env = {**os.environ, "COLCON_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "colcon", "--log-base", os.devnull, "list"]
        + ["--base-paths", str(REPO_ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = {tuple(line.split("\t")) for line in result.stdout.splitlines() if line.strip()}
    # Exact equality also proves nothing under .venv/, build/, install/ or log/ was picked up.
    assert found == {
        ("dve_perception", str(PKG_DIR), "(ros.ament_python)"),
        ("dve_perception_interfaces", str(IFACE_DIR), "(ros.ament_cmake)"),
    }


# --- launch files and setup.py -------------------------------------------------------------------


def test_launch_files_compile_and_define_generate_launch_description() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {
        "robot.launch.py",
        "perception.launch.py",
        "mapping.launch.py",
        "replay_bag.launch.py",
    }
    for path in LAUNCH_FILES:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
        functions = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in functions, path.name


def _installed_share_files() -> dict[str, set[str]]:
    """share/dve_perception/<folder> -> the files setup.py installs there."""
    prefix = "share/dve_perception/"
    return {
        destination.removeprefix(prefix): set(files)
        for destination, files in _setup_kwargs()["data_files"]
        if destination.startswith(prefix)
    }


def test_setup_installs_every_file_of_the_launch_config_and_rviz_folders() -> None:
    installed = _installed_share_files()
    for folder in ("launch", "config", "rviz"):
        present = {
            path.relative_to(PKG_DIR).as_posix()
            for path in (PKG_DIR / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        assert present, f"{folder}/ is empty"
        assert present - installed.get(folder, set()) == set(), f"{folder}/ files not installed"


def test_files_the_launch_files_load_from_the_share_folder_exist_and_are_installed() -> None:
    installed = _installed_share_files()
    referenced = set()
    for path in LAUNCH_FILES:
        for call in _calls(path):
            if getattr(call.func, "attr", None) != "join":
                continue
            args = [getattr(a, "value", None) for a in call.args]
            referenced |= {(a, b) for a, b in zip(args, args[1:], strict=False) if a in installed}
    assert {("config", "dve_perception.yaml"), ("rviz", "dve_perception.rviz")} <= referenced
    for folder, name in sorted(referenced):
        assert (PKG_DIR / folder / name).is_file(), f"{folder}/{name} is missing"
        assert f"{folder}/{name}" in installed[folder], f"{folder}/{name} is not installed"


def test_launched_executables_are_console_scripts_whose_functions_exist() -> None:
    scripts = {}
    for script in _setup_kwargs()["entry_points"]["console_scripts"]:
        name, target = script.split("=")
        scripts[name.strip()] = target.strip()
    ours = set()
    for path in LAUNCH_FILES:
        for call in _calls(path):
            keywords = {k.arg: getattr(k.value, "value", None) for k in call.keywords}
            # Nodes without an explicit package get package="dve_perception" through **common.
            if "executable" in keywords and keywords.get("package") in (None, "dve_perception"):
                ours.add(keywords["executable"])
    assert ours == {"perception_node", "mapping_node", "dve_perception_node"}
    for executable in sorted(ours):
        assert executable in scripts, f"setup.py has no console script {executable}"
        module, function = scripts[executable].split(":")
        source = PKG_DIR.joinpath("src", *module.split(".")).with_suffix(".py")
        assert source.is_file(), f"{executable}: {source} is missing"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function in functions, f"{executable}: {module} defines no {function}()"


# --- RViz ----------------------------------------------------------------------------------------


def _rviz_displays(displays: list[dict]) -> list[dict]:
    flat = []
    for display in displays:
        flat.append(display)
        flat.extend(_rviz_displays(display.get("Displays", [])))  # rviz_common/Group
    return flat


def test_rviz_config_uses_the_map_frame_and_shows_grid_and_tf() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    classes = {d["Class"] for d in _rviz_displays(manager["Displays"])}
    assert {"rviz_default_plugins/Grid", "rviz_default_plugins/TF"} <= classes


def test_rviz_displays_only_published_topics_with_matching_durability() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    shown = {}
    for display in _rviz_displays(config["Visualization Manager"]["Displays"]):
        topic = display.get("Topic")
        if topic is None:
            continue
        assert isinstance(topic, dict), f"{display['Name']}: Topic needs the QoS block"
        assert topic["Value"] in PUBLISHED_TOPICS, f"{display['Name']}: unknown {topic['Value']}"
        assert topic["Durability Policy"] == PUBLISHED_TOPICS[topic["Value"]], topic["Value"]
        assert topic["Reliability Policy"] in ("Reliable", "Best Effort")
        shown[topic["Value"]] = display
    assert {t: d["Class"] for t, d in shown.items()} == RVIZ_DISPLAYS


def test_rviz_colours_the_map_by_rgb_and_the_heatmap_by_its_score_field() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text(encoding="utf-8"))
    displays = _rviz_displays(config["Visualization Manager"]["Displays"])
    by_topic = {d["Topic"]["Value"]: d for d in displays if isinstance(d.get("Topic"), dict)}
    assert by_topic["/dve_perception/map/cloud"]["Color Transformer"] == "RGB8"
    heatmap = by_topic["/dve_perception/query/heatmap"]
    assert (heatmap["Color Transformer"], heatmap["Channel Name"]) == ("Intensity", "score")


# --- interfaces ----------------------------------------------------------------------------------


def _interface_types() -> dict:
    from rosbags.typesys import get_types_from_msg

    types = {}
    for path in sorted((IFACE_DIR / "msg").glob("*.msg")):
        name = f"dve_perception_interfaces/msg/{path.stem}"
        types |= get_types_from_msg(path.read_text(encoding="utf-8"), name)
    for path in sorted((IFACE_DIR / "srv").glob("*.srv")):
        parts = re.split(r"^---\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert len(parts) == 2, f"{path.name}: needs exactly one --- line"
        for part, suffix in zip(parts, ("Request", "Response"), strict=True):
            name = f"dve_perception_interfaces/srv/{path.stem}_{suffix}"
            types |= get_types_from_msg(part, name)
    return types


def _referenced_names(field_type: tuple) -> set[str]:
    from rosbags.interfaces import Nodetype

    kind, detail = field_type
    if kind == Nodetype.NAME:
        return {detail}
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return _referenced_names(detail[0])
    return set()


def test_interfaces_parse_and_reference_only_known_message_types() -> None:
    from rosbags.typesys import Stores, get_typestore

    types = _interface_types()
    assert len(types) == 2 + 2 * 3  # two messages, three services
    known = set(get_typestore(Stores.ROS2_HUMBLE).fielddefs) | set(types)
    for name, (_constants, fields) in types.items():
        referenced = set().union(*(_referenced_names(t) for _, t in fields))
        assert referenced - known == set(), name


def test_interfaces_cmakelists_generates_every_msg_and_srv_file() -> None:
    cmake = (IFACE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(r"rosidl_generate_interfaces\((.*?)\)", cmake, flags=re.DOTALL)
    assert block is not None
    listed = set(re.findall(r'"((?:msg|srv|action)/[^"]+)"', block.group(1)))
    present = {
        p.relative_to(IFACE_DIR).as_posix()
        for pattern in ("msg/*.msg", "srv/*.srv", "action/*.action")
        for p in IFACE_DIR.glob(pattern)
    }
    assert listed == present


# --- Docker --------------------------------------------------------------------------------------


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for line in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_docker_requirements_match_setup_py_without_torch() -> None:
    kwargs = _setup_kwargs()
    declared = _requirement_names(kwargs["install_requires"] + kwargs["extras_require"]["core"])
    docker = (REPO_ROOT / "docker" / "requirements.txt").read_text(encoding="utf-8")
    # Each image installs its own torch (CPU index on x86, NVIDIA's wheel on Jetson).
    assert _requirement_names(docker.splitlines()) == declared - {"torch"}


@pytest.mark.parametrize("dockerfile", ["x86.Dockerfile", "jetson.Dockerfile"])
def test_docker_images_install_the_requirements_and_expose_the_models_volume(
    dockerfile: str,
) -> None:
    text = (REPO_ROOT / "docker" / dockerfile).read_text(encoding="utf-8")
    assert "COPY docker/requirements.txt" in text
    assert "DVE_PERCEPTION_MODELS=/models" in text
    assert re.search(r"^VOLUME /models$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["/entrypoint.sh"]' in text
