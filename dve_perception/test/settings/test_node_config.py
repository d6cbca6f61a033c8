"""The node configs: documented, validated, and equal to the committed parameters file."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

import dve_perception.settings.parameters as parameters
from dve_perception.errors import ConfigError
from dve_perception.mapping.map_config import MapConfig
from dve_perception.settings.node_config import (
    MappingNodeConfig,
    PerceptionNodeConfig,
    render_default_parameters_yaml,
)
from dve_perception.settings.parameters import (
    config_from_parameters,
    load_parameters_yaml,
    parameter_specs,
)

PACKAGE = Path(__file__).resolve().parents[2]
CONFIG_FILE = PACKAGE / "config" / "dve_perception.yaml"
ROS_DIR = PACKAGE / "src" / "dve_perception" / "ros"
CONFIGS = [PerceptionNodeConfig, MappingNodeConfig]
SHARED = {"models_dir", "text_model_path", "device", "warn_period_s"}


def _all_fields(cls):
    for fld in dataclasses.fields(cls):
        yield cls, fld
        if fld.name == "map":
            yield from _all_fields(MapConfig)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_including_the_map_settings_has_a_description(config_cls):
    for owner, fld in _all_fields(config_cls):
        assert fld.metadata.get("description", "").strip(), f"{owner.__name__}.{fld.name}"


def test_mapping_parameters_include_every_map_setting_under_map_dot():
    names = [spec.name for spec in parameter_specs(MappingNodeConfig)]

    expected = [f"map.{fld.name}" for fld in dataclasses.fields(MapConfig)]
    assert [name for name in names if name.startswith("map.")] == expected
    assert "map" not in names


def test_parameter_types_and_choices_match_the_declared_field_types():
    specs = {s.name: s for c in CONFIGS for s in parameter_specs(c)}

    assert specs["map.voxel_size_m"].type == "double"
    assert specs["map.max_voxels"].type == "int"
    assert specs["publish_embedding"].type == "bool"
    assert specs["qos_depth"].type == "int"
    assert specs["embedding_rate_hz"].type == "double"
    assert specs["world_frame"].type == "string"
    assert specs["backend"].choices == ("torch", "onnxruntime", "tensorrt")
    assert specs["variant"].choices == ("reducedres", "fullres")
    assert specs["fallback_backend"].choices == ("", "torch", "onnxruntime", "tensorrt")
    assert specs["input_qos"].choices == ("sensor_data", "reliable")


def test_both_nodes_share_exactly_the_common_settings_with_identical_specs():
    perception = {s.name: s for s in parameter_specs(PerceptionNodeConfig)}
    mapping = {s.name: s for s in parameter_specs(MappingNodeConfig)}

    assert set(perception) & set(mapping) == SHARED
    for name in SHARED:
        assert perception[name] == mapping[name]


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_defaults_round_trip_through_parameters(config_cls):
    values = {spec.name: spec.default for spec in parameter_specs(config_cls)}

    assert config_from_parameters(config_cls, values) == config_cls()


def test_the_committed_parameters_file_is_generated_from_the_configs():
    # Regenerate with: python -m dve_perception.settings.node_config > config/dve_perception.yaml
    assert CONFIG_FILE.read_text(encoding="utf-8") == render_default_parameters_yaml()


def test_the_committed_parameters_file_starts_with_an_explanatory_header():
    first = CONFIG_FILE.read_text(encoding="utf-8").splitlines()[0]

    assert first.startswith("# Parameters of the dve_perception nodes")


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_the_committed_parameters_file_loads_as_the_default_configs(config_cls):
    assert load_parameters_yaml(CONFIG_FILE, config_cls) == config_cls()


def test_the_committed_parameters_file_holds_every_parameter_with_its_default():
    flat = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))["/**"]["ros__parameters"]
    flat.update({f"map.{k}": v for k, v in flat.pop("map").items()})

    specs = {s.name: s for c in CONFIGS for s in parameter_specs(c)}
    assert flat == {name: spec.default for name, spec in specs.items()}
    assert all(type(flat[name]) is type(spec.default) for name, spec in specs.items())


def test_an_override_file_for_the_map_and_backend_loads(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text(
        "/dve_perception/dve_perception:\n"
        "  ros__parameters:\n"
        "    backend: onnxruntime\n"
        "    onnx_path: x.onnx\n"
        "    device: cuda:0\n"
        "    map:\n"
        "      voxel_size_m: 0.1\n",
        encoding="utf-8",
    )

    nodes = ["/dve_perception/dve_perception"]
    perception = load_parameters_yaml(path, PerceptionNodeConfig, nodes)
    mapping = load_parameters_yaml(path, MappingNodeConfig, nodes)

    assert perception == PerceptionNodeConfig(
        backend="onnxruntime", onnx_path="x.onnx", device="cuda:0"
    )
    assert mapping.map == MapConfig(voxel_size_m=0.1)
    assert mapping.device == "cuda:0"


def test_a_map_setting_error_names_the_dotted_parameter():
    with pytest.raises(ConfigError, match=r"map.voxel_size_m must be a finite positive number"):
        config_from_parameters(MappingNodeConfig, {"map.voxel_size_m": 0.0})


def test_a_misspelt_parameter_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'map.voxel_size' \(did you mean 'map.voxel_size_m'"):
        config_from_parameters(MappingNodeConfig, {"map.voxel_size": 0.1})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"backend": "onnxruntime"}, r"'onnxruntime' needs onnx_path"),
        ({"fallback_backend": "onnxruntime"}, r"'onnxruntime' needs onnx_path"),
        ({"backend": "tensorrt"}, r"'tensorrt' needs engine_path"),
        ({"fallback_backend": "tensorrt"}, r"'tensorrt' needs engine_path"),
        ({"precision": "fp16"}, r"precision fp16 and cuda_graphs need a cuda device"),
        ({"cuda_graphs": True}, r"precision fp16 and cuda_graphs need a cuda device"),
        ({"backend": "jax"}, r"backend must be one of \['torch', 'onnxruntime', 'tensorrt'\]"),
        ({"variant": "half"}, r"variant must be one of"),
        ({"input_qos": "best_effort"}, r"input_qos must be one of"),
        ({"device": "gpu"}, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ({"device": "cuda:"}, r"device must be .* got 'cuda:'"),
        ({"qos_depth": 0}, r"qos_depth must be at least 1, got 0"),
        ({"sync_queue_size": 0}, r"sync_queue_size must be at least 1"),
        ({"embedding_height": 0}, r"embedding_height must be at least 1"),
        ({"embedding_width": -3}, r"embedding_width must be at least 1, got -3"),
        ({"sync_slop_s": 0.0}, r"sync_slop_s must be a positive number, got 0.0"),
        ({"embedding_rate_hz": -1.0}, r"embedding_rate_hz must be a finite number >= 0"),
        ({"warn_period_s": float("nan")}, r"warn_period_s must be a finite number >= 0"),
        ({"qos_depth": "5"}, r"qos_depth must be an int, got '5' \(str\)"),
        ({"publish_previews": 1}, r"publish_previews must be a bool, got 1 \(int\)"),
    ],
)
def test_invalid_perception_settings_are_rejected(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        PerceptionNodeConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"world_frame": ""}, r"world_frame must be a TF frame id .* got ''"),
        ({"world_frame": "/map"}, r"world_frame must be .* got '/map'"),
        ({"tf_timeout_s": -0.1}, r"tf_timeout_s must be a finite number >= 0, got -0.1"),
        ({"cloud_period_s": -1.0}, r"cloud_period_s must be a finite number >= 0"),
        ({"embedding_qos_depth": 0}, r"embedding_qos_depth must be at least 1"),
        ({"max_query_chars": 0}, r"max_query_chars must be at least 1"),
        ({"cloud_max_points": 0}, r"cloud_max_points must be at least 1"),
        ({"default_top_k": 0}, r"need 1 <= default_top_k <= max_top_k, got 0, 100"),
        ({"default_top_k": 11, "max_top_k": 10}, r"default_top_k <= max_top_k, got 11, 10"),
        ({"query_service": ""}, r"query_service must be a ROS name"),
        ({"query_service": "query text"}, r"query_service must be a ROS name .* 'query text'"),
        ({"query_service": "/a//b"}, r"query_service must be a ROS name"),
        ({"query_service": "/1query"}, r"query_service must be a ROS name"),
        ({"map_directory": ""}, r"map_directory must be a folder"),
        ({"default_map_name": "a/b.dvemap"}, r"default_map_name must be a file name"),
        ({"map": {"voxel_size_m": 0.1}}, r"map must be a MapConfig, got \{"),
        ({"device": "cuda:x"}, r"device must be"),
    ],
)
def test_invalid_mapping_settings_are_rejected(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        MappingNodeConfig(**kwargs)


@pytest.mark.parametrize("service", ["/query_text", "query_text", "~/query", "/ns/q_2"])
def test_valid_ros_names_are_accepted_for_the_query_service(service):
    assert MappingNodeConfig(query_service=service).query_service == service


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_valid_devices_are_accepted(device):
    assert PerceptionNodeConfig(device=device).device == device


def test_the_ros_adapters_use_only_declared_config_fields():
    names = {f.name for c in CONFIGS for f in dataclasses.fields(c)}
    used = set()
    for path in ROS_DIR.glob("*.py"):
        used |= set(re.findall(r"(?<![A-Za-z0-9])_?config\.(\w+)", path.read_text("utf-8")))

    assert used, "expected the ROS adapters to read config fields"
    assert used <= names, sorted(used - names)


def test_the_ros_parameter_adapter_imports_what_the_core_exports():
    tree = ast.parse((ROS_DIR / "params.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "dve_perception.settings.parameters"
        for alias in node.names
    }
    spec_attributes = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "spec"
    }
    types = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_TYPES"
    )

    assert imported and imported <= set(parameters.__all__)
    spec_fields = {f.name for f in dataclasses.fields(parameters.ParameterSpec)}
    assert spec_attributes and spec_attributes <= spec_fields
    assert {key.value for key in types.keys} == set(parameters.PARAMETER_TYPES)
