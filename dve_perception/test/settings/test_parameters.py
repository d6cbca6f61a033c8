"""Config dataclasses as dotted ROS parameters: specs, building back, YAML out and in."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pytest
import yaml

from dve_perception.errors import ConfigError
from dve_perception.settings.parameters import (
    ParameterSpec,
    config_from_parameters,
    load_parameters_yaml,
    parameter_specs,
    render_parameters_yaml,
    validate_config_fields,
)


def _doc(text, choices=None):
    return {"description": text} if choices is None else {"description": text, "choices": choices}


@dataclass(frozen=True)
class Inner:
    size_m: float = field(default=0.5, metadata=_doc("edge length"))
    count: int = field(default=3, metadata=_doc("how many"))

    def __post_init__(self):
        if self.size_m <= 0:
            raise ConfigError(f"size_m must be positive, got {self.size_m}")


@dataclass(frozen=True)
class Outer:
    name: str = field(default="robot", metadata=_doc("a name"))
    enabled: bool = field(default=True, metadata=_doc("on or off"))
    rate_hz: float = field(default=5, metadata=_doc("declared float, default written as int"))
    mode: str = field(default="fast", metadata=_doc("speed", ("fast", "slow")))
    inner: Inner = field(default_factory=Inner, metadata=_doc("nested settings"))
    depth: int = field(default=2, metadata=_doc("queue depth"))

    def __post_init__(self):
        validate_config_fields(self)


@dataclass(frozen=True)
class Other:
    name: str = field(default="robot", metadata=_doc("a name (shared)"))
    tiny: float = field(default=1e-5, metadata=_doc("a small number"))
    label: str = field(default="true", metadata=_doc("looks like a bool"))


def test_specs_walk_fields_in_order_with_dotted_names_for_nested_configs():
    names = [spec.name for spec in parameter_specs(Outer)]

    assert names == ["name", "enabled", "rate_hz", "mode", "inner.size_m", "inner.count", "depth"]


def test_spec_types_come_from_the_declared_types_with_bool_kept_apart_from_int():
    specs = {spec.name: spec for spec in parameter_specs(Outer)}

    assert specs["name"].type == "string"
    assert specs["enabled"].type == "bool"
    assert specs["depth"].type == "int"
    assert specs["inner.size_m"].type == "double"
    assert specs["rate_hz"] == ParameterSpec(
        "rate_hz", 5.0, "double", "declared float, default written as int"
    )
    assert isinstance(specs["rate_hz"].default, float)


def test_specs_carry_choices_only_where_declared():
    specs = {spec.name: spec for spec in parameter_specs(Outer)}

    assert specs["mode"].choices == ("fast", "slow")
    assert specs["name"].choices is None


def test_specs_prefix_is_prepended_to_every_name():
    assert [s.name for s in parameter_specs(Inner, prefix="a.b.")] == ["a.b.size_m", "a.b.count"]


def test_a_field_without_description_is_a_programming_error():
    @dataclass(frozen=True)
    class Undocumented:
        value: int = 1

    with pytest.raises(TypeError, match=r"Undocumented.value has no metadata"):
        parameter_specs(Undocumented)


def test_a_field_without_default_is_a_programming_error():
    @dataclass(frozen=True)
    class NoDefault:
        value: int = field(metadata=_doc("x"))

    with pytest.raises(TypeError, match=r"NoDefault.value has no default"):
        parameter_specs(NoDefault)


def test_a_field_of_unsupported_type_is_a_programming_error():
    @dataclass(frozen=True)
    class Listy:
        values: list = field(default_factory=list, metadata=_doc("x"))

    with pytest.raises(TypeError, match=r"Listy.values: unsupported type"):
        parameter_specs(Listy)


def test_a_default_outside_its_choices_is_a_programming_error():
    @dataclass(frozen=True)
    class BadChoice:
        mode: str = field(default="medium", metadata=_doc("x", ("fast", "slow")))

    with pytest.raises(TypeError, match=r"BadChoice.mode: default 'medium' is not one of"):
        parameter_specs(BadChoice)


def test_specs_of_a_non_dataclass_is_a_programming_error():
    with pytest.raises(TypeError, match=r"expected a config dataclass"):
        parameter_specs(dict)


def test_config_from_no_parameters_is_the_default_config():
    assert config_from_parameters(Outer, {}) == Outer()


def test_config_from_the_specs_defaults_is_the_default_config():
    values = {spec.name: spec.default for spec in parameter_specs(Outer)}

    assert config_from_parameters(Outer, values) == Outer()


def test_dotted_names_set_nested_fields_and_others_keep_defaults():
    config = config_from_parameters(Outer, {"inner.count": 7, "name": "rover"})

    assert config == Outer(name="rover", inner=Inner(count=7))


def test_an_int_is_accepted_for_a_double_and_stored_as_float():
    config = config_from_parameters(Outer, {"inner.size_m": 2})

    assert config.inner.size_m == 2.0
    assert isinstance(config.inner.size_m, float)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("inner.size_m", "0.5", r"parameter 'inner.size_m' must be a double, got '0.5' \(str\)"),
        ("depth", 2.0, r"parameter 'depth' must be an int, got 2.0 \(float\)"),
        ("depth", True, r"parameter 'depth' must be an int, got True \(bool\)"),
        ("enabled", 1, r"parameter 'enabled' must be a bool, got 1 \(int\)"),
        ("inner.size_m", False, r"parameter 'inner.size_m' must be a double, got False"),
        ("name", 5, r"parameter 'name' must be a string, got 5 \(int\)"),
    ],
)
def test_a_value_of_the_wrong_type_is_rejected_naming_parameter_value_and_type(
    name, value, expected
):
    with pytest.raises(ConfigError, match=expected):
        config_from_parameters(Outer, {name: value})


def test_unknown_names_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'inner.sizem' \(did you mean 'inner.size_m'\?\)"):
        config_from_parameters(Outer, {"inner.sizem": 1.0, "name": "x"})


def test_unknown_names_are_all_listed():
    with pytest.raises(ConfigError, match=r"Outer: 'bogus', 'zzz'.*expected names among: name,"):
        config_from_parameters(Outer, {"zzz": 1, "bogus": 2})


def test_a_value_outside_its_choices_is_rejected():
    with pytest.raises(ConfigError, match=r"'mode' must be one of \['fast', 'slow'\], got 'turbo'"):
        config_from_parameters(Outer, {"mode": "turbo"})


def test_a_nested_config_error_names_the_dotted_parameter():
    with pytest.raises(ConfigError, match=r"^inner.size_m must be positive, got -1.0$"):
        config_from_parameters(Outer, {"inner.size_m": -1})


def test_validate_config_fields_checks_a_config_built_in_python():
    with pytest.raises(ConfigError, match=r"^depth must be an int, got '2' \(str\)"):
        Outer(depth="2")
    with pytest.raises(ConfigError, match=r"^mode must be one of"):
        Outer(mode="turbo")
    with pytest.raises(ConfigError, match=r"^inner must be a Inner, got None"):
        Outer(inner=None)


def test_rendered_yaml_parses_to_the_ros_parameters_form_with_nested_groups():
    data = yaml.safe_load(render_parameters_yaml([Outer]))

    assert data == {
        "/**": {
            "ros__parameters": {
                "name": "robot",
                "enabled": True,
                "rate_hz": 5.0,
                "mode": "fast",
                "inner": {"size_m": 0.5, "count": 3},
                "depth": 2,
            }
        }
    }
    assert isinstance(data["/**"]["ros__parameters"]["rate_hz"], float)


def test_rendered_yaml_documents_each_parameter_just_above_it():
    lines = render_parameters_yaml([Outer], header="first\nsecond").splitlines()

    assert lines[:4] == ["# first", "# second", "/**:", "  ros__parameters:"]
    mode = lines.index('    mode: "fast"')
    assert lines[mode - 2 : mode] == ["    # speed", '    # choices: "fast", "slow"']
    group = lines.index("    inner:")
    assert lines[group - 1] == "    # nested settings"
    assert lines[group + 1 : group + 3] == ["      # edge length", "      size_m: 0.5"]


def test_rendered_yaml_keeps_value_types_that_yaml_would_otherwise_change():
    data = yaml.safe_load(render_parameters_yaml([Other], node="/ns/node"))

    assert data == {
        "/ns/node": {"ros__parameters": {"name": "robot", "tiny": 1e-5, "label": "true"}}
    }


def test_rendered_yaml_writes_a_shared_name_once():
    text = render_parameters_yaml([Outer, Other])

    assert text.count("name:") == 1
    assert list(yaml.safe_load(text)["/**"]["ros__parameters"])[-2:] == ["tiny", "label"]


def test_rendering_two_classes_that_declare_one_name_differently_is_an_error():
    @dataclass(frozen=True)
    class Clash:
        depth: int = field(default=4, metadata=_doc("queue depth"))

    @dataclass(frozen=True)
    class TypeClash:
        depth: float = field(default=2.0, metadata=_doc("queue depth"))

    with pytest.raises(TypeError, match=r"'depth' is declared twice differently"):
        render_parameters_yaml([Outer, Clash])
    with pytest.raises(TypeError, match=r"'depth' is declared twice differently"):
        render_parameters_yaml([Outer, TypeClash])


def test_rendering_a_name_that_is_both_a_parameter_and_a_group_is_an_error():
    @dataclass(frozen=True)
    class Flat:
        inner: str = field(default="x", metadata=_doc("not a group here"))

    with pytest.raises(TypeError, match=r"'inner' is both a parameter and a group"):
        render_parameters_yaml([Outer, Flat])


def _write(tmp_path, text, name="params.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_rendered_file_loads_back_to_the_default_config(tmp_path):
    path = _write(tmp_path, render_parameters_yaml([Outer, Other]))

    assert load_parameters_yaml(path, Outer) == Outer()
    assert load_parameters_yaml(path, Other) == Other()


def test_loading_reads_nested_values_and_ints_for_doubles(tmp_path):
    path = _write(
        tmp_path,
        """\
        /**:
          ros__parameters:
            rate_hz: 10
            inner:
              size_m: 1e-3
            use_sim_time: true
        """,
    )

    config = load_parameters_yaml(path, Outer)

    assert config == Outer(rate_hz=10.0, inner=Inner(size_m=0.001))


def test_loading_takes_the_first_node_name_present(tmp_path):
    path = _write(
        tmp_path,
        """\
        /**:
          ros__parameters:
            depth: 1
        /robot/outer:
          ros__parameters:
            depth: 2
        other_ns:
          nested_node:
            ros__parameters:
              depth: 3
        """,
    )

    assert load_parameters_yaml(path, Outer).depth == 1
    assert load_parameters_yaml(path, Outer, ["/robot/outer", "/**"]).depth == 2
    assert load_parameters_yaml(path, Outer, ["outer"]).depth == 2
    assert load_parameters_yaml(path, Outer, ["/other_ns/nested_node"]).depth == 3


def test_loading_for_a_node_the_file_does_not_have_is_an_error(tmp_path):
    path = _write(tmp_path, "/a/b:\n  ros__parameters:\n    depth: 1\n")

    with pytest.raises(ConfigError, match=r"no ros__parameters for node \['/\*\*'\].*'/a/b'"):
        load_parameters_yaml(path, Outer)


def test_loading_with_ignore_unknown_false_rejects_foreign_names(tmp_path):
    path = _write(tmp_path, "/**:\n  ros__parameters:\n    depth: 1\n    tiny: 0.5\n")

    with pytest.raises(ConfigError, match=r"params.yaml: unknown parameter\(s\) for Outer: 'tiny'"):
        load_parameters_yaml(path, Outer, ignore_unknown=False)


def test_loading_an_invalid_value_names_the_file_and_the_parameter(tmp_path):
    path = _write(tmp_path, "/**:\n  ros__parameters:\n    inner:\n      count: many\n")

    with pytest.raises(ConfigError, match=r"params.yaml: parameter 'inner.count' must be an int"):
        load_parameters_yaml(path, Outer)


def test_loading_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"parameters file .*nope.yaml does not exist"):
        load_parameters_yaml(tmp_path / "nope.yaml", Outer)


def test_loading_malformed_yaml_reports_the_line(tmp_path):
    path = _write(tmp_path, "/**:\n  ros__parameters:\n    depth: [1, 2\n    name: x\n")

    with pytest.raises(ConfigError, match=r"params.yaml is not valid YAML at line 4"):
        load_parameters_yaml(path, Outer)


@pytest.mark.parametrize(
    "text", ["depth: 1\n", "", "- a\n- b\n", "/**:\n  parameters:\n    depth: 1\n"]
)
def test_loading_a_file_without_ros_parameters_is_an_error(tmp_path, text):
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError, match=r"params.yaml: no ros__parameters section"):
        load_parameters_yaml(path, Outer)


def test_loading_ros_parameters_that_are_not_a_mapping_is_an_error(tmp_path):
    path = _write(tmp_path, "/**:\n  ros__parameters: 5\n")

    with pytest.raises(ConfigError, match=r"ros__parameters of '/\*\*' must be a mapping"):
        load_parameters_yaml(path, Outer)
