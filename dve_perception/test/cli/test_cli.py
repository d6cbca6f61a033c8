"""The `dve-perception` command line: export-onnx end to end, sample options, errors as one line.

The CLI builds only the published variants, so the end-to-end export runs the real reduced-res
model (marked `slow`) at a small size; the other tests stop before or replace the export.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dve_perception.cli import export as cli_export
from dve_perception.cli import main as cli
from dve_perception.model.checkpoint import read_checkpoint_file
from dve_perception.perception.backends import onnx_export
from dve_perception.perception.backends.fused_outputs import OUTPUT_NAME, FusedOutputs
from dve_perception.perception.backends.onnx_export import read_export_metadata


def warnings_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.slow
def test_export_onnx_with_generated_weights_warns_and_checks(tmp_path, capsys, caplog):
    out = tmp_path / "reducedres.onnx"
    argv = ["export-onnx", "--variant", "reducedres", "--height", "64", "--width", "96"]
    code = cli.main([*argv, "--output", str(out), "--check"])

    assert code == 0
    assert cli_export.GENERATED_WEIGHTS_WARNING in warnings_logged(caplog)
    assert "pass --weights with a published checkpoint" in cli_export.GENERATED_WEIGHTS_WARNING
    match = re.search(r"onnxruntime vs PyTorch relative L2 error: (\S+)", capsys.readouterr().out)
    assert match and float(match.group(1)) < 1e-4
    metadata = read_export_metadata(out)
    assert (metadata.variant, metadata.height, metadata.width) == ("reducedres", 64, 96)
    assert (metadata.output_stride, metadata.embedding_dim, metadata.normalized) == (4, 768, False)


def test_export_onnx_loads_weights_and_passes_the_options(
    monkeypatch, tmp_path, caplog, reducedres_checkpoint
):
    exported = {}

    def fake_export(model, path, **kwargs):
        exported.update(model=model, path=path, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    out = tmp_path / "m.onnx"
    argv = ["export-onnx", "--variant", "reducedres", "--weights", str(reducedres_checkpoint)]
    options = ["--opset", "19", "--normalize", "--dynamo", "--height", "96", "--width", "128"]
    assert cli.main([*argv, "--output", str(out), *options, "--trust-checkpoint"]) == 0

    logged = warnings_logged(caplog)
    assert not any("generated weights" in message for message in logged)
    assert any("trusted=True" in message for message in logged)  # --trust-checkpoint reached it
    assert (exported["path"], exported["height"], exported["width"]) == (out, 96, 128)
    assert (exported["opset"], exported["dynamo"]) == (19, True)
    assert exported["fused"] == FusedOutputs(normalize=True)
    assert (exported["prototypes"], exported["class_names"]) == (None, [])
    # The fixture holds seed-1 values, so this catches weights not loaded at all (random init).
    state = read_checkpoint_file(reducedres_checkpoint)["state_dict"]
    key = "decoders.dense_visual_embedding_decoder._task_head.conv.weight"
    assert torch.equal(exported["model"].state_dict()[key], state[key])


def test_export_onnx_defaults_and_failing_check(monkeypatch, tmp_path, capsys):
    exported = {}
    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, **kw: exported.update(kw))
    monkeypatch.setattr(
        onnx_export, "compare_with_onnxruntime", lambda model, path, prototypes: {OUTPUT_NAME: 0.25}
    )
    argv = ["export-onnx", "--variant", "reducedres", "--output", str(tmp_path / "m.onnx")]
    assert cli.main([*argv, "--check"]) == 1
    assert f"relative L2 error: 0.25 ({OUTPUT_NAME})" in capsys.readouterr().out
    assert exported == dict(
        height=480,
        width=640,
        opset=20,
        dynamo=False,
        fused=FusedOutputs(),
        prototypes=None,
        class_names=[],
    )


class FakeTextEncoder:
    def encode(self, names):
        return torch.arange(len(names) * 768, dtype=torch.float32).reshape(len(names), 768)


def test_export_onnx_fuses_the_chosen_outputs_with_text_prototypes(monkeypatch, tmp_path, caplog):
    import dve_perception.installed.models_folder as installed_models

    exported, resolved = {}, {}
    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, **kw: exported.update(kw))
    monkeypatch.setattr(cli_export, "_load_model", lambda *args: "the model")

    def fake_resolve(text_model, models_dir):
        resolved.update(text_model=text_model)
        return FakeTextEncoder(), "random-tower", False

    monkeypatch.setattr(installed_models, "resolve_text_encoder", fake_resolve)
    argv = ["export-onnx", "--variant", "reducedres", "--output", str(tmp_path / "m.onnx")]
    fused = ["--normalize", "--half", "--vocabulary", "wall, floor,chair", "--argmax"]
    more = ["--publish-size", "60X80", "--text-model", str(tmp_path / "clip")]
    assert cli.main([*argv, *fused, *more]) == 0

    assert exported["fused"] == FusedOutputs(
        normalize=True, half=True, num_classes=3, argmax=True, publish_size=(60, 80)
    )
    assert exported["class_names"] == ["wall", "floor", "chair"]
    assert torch.equal(exported["prototypes"], FakeTextEncoder().encode(["a", "b", "c"]))
    assert resolved == {"text_model": tmp_path / "clip"}
    assert any("random text tower" in message for message in warnings_logged(caplog))


@pytest.mark.parametrize(
    ("errors", "code"),
    [
        ({OUTPUT_NAME: 1.5e-3, "class_scores": 5e-5, "class_labels": 0.0}, 0),
        ({OUTPUT_NAME: 2.5e-3, "class_scores": 5e-5, "class_labels": 0.0}, 1),
        ({OUTPUT_NAME: 1e-4, "class_scores": 2e-4, "class_labels": 0.0}, 1),
        ({OUTPUT_NAME: 1e-4, "class_scores": 5e-5, "class_labels": 0.01}, 1),
    ],
)
def test_export_onnx_check_applies_each_outputs_tolerance(
    monkeypatch, tmp_path, capsys, errors, code
):
    import dve_perception.installed.models_folder as installed_models

    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, **kw: None)
    monkeypatch.setattr(onnx_export, "compare_with_onnxruntime", lambda *a, **kw: errors)
    monkeypatch.setattr(cli_export, "_load_model", lambda *args: "the model")
    monkeypatch.setattr(
        installed_models, "resolve_text_encoder", lambda *a: (FakeTextEncoder(), "clip", True)
    )
    argv = ["export-onnx", "--variant", "reducedres", "--output", str(tmp_path / "m.onnx")]
    fused = ["--normalize", "--half", "--vocabulary", "a,b", "--argmax", "--check"]
    assert cli.main([*argv, *fused]) == code
    out = capsys.readouterr().out
    assert f"relative L2 error: {errors[OUTPUT_NAME]:.3g} ({OUTPUT_NAME})" in out
    assert f"labels differing at clear pixels: {errors['class_labels']:.3g}" in out


def test_cli_check_tolerances_are_the_libraries():
    assert cli_export.CHECK_TOLERANCE == onnx_export.FP32_TOLERANCE
    assert cli_export.FP16_CHECK_TOLERANCE == onnx_export.FP16_TOLERANCE


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("missing.pth", r"checkpoint file .*missing\.pth does not exist"),
        ("garbage.pth", r"garbage\.pth is not a readable torch checkpoint"),
    ],
)
def test_export_onnx_with_bad_weights_exits_2_with_one_line(tmp_path, capsys, weights, message):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    argv = ["export-onnx", "--variant", "fullres", "--weights", str(tmp_path / weights)]
    code = cli.main([*argv, "--output", str(tmp_path / "m.onnx")])

    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.match(r"dve-perception export-onnx: error: .*" + message, err)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--height", "100"], "height must be a positive multiple of 32, got 100"),
        (["--width", "650"], "width must be a positive multiple of 32, got 650"),
        (["--trust-checkpoint"], "--trust-checkpoint applies to --weights"),
        (["--half"], "half (--half) needs normalize (--normalize)"),
        (["--argmax"], "argmax (--argmax) needs class prototypes (num_classes > 0, --vocabulary)"),
        (["--publish-size", "7x9"], "publish size 7x9 must divide the 480x640 embedding"),
        (["--text-model", "clip"], "--text-model applies to --vocabulary, which was not given"),
        (["--vocabulary", "a,b,a"], "vocabulary 'a,b,a' repeats class names"),
    ],
)
def test_export_onnx_rejects_bad_options_before_building_the_model(
    monkeypatch, tmp_path, capsys, extra, message
):
    def no_build(*args):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(cli_export, "_load_model", no_build)
    argv = ["export-onnx", "--variant", "fullres", "--output", str(tmp_path / "m.onnx")]
    assert cli.main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_installed_command_reports_errors_without_a_traceback(tmp_path):
    argv = ["export-onnx", "--variant", "fullres", "--weights", str(tmp_path / "missing.pth")]
    result = subprocess.run(
        [sys.executable, "-m", "dve_perception.cli", *argv, "--output", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    missing = tmp_path / "missing.pth"
    assert result.stderr.splitlines() == [
        f"dve-perception export-onnx: error: checkpoint file {missing} does not exist"
    ]


def test_console_script_points_at_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "dve-perception"] == [
        "dve_perception.cli.main:main"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["export-onnx"],
        ["export-onnx", "--variant", "tiny"],
        ["export-onnx", "--variant", "fullres", "--output", "m.onnx", "--publish-size", "0x4"],
        ["export-onnx", "--variant", "fullres", "--output", "m.onnx", "--publish-size", "60"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: dve-perception" in capsys.readouterr().err


def test_sample_passes_options_and_lists_the_written_files(monkeypatch, tmp_path, capsys, caplog):
    import dve_perception.cli.sample as sample

    seen = {}

    def fake_run_sample(out, **kwargs):
        seen.update(kwargs, out=out)
        files = (Path(out) / "embedding_pca.png",)
        return sample.SampleResult(Path(out), files, meaningful=False, summary={})

    monkeypatch.setattr(sample, "run_sample", fake_run_sample)
    argv = ["sample", "--out", str(tmp_path), "--variant", "fullres", "--vocabulary", "a,b"]
    assert cli.main(argv) == 0
    assert seen["variant"] == "fullres" and seen["vocabulary"] == "a,b"
    assert seen["out"] == tmp_path and seen["weights"] is None and seen["device"] == "cpu"
    assert capsys.readouterr().out.strip() == str(tmp_path / "embedding_pca.png")
    assert "carry no meaning" in caplog.text


def test_sample_with_missing_image_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["sample", "--out", str(tmp_path), "--rgb", str(tmp_path / "none.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.png does not exist" in err[0]
