#!/usr/bin/env python3
"""Check the GPU paths on a borrowed GPU machine: gpu tests and CUDA benchmarks, one report.

The lent machine (an H100 or H200 with torch and CUDA, Python 3.12, no network, no TensorRT) runs
commands for a few minutes at a time and sends back one output folder. This script makes that a
single call, prepared here:

    python benchmarks/gpu_check.py prepare          # here: wheels the GPU machine lacks
    python3 benchmarks/gpu_check.py run --out DIR   # there: install, test, benchmark, report
    python benchmarks/gpu_check.py run --out DIR --dry-run   # here, on the CPU (a test runs it)

`prepare` downloads, for CPython 3.12 on x86-64 Linux, the wheels of our dependencies that the
GPU machine's image does not hold (rosbags and its compression/SQLite libraries, pytransform3d), at
the versions installed in this environment, into `.gpu_wheels/` (git-ignored; the device call
carries it). `run` prints the machine (GPU, driver, torch, CUDA), installs those wheels into a
folder of their own with `--no-deps` (the machine's torch, numpy and transformers stay as they
are), puts our package's source folder on PYTHONPATH, and runs within a time budget:

1. the `gpu`-marked tests (torch CUDA fp32/fp16/CUDA graphs conformance, pre- and postprocessing
   on CUDA, the map on CUDA tensors with the `_int_mm` scoring);
2. `bench_inference.py --device cuda --quick`: fp32 eager, fp16, fp16 + CUDA graphs, fused
   outputs, and end to end vs bare inference (targets: fp16 >= 2x fp32 eager, end to end
   <= 1.15x bare);
3. `bench_mapping.py --device cuda --quick --sections 1 2 --map-sizes 1000000`: integration and
   the 1M-voxel query on CUDA (targets: 120x160 frame <= 20 ms, query <= 50 ms).

It writes `gpu_check_report.md` and one log per step into DIR and ends with the verdict table. The
exit code is 0 when every step ran to the end (a missed target is a finding, not a crash), else 1.
`--dry-run` runs the same steps here on the CPU with tiny settings and without installing
anything, so that the first real run does not fail on a typo.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "dve_perception"
SOURCE_DIR = PACKAGE_DIR / "src"
WHEELS_DIR = REPO / ".gpu_wheels"
MANIFEST = "manifest.json"
REPORT = "gpu_check_report.md"

#: Our dependencies (with theirs) that the GPU machine's image lacks; everything else the suite
#: imports there (torch, numpy, transformers, onnx, onnxruntime, safetensors, pillow, pyyaml,
#: matplotlib, tqdm, scipy, lxml, pytest) comes with the image (device/KINDS.md lists it).
MISSING_THERE = ("rosbags", "apsw", "backports.zstd", "lz4", "ruamel.yaml", "pytransform3d")
TARGET_PYTHON = "3.12"
#: manylinux tags pip must name one by one (it matches them exactly, not "this glibc or older").
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: Whole run, so that one attempt (the device allows 10 minutes a command) leaves time for another.
DEFAULT_BUDGET_S = 450.0


# --- prepare (here) --------------------------------------------------------------------------


def pinned_requirements(names: tuple[str, ...] = MISSING_THERE) -> list[str]:
    """`name==version` of each package as installed here, so both machines run the same code."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"gpu_check prepare: {name} is not installed in this Python ({sys.executable}); "
                "run it with the project's environment (pip install -e 'dve_perception[test]')"
            ) from None
    return pins


def download_command(requirement: str, dest: Path) -> list[str]:
    """The pip command that fetches one wheel for the GPU machine's CPython 3.12 on x86-64."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", TARGET_PYTHON, "--implementation", "cp"]
    for tag in PLATFORMS:
        command += ["--platform", tag]
    return [*command, "--dest", str(dest), "--quiet", requirement]


def prepare(wheels_dir: Path) -> int:
    """Download the wheels into a fresh folder, then replace `wheels_dir` with it."""
    pins = pinned_requirements()
    wheels_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gpu_wheels.", dir=wheels_dir.parent))
    try:
        for pin in pins:
            print(f"downloading {pin} for CPython {TARGET_PYTHON} x86-64", flush=True)
            subprocess.run(download_command(pin, staging), check=True)
        files = sorted(p.name for p in staging.glob("*.whl"))
        manifest = {"python": TARGET_PYTHON, "requirements": pins, "wheels": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        # Only now that every download worked does the old folder go (no stale versions stay).
        shutil.rmtree(wheels_dir, ignore_errors=True)
        staging.rename(wheels_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in wheels_dir.iterdir()) / 2**20
    print(f"{len(files)} wheels, {size_mb:.1f} MiB in {wheels_dir}:")
    for name in files:
        print(f"  {name}")
    return 0


# --- run (there, or here with --dry-run) -----------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command of the check, with its log and (for benchmarks) its verdicts file."""

    name: str
    argv: list[str]
    cwd: Path
    timeout_s: float
    log: str
    verdicts: Path | None = None
    junit: Path | None = None


