"""benchmarks/gpu_check.py, the one command a borrowed GPU machine runs, checked here on the CPU.

The GPU machine is lent for minutes at a time, so its first run must not fail on a typo: the dry
run executes every step of the real run (same scripts, same flags but the device and sizes) and
the report, and the pieces that only the real run reaches (wheel installation, timeouts, failed
steps) are exercised one by one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

pytestmark = pytest.mark.skipif(
    not (BENCHMARKS / "gpu_check.py").is_file(), reason="needs the repository's benchmarks/"
)


def _state(pid: int) -> str:
    """The process state letter from /proc (Z: a zombie, already dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check")


@pytest.mark.slow
def test_dry_run_runs_every_step_and_reports_the_verdicts(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "run", "--dry-run", "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = (out / "gpu_check_report.md").read_text(encoding="utf-8")
    assert report in result.stdout  # printed at the end as well: the device returns the tail
    assert "torch sees no CUDA device (dry run on the CPU)" in report
    for step, log in [
        ("gpu tests", "gpu_tests.log"),
        ("inference benchmark", "bench_inference.log"),
        ("map benchmark", "bench_mapping.log"),
    ]:
        assert f"| {step}" in report and (out / log).stat().st_size > 0
    steps = report.split("## Steps")[1].split("## Verdicts")[0]
    assert steps.count("| ok ") == 3, steps
    verdicts = report.split("## Verdicts")[1]
    # One row from each source of verdicts: pytest's XML and both benchmarks' JSON files.
    assert "| gpu tests " in verdicts and "skipped" in verdicts
    assert "reducedres: end to end vs bare inference" in verdicts
    assert "integrate 120x160 channels-last (cpu)" in verdicts
    assert "query 20,000 voxels, float16, 20,000 changed (cpu)" in verdicts
    assert "| reported" in verdicts  # below 1M voxels the 50 ms target is not judged


def test_test_rows_count_pytest_results_and_name_each_failure(gpu_check, tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.skip(reason='no')\ndef test_skipped():\n    pass\n"
    )
    xml = tmp_path / "results.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(xml)],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    rows = gpu_check.test_rows(xml)
    assert rows[0] == ("gpu tests", "1 passed, 1 failed, 0 errors, 1 skipped", "all pass", "MISS")
    assert rows[1][0].endswith("test_sample::test_bad") and rows[1][3] == "MISS"
    assert len(rows) == 2
    assert gpu_check.test_rows(tmp_path / "missing.xml")[0][1] == "no results"


def test_benchmark_rows_read_what_the_benchmarks_write(gpu_check, tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        verdicts_module = _load("_verdicts")
    finally:
        sys.path.remove(str(BENCHMARKS))
    verdicts = verdicts_module.Verdicts()
    verdicts.add("fp16 speed-up", 2.5, "x", ">= 2x", True)
    verdicts.add("query", 71.0, "ms", "<= 50 ms", False)
    verdicts.add("small query", 3.0, "ms", "<= 50 ms at 1M voxels", None)
    verdicts.write(tmp_path / "v.json", "bench")
    assert gpu_check.benchmark_rows(tmp_path / "v.json") == [
        ("fp16 speed-up", "2.5 x", ">= 2x", "met"),
        ("query", "71 ms", "<= 50 ms", "MISS"),
        ("small query", "3 ms", "<= 50 ms at 1M voxels", "reported"),
    ]
    assert gpu_check.benchmark_rows(tmp_path / "none.json")[0][1] == "no verdicts written"


def test_a_step_past_its_timeout_or_the_budget_is_reported_and_the_run_goes_on(gpu_check, tmp_path):
    # The step starts a child of its own (as the benchmarks start their cases): both must go.
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    sleeper = [sys.executable, "-c", script]
    step = gpu_check.Step("sleep", sleeper, tmp_path, 2.0, "sleep.log")
    outcome = gpu_check.run_step(step, tmp_path, gpu_check.step_env(None), seconds_left=100)
    assert outcome.status == "timed out after 2 s" and outcome.returncode is None
    assert outcome.seconds < 10
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)  # gone (or a zombie)
    late = gpu_check.run_step(step, tmp_path, gpu_check.step_env(None), seconds_left=5)
    assert late.status == "not run: 5 s of the budget left"


def test_a_failing_step_fails_the_run_and_its_log_ends_the_report(gpu_check, tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('boom happened'); sys.exit(3)"]
    passing = [sys.executable, "-c", "print('fine')"]
    steps = [
        gpu_check.Step("first", failing, tmp_path, 30, "first.log"),
        gpu_check.Step("second", passing, tmp_path, 30, "second.log"),
    ]
    monkeypatch.setattr(gpu_check, "build_steps", lambda work, dry_run: steps)
    monkeypatch.setattr(gpu_check, "machine_lines", lambda dry_run: ["a test machine"])
    assert gpu_check.run(tmp_path / "out", tmp_path, dry_run=True, budget_s=60) == 1
    report = (tmp_path / "out" / "gpu_check_report.md").read_text(encoding="utf-8")
    assert "| first  | failed (exit 3) |" in report
    assert "| second | ok" in report  # the run went on after the failure
    assert "## Last lines of first.log" in report and "boom happened" in report


def test_the_real_run_refuses_to_start_without_prepared_wheels(gpu_check, tmp_path):
    with pytest.raises(SystemExit, match="gpu_check.py prepare"):
        gpu_check.install_wheels(tmp_path / "no_wheels", tmp_path / "site")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "manifest.json").write_text('{"requirements": [], "wheels": ["lz4-1-x.whl"]}')
    with pytest.raises(SystemExit, match="missing: lz4-1-x.whl"):
        gpu_check.install_wheels(wheels, tmp_path / "site")


def test_prepare_pins_this_environments_versions_for_cpython_312(gpu_check):
    from importlib.metadata import version

    pins = gpu_check.pinned_requirements(("rosbags", "lz4"))
    assert pins == [f"rosbags=={version('rosbags')}", f"lz4=={version('lz4')}"]
    with pytest.raises(SystemExit, match="not-a-package is not installed"):
        gpu_check.pinned_requirements(("not-a-package",))
    command = gpu_check.download_command("lz4==4.4.5", Path("/w"))
    assert command[-1] == "lz4==4.4.5"
    for flag in ("--no-deps", "--only-binary=:all:", "manylinux_2_17_x86_64"):
        assert flag in command
    assert command[command.index("--python-version") + 1] == "3.12"


def test_steps_use_cuda_for_real_and_the_cpu_in_a_dry_run(gpu_check, tmp_path):
    real = {s.name: s.argv for s in gpu_check.build_steps(tmp_path, dry_run=False)}
    dry = {s.name: s.argv for s in gpu_check.build_steps(tmp_path, dry_run=True)}
    assert real.keys() == dry.keys() == {"gpu tests", "inference benchmark", "map benchmark"}
    for name in ("inference benchmark", "map benchmark"):
        assert real[name][real[name].index("--device") + 1] == "cuda"
        assert dry[name][dry[name].index("--device") + 1] == "cpu"
    assert "1000000" in real["map benchmark"]
    assert real["gpu tests"] == dry["gpu tests"]
