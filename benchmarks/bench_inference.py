#!/usr/bin/env python3
"""CPU inference benchmark: DVEFormer forward in PyTorch and ONNX Runtime, pre/postprocessing.

Prints one table. Each case runs in its own subprocess so its peak memory (VmHWM) is its own;
times are medians over --repeats runs after one warm-up, and every row is also given as a ratio to
the PyTorch forward of the same variant measured in the same invocation (absolute times on a
shared 2-core machine are noisy, ratios much less so). Weights are generated (same cost as the
published ones).

    python benchmarks/bench_inference.py [--repeats 3] [--variants reducedres fullres]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEIGHT, WIDTH = 480, 640
N_CLASSES = 40  # NYUv2's vocabulary, the default of the sample command


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB, non-Linux


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up: allocator, oneDNN primitive caches, ORT session init paths
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _model(variant: str):
    from dve_perception.model import build_dveformer
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(variant)
    model.load_state_dict(generate_state_dict(model, seed=1))
    return model


def _inputs():
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, HEIGHT, WIDTH, generator=gen), torch.randn(
        1, 1, HEIGHT, WIDTH, generator=gen
    )


def run_case(case: str, variant: str, repeats: int, onnx_path: str | None) -> dict:
    """Run one case in this process and return its timings and memory."""
    import numpy as np
    import torch

    rgb, depth = _inputs()
    if case == "torch":
        model = _model(variant)
        base = _peak_rss_mb()

        def fn():
            with torch.no_grad():
                model(rgb, depth)

    elif case == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        feeds = {"rgb": rgb.numpy(), "depth": depth.numpy()}
        base = _peak_rss_mb()

        def fn():
            session.run(None, feeds)

    elif case == "preprocess":
        from dve_perception.images import read_depth, read_rgb
        from dve_perception.preprocess import prepare_inputs
        from dve_perception.sample_inference import bundled_sample

        rgb_path, depth_path = bundled_sample()
        color, depth_mm = read_rgb(rgb_path), read_depth(depth_path)
        base = _peak_rss_mb()

        def fn():
            prepare_inputs(color, depth_mm)

    elif case == "postprocess":
        from dve_perception.postprocess import class_scores, segment

        stride = 1 if variant == "fullres" else 4
        embedding = torch.randn(1, 768, HEIGHT // stride, WIDTH // stride)
        prototypes = torch.randn(N_CLASSES, 768)
        base = _peak_rss_mb()

        def fn():
            # To the sample's camera resolution, as the sample command does.
            segment(class_scores(embedding, prototypes), (1080, 1440))

    else:
        raise ValueError(case)
    times = _time(fn, repeats)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_rss_mb": _peak_rss_mb(),
        "run_rss_mb": _peak_rss_mb() - base,
        "threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def _subprocess(case: str, variant: str, repeats: int, onnx_path: str | None) -> dict:
    cmd = [sys.executable, __file__, "--_case", case, "--_variant", variant]
    cmd += ["--repeats", str(repeats)] + (["--_onnx", onnx_path] if onnx_path else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _export(variant: str, folder: Path) -> tuple[str, float]:
    from dve_perception.backends.onnx_export import export_onnx

    path = folder / f"{variant}.onnx"
    t = time.perf_counter()
    export_onnx(_model(variant), path, height=HEIGHT, width=WIDTH)
    return str(path), time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["reducedres", "fullres"])
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    parser.add_argument("--_variant", help=argparse.SUPPRESS)
    parser.add_argument("--_onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        print(json.dumps(run_case(args._case, args._variant, args.repeats, args._onnx)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            onnx_path, export_s = _export(variant, Path(tmp))
            baseline = _subprocess("torch", variant, args.repeats, None)
            rows.append((variant, "torch forward (baseline)", baseline, baseline))
            rows.append(
                (
                    variant,
                    "onnxruntime forward",
                    _subprocess("onnxruntime", variant, args.repeats, onnx_path),
                    baseline,
                )
            )
            rows.append(
                (
                    variant,
                    "preprocess 1080x1440 -> 480x640",
                    _subprocess("preprocess", variant, args.repeats, None),
                    baseline,
                )
            )
            rows.append(
                (
                    variant,
                    f"postprocess {N_CLASSES} classes -> 1080x1440",
                    _subprocess("postprocess", variant, args.repeats, None),
                    baseline,
                )
            )
            print(f"# {variant}: ONNX export took {export_s:.1f} s", file=sys.stderr)

    print(
        f"CPU, {HEIGHT}x{WIDTH}, batch 1, {rows[0][2]['threads']} threads, "
        f"median of {args.repeats} runs after 1 warm-up, numpy {rows[0][2]['numpy']}"
    )
    header = (
        f"| {'variant':<10} | {'case':<36} | {'median ms':>9} | {'x torch':>7} | "
        f"{'peak RSS MB':>11} | {'run +MB':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for variant, case, res, base in rows:
        print(
            f"| {variant:<10} | {case:<36} | {res['median_s'] * 1e3:>9.1f} | "
            f"{res['median_s'] / base['median_s']:>7.3f} | {res['peak_rss_mb']:>11.0f} | "
            f"{res['run_rss_mb']:>7.0f} |"
        )


if __name__ == "__main__":
    main()