@dataclass
class Outcome:
    """How a step ended."""

    step: Step
    returncode: int | None  # None: not run (no time left) or timed out
    seconds: float
    status: str  # "ok", "failed (exit N)", "timed out after N s", "not run: ..."
    verdict_rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def build_steps(work: Path, dry_run: bool) -> list[Step]:
    """The three steps; --dry-run swaps CUDA for the CPU and real sizes for tiny ones."""
    python = sys.executable
    device = "cpu" if dry_run else "cuda"
    tests = [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs"]
    tests += ["--continue-on-collection-errors", "--junitxml", str(work / "gpu_tests.xml")]
    inference = [python, str(REPO / "benchmarks" / "bench_inference.py"), "--device", device]
    inference += ["--quick", "--verdicts", str(work / "bench_inference.json")]
    mapping = [python, str(REPO / "benchmarks" / "bench_mapping.py"), "--device", device]
    mapping += ["--quick", "--sections", "1", "2", "--verdicts", str(work / "bench_mapping.json")]
    if dry_run:
        inference += ["--repeats", "1"]
        # Small enough to keep the suite's memory low: 8 maps keep a workspace per pixel.
        mapping += ["--map-sizes", "20000", "--large-size", "96", "128", "2", "--repeats", "1"]
    else:
        mapping += ["--map-sizes", "1000000"]
    return [
        Step("gpu tests", tests, PACKAGE_DIR, 180, "gpu_tests.log", junit=work / "gpu_tests.xml"),
        Step(
            "inference benchmark",
            inference,
            REPO,
            150,
            "bench_inference.log",
            verdicts=work / "bench_inference.json",
        ),
        Step(
            "map benchmark",
            mapping,
            REPO,
            120,
            "bench_mapping.log",
            verdicts=work / "bench_mapping.json",
        ),
    ]


def machine_lines(dry_run: bool) -> list[str]:
    """What the machine is: GPU, driver, torch, CUDA (or the CPU, in a dry run)."""
    lines = [
        f"python {platform.python_version()} ({sys.executable}), {platform.platform()}, "
        f"{os.cpu_count()} logical CPUs"
    ]
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        result = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        lines.append(f"nvidia-smi: {result.stdout.strip() or result.stderr.strip()}")
    else:
        lines.append("nvidia-smi: not found")
    try:
        import torch
    except ImportError as err:
        return [*lines, f"torch: not importable ({err})"]
    lines.append(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}"
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"GPU 0: {props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB"
        )
    else:
        lines.append("torch sees no CUDA device" + (" (dry run on the CPU)" if dry_run else ""))
    return lines


def install_wheels(wheels_dir: Path, site: Path) -> list[str]:
    """pip-install the prepared wheels into `site` with --no-deps; returns what was installed."""
    manifest_path = wheels_dir / MANIFEST
    if not manifest_path.is_file():
        raise SystemExit(
            f"gpu_check run: no {manifest_path}; run `python benchmarks/gpu_check.py prepare` "
            "here first and carry .gpu_wheels with the device call"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    missing = [name for name in manifest["wheels"] if not (wheels_dir / name).is_file()]
    if missing:
        raise SystemExit(f"gpu_check run: wheels listed but missing: {', '.join(missing)}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    command += ["--no-compile", "--disable-pip-version-check", "--target", str(site)]
    subprocess.run([*command, *(str(wheels_dir / n) for n in manifest["wheels"])], check=True)
    return list(manifest["requirements"])


def step_env(site: Path | None) -> dict[str, str]:
    """The environment of every step: our source first, then the installed wheels."""
    paths = [str(SOURCE_DIR)] + ([str(site)] if site else [])
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def run_step(step: Step, out: Path, env: dict[str, str], seconds_left: float) -> Outcome:
    """Run one step with its output in out/<log>, bounded by its timeout and the budget."""
    if seconds_left < 20:
        return Outcome(step, None, 0.0, f"not run: {seconds_left:.0f} s of the budget left")
    timeout = min(step.timeout_s, seconds_left)
    print(f"\n== {step.name}: {' '.join(step.argv[1:])}", flush=True)
    start = time.perf_counter()
    with open(out / step.log, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(step.argv)}\n(in {step.cwd})\n\n")
        log.flush()
        # A session of its own: on a timeout the benchmarks' case subprocesses go too.
        process = subprocess.Popen(
            step.argv, cwd=step.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            seconds = time.perf_counter() - start
            return Outcome(step, None, seconds, f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    code = process.returncode
    return Outcome(step, code, seconds, "ok" if code == 0 else f"failed (exit {code})")


def test_rows(junit: Path) -> list[tuple[str, str, str, str]]:
    """Verdict rows from pytest's JUnit XML: the counts, and each failing test by name."""
    if not junit.is_file():
        return [("gpu tests", "no results", "all pass", "MISS")]
    suite = ET.parse(junit).getroot()  # written by our own pytest run a moment ago
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    bad = counts["failures"] + counts["errors"]
    summary = (
        f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped"
    )
    verdict = "MISS" if bad else ("met" if passed else "none ran")
    rows = [("gpu tests", summary, "all pass", verdict)]
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            rows.append((f"  {case.get('classname')}::{case.get('name')}", "failed", "", "MISS"))
    return rows


def benchmark_rows(path: Path) -> list[tuple[str, str, str, str]]:
    """Verdict rows from a benchmark's --verdicts file."""
    if not path.is_file():
        return [(path.stem, "no verdicts written", "", "MISS")]
    payload = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for item in payload["verdicts"]:
        met = item["met"]
        verdict = "reported" if met is None else ("met" if met else "MISS")
        rows.append((item["check"], f"{item['value']:.3g} {item['unit']}", item["target"], verdict))
    return rows


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table with columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def report_lines(
    out: Path,
    machine: list[str],
    installed: list[str],
    outcomes: list[Outcome],
    dry_run: bool,
    total_s: float,
) -> list[str]:
    """The report: machine, what was installed, each step, the verdict table, failing logs."""
    title = "GPU check" + (" (dry run on the CPU: no GPU numbers)" if dry_run else "")
    lines = [f"# {title}", "", "## Machine", "", *[f"- {line}" for line in machine], ""]
    lines += ["## Installed for the run", ""]
    lines += [f"- {pin}" for pin in installed] or ["- nothing (dry run: this environment's)"]
    lines += ["", "## Steps", ""]
    rows = [(o.step.name, o.status, f"{o.seconds:.0f} s", o.step.log) for o in outcomes]
    lines += markdown_table(("step", "result", "time", "log"), rows)
    lines += ["", f"Total {total_s:.0f} s.", "", "## Verdicts", ""]
    verdicts = [row for o in outcomes for row in o.verdict_rows]
    lines += markdown_table(("check", "measured", "target", "verdict"), verdicts)
    for outcome in outcomes:
        if outcome.status != "ok" and outcome.returncode is not None:
            log = (out / outcome.step.log).read_text(encoding="utf-8").splitlines()
            lines += ["", f"## Last lines of {outcome.step.log}", "", "```", *log[-40:], "```"]
    return lines


def run(out: Path, wheels_dir: Path, dry_run: bool, budget_s: float) -> int:
    """Install, run the steps within the budget, write and print the report."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_lines(dry_run)
    print("\n".join(machine), flush=True)
    with tempfile.TemporaryDirectory(prefix="dve_gpu_check.") as tmp:
        work = Path(tmp)
        site = None
        installed: list[str] = []
        if not dry_run:
            site = work / "site"
            installed = install_wheels(wheels_dir, site)
            print(f"installed into {site}: {', '.join(installed)}", flush=True)
        env = step_env(site)
        outcomes = []
        for step in build_steps(work, dry_run):
            outcome = run_step(step, out, env, budget_s - (time.perf_counter() - start))
            if step.junit is not None:
                outcome.verdict_rows = test_rows(step.junit)
            elif step.verdicts is not None:
                outcome.verdict_rows = benchmark_rows(step.verdicts)
            print(f"-- {step.name}: {outcome.status} ({outcome.seconds:.0f} s)", flush=True)
            outcomes.append(outcome)
        total_s = time.perf_counter() - start
        lines = report_lines(out, machine, installed, outcomes, dry_run, total_s)
    report = "\n".join(lines) + "\n"
    (out / REPORT).write_text(report, encoding="utf-8")
    print("\n" + report)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and prepare or run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download the wheels the GPU machine lacks (here)")
    prep.add_argument("--wheels", type=Path, default=WHEELS_DIR, help="default: .gpu_wheels/")
    go = sub.add_parser("run", help="install, test, benchmark and report (on the GPU machine)")
    go.add_argument("--out", type=Path, required=True, help="folder for the report and logs")
    go.add_argument("--wheels", type=Path, default=WHEELS_DIR, help="default: .gpu_wheels/")
    go.add_argument(
        "--dry-run", action="store_true", help="on the CPU, tiny settings, nothing installed"
    )
    go.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:g})",
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.wheels)
    return run(args.out, args.wheels, args.dry_run, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
