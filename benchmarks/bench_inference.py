#!/usr/bin/env python3
"""Inference benchmark: DVEFormer in PyTorch, ONNX Runtime and TensorRT, with fused outputs or not.

CPU (`--device cpu`, the default where torch sees no GPU): PyTorch and ONNX Runtime forward of
each variant at 480x640, each with the official raw fp32 output and with fused outputs (unit fp16
embedding, 40 class scores and labels, a downsampled embedding to publish: 60x80 reduced-res,
120x160 full-res), plus preprocessing, postprocessing and the end-to-end perception step (torch,
fused outputs) with its ratio to bare inference; frames/s and the time as a ratio to the PyTorch
fp32 forward of the same variant (channels-last, the backend's default), and the bytes per frame
of all outputs and of what a node copies (the raw embedding without fusion; labels and the
publish embedding with it).

GPU (`--device cuda`, the default where torch sees one; about 3 minutes): PyTorch fp32 eager
(NCHW) against fp16 (channels-last), fp16 + CUDA graphs, fp16 + CUDA graphs + fused outputs,
ONNX Runtime's CUDA provider (when installed) and a TensorRT fp16 engine (when tensorrt imports;
engines are cached in --engine-cache, the first build takes minutes), batch 1, CUDA-synchronised
median times; and the end-to-end perception step (`PerceptionPipeline` plus the perception
worker's segmentation and PCA preview) as a ratio to bare inference of the same backend. The
targets are printed next to the ratios.

Each case runs in its own subprocess, so its peak memory (VmHWM) and CUDA state are its own;
ratios within one invocation are much less noisy than absolute times on a shared machine.
Weights are generated (same cost as the published ones), prototypes are random unit vectors.

    python benchmarks/bench_inference.py [--device auto|cpu|cuda] [--repeats N] [--quick]
        [--variants reducedres fullres] [--engine-cache DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _verdicts import Verdict, Verdicts

HEIGHT, WIDTH = 480, 640
N_CLASSES = 40  # NYUv2's vocabulary, the default of the sample command and the node
PUBLISH_SIZE = {"reducedres": (60, 80), "fullres": (120, 160)}
TARGET_FP16_SPEEDUP = 2.0  # fp16 path at least 2x the fp32 eager path
TARGET_E2E_RATIO = 1.15  # end to end at most 1.15x bare inference
CPU_REPEATS, GPU_REPEATS, GPU_WARMUP = 3, 30, 5
COPIED = {False: ("dense_visual_embedding_decoder_0",), True: ("class_labels", "embedding_publish")}


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB, non-Linux


def _time(fn, repeats: int, device: str) -> list[float]:
    """Seconds per call after warm-up; on CUDA, synchronised before and after each call."""
    for _ in range(GPU_WARMUP if device.startswith("cuda") else 1):  # allocator, kernels, graphs
        fn()
    return [_time_once(fn, device) for _ in range(repeats)]


def _time_once(fn, device: str) -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _model(variant: str):
    from dve_perception.model import build_dveformer
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(variant)
    model.load_state_dict(generate_state_dict(model, seed=1))
    return model


def _fused(variant: str, on: bool):
    from dve_perception.perception.backends.fused_outputs import FusedOutputs

    if not on:
        return FusedOutputs()
    return FusedOutputs(
        normalize=True,
        half=True,
        num_classes=N_CLASSES,
        argmax=True,
        publish_size=PUBLISH_SIZE[variant],
    )


def _prototypes():
    import torch

    protos = torch.randn(N_CLASSES, 768, generator=torch.Generator().manual_seed(2))
    return protos / protos.norm(dim=1, keepdim=True)


def _inputs(device: str = "cpu"):
    import torch

    gen = torch.Generator().manual_seed(0)
    rgb = torch.randn(1, 3, HEIGHT, WIDTH, generator=gen)
    return rgb.to(device), torch.randn(1, 1, HEIGHT, WIDTH, generator=gen).to(device)


def _backend(spec: dict):
    """The backend a case spec describes."""
    fused = _fused(spec["variant"], spec.get("fused", False))
    if spec["backend"] == "torch":
        from dve_perception.perception.backends.torch_backend import TorchBackend

        return TorchBackend(
            _model(spec["variant"]),
            spec["device"],
            precision=spec.get("precision", "fp32"),
            channels_last=spec.get("channels_last"),
            cuda_graphs=spec.get("cuda_graphs", False),
            fused=fused,
            prototypes=_prototypes() if fused.num_classes else None,
        )
    if spec["backend"] == "onnxruntime":
        from dve_perception.perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec["onnx"], device=spec["device"])
    from dve_perception.perception.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(spec["engine"], device=spec["device"])


def _inference_case(spec: dict) -> tuple:
    backend = _backend(spec)
    rgb, depth = _inputs(spec["device"])
    outputs = backend.infer_outputs(rgb, depth)
    nbytes = {name: t.numel() * t.element_size() for name, t in outputs.items()}
    extra = {
        "out_mb": sum(nbytes.values()) / 1e6,
        "copied_mb": sum(nbytes[n] for n in COPIED[spec.get("fused", False)]) / 1e6,
    }
    return (lambda: backend.infer_outputs(rgb, depth)), extra


def _end_to_end_case(spec: dict) -> tuple:
    """The perception step a node runs per frame, and bare inference of the same backend."""
    import numpy as np

    from dve_perception.frames import RGBDFrame
    from dve_perception.node_logic.perception_worker import PerceptionWorker
    from dve_perception.perception.pipeline import PerceptionPipeline
    from dve_perception.settings.node_config import PerceptionNodeConfig

    backend = _backend({**spec, "backend": "torch"})
    names = [f"class {i}" for i in range(N_CLASSES)]
    config = PerceptionNodeConfig(device=spec["device"], embedding_rate_hz=0.0)
    worker = PerceptionWorker(PerceptionPipeline(backend), _prototypes(), names, config)
    rng = np.random.default_rng(0)
    frame = RGBDFrame(
        rgb=rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        depth_m=rng.uniform(0.5, 5.0, (HEIGHT, WIDTH)).astype(np.float32),
        K=np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]),
        stamp_ns=1,
    )
    rgb, depth = _inputs(spec["device"])
    device = spec["device"]
    step, bare = (lambda: worker.process(frame)), (lambda: backend.infer_outputs(rgb, depth))
    for fn in (step, bare):
        _time(fn, 0, device)  # warm-up only
    # Interleaved, so that a slow spell of a shared machine slows both sides of each ratio.
    pairs = [(_time_once(step, device), _time_once(bare, device)) for _ in range(spec["repeats"])]
    return step, {
        "times": [e2e for e2e, _ in pairs],
        "bare_s": statistics.median(b for _, b in pairs),
        "ratio": statistics.median(e2e / b for e2e, b in pairs),
    }


def _cpu_stage_case(spec: dict) -> tuple:
    import torch

    if spec["backend"] == "preprocess":
        from dve_perception.cli.sample import bundled_sample
        from dve_perception.images import read_depth, read_rgb
        from dve_perception.perception.preprocess import prepare_inputs

        rgb_path, depth_path = bundled_sample()
        color, depth_mm = read_rgb(rgb_path), read_depth(depth_path)
        return (lambda: prepare_inputs(color, depth_mm)), {}
    from dve_perception.perception.postprocess import class_scores, segment

    stride = 1 if spec["variant"] == "fullres" else 4
    embedding = torch.randn(1, 768, HEIGHT // stride, WIDTH // stride)
    prototypes = _prototypes()
    # To the sample's camera resolution, as the sample command does.
    return (lambda: segment(class_scores(embedding, prototypes), (1080, 1440))), {}


def run_case(spec: dict) -> dict:
    """Run one case in this process and return its timings and memory."""
    import numpy as np
    import torch

    if spec["backend"] in ("preprocess", "postprocess"):
        fn, extra = _cpu_stage_case(spec)
    elif spec["backend"] == "end-to-end":
        fn, extra = _end_to_end_case(spec)
    else:
        fn, extra = _inference_case(spec)
    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = _peak_rss_mb()
    times = extra.pop("times", None) or _time(fn, spec["repeats"], spec["device"])
    return {
        **extra,
        "median_s": statistics.median(times),
        "peak_rss_mb": _peak_rss_mb(),
        "run_rss_mb": _peak_rss_mb() - base,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 1e6 if cuda else None,
        "threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def _subprocess(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--_spec", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _export(variant: str, fused: bool, folder: Path) -> str:
    from dve_perception.perception.backends.onnx_export import export_onnx

    path = folder / f"{variant}{'_fused' if fused else ''}.onnx"
    start = time.perf_counter()
    export_onnx(
        _model(variant),
        path,
        height=HEIGHT,
        width=WIDTH,
        fused=_fused(variant, fused),
        prototypes=_prototypes() if fused else None,
    )
    print(f"# exported {path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return str(path)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cpu_table(variants: list[str], repeats: int, folder: Path, verdicts: Verdicts) -> None:
    rows, summary = [], []
    for variant in variants:
        base = {"variant": variant, "device": "cpu", "repeats": repeats}
        torch_rows, ort_rows = [], []
        for fused in (False, True):
            spec = {**base, "fused": fused}
            torch_rows.append(_subprocess({**spec, "backend": "torch"}))
            onnx = _export(variant, fused, folder)
            ort_rows.append(_subprocess({**spec, "backend": "onnxruntime", "onnx": onnx}))
        stages = [
            _subprocess({**base, "backend": stage}) for stage in ("preprocess", "postprocess")
        ]
        e2e = _subprocess({**base, "backend": "end-to-end", "fused": True})
        labels = [
            "torch fp32 (baseline)",
            "torch fp32 + fused outputs",
            "onnxruntime",
            "onnxruntime + fused outputs",
            "preprocess 1080x1440 -> 480x640",
            f"postprocess {N_CLASSES} classes -> 1080x1440",
            "end to end, torch + fused outputs",
        ]
        results = [torch_rows[0], torch_rows[1], ort_rows[0], ort_rows[1], *stages, e2e]
        summary.append(
            f"{variant}: end to end (the perception worker's step: pipeline, segmentation, PCA "
            f"preview) {e2e['median_s'] * 1e3:.0f} ms = {e2e['ratio']:.3f}x bare inference of "
            f"the same backend ({e2e['bare_s'] * 1e3:.0f} ms; median of interleaved pairs)"
        )
        _judge_end_to_end(verdicts, variant, e2e["ratio"])
        rows += [
            (variant, label, res, torch_rows[0]) for label, res in zip(labels, results, strict=True)
        ]
    print(
        f"CPU, {HEIGHT}x{WIDTH}, batch 1, {rows[0][2]['threads']} threads, median of {repeats} "
        f"runs after 1 warm-up, numpy {rows[0][2]['numpy']}; fused: unit fp16 embedding, "
        f"{N_CLASSES} class scores + labels, publish {PUBLISH_SIZE}"
    )
    header = (
        f"| {'variant':<10} | {'case':<36} | {'median ms':>9} | {'frames/s':>8} | "
        f"{'x torch':>7} | {'out MB':>7} | {'copied MB':>9} | {'peak RSS MB':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for variant, case, res, base in rows:
        print(
            f"| {variant:<10} | {case:<36} | {res['median_s'] * 1e3:>9.1f} | "
            f"{1 / res['median_s']:>8.2f} | {res['median_s'] / base['median_s']:>7.3f} | "
            f"{_mb(res.get('out_mb')):>7} | {_mb(res.get('copied_mb')):>9} | "
            f"{res['peak_rss_mb']:>11.0f} |"
        )
    print("\n".join(summary))


def _gpu_cases(variant: str, repeats: int, folder: Path, engine_cache: Path) -> list:
    """(label, spec or a reason it is skipped, fp16 path?) in table order."""
    base = {"variant": variant, "device": "cuda", "repeats": repeats, "backend": "torch"}
    fp16 = {**base, "precision": "fp16", "channels_last": True}
    cases = [
        ("torch fp32 eager, NCHW (baseline)", {**base, "channels_last": False}, False),
        ("torch fp16, channels-last", fp16, True),
        ("torch fp16 + CUDA graphs", {**fp16, "cuda_graphs": True}, True),
        ("torch fp16 + CUDA graphs + fused", {**fp16, "cuda_graphs": True, "fused": True}, True),
    ]
    try:
        import onnxruntime as ort

        has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        has_ort_cuda = False
    has_trt = importlib.util.find_spec("tensorrt") is not None
    onnx = _export(variant, False, folder) if has_ort_cuda or has_trt else None
    ort_spec = {**base, "backend": "onnxruntime", "onnx": onnx}
    cases.append(("onnxruntime CUDA fp32", ort_spec if has_ort_cuda else "no CUDA provider", False))
    if has_trt:
        from dve_perception.perception.backends.engine_build import ensure_engine

        cached = ensure_engine(onnx, engine_cache, precision="fp16")
        if cached.built:
            print(f"# built {cached.plan_path} in {cached.seconds:.0f} s", file=sys.stderr)
        trt = {**base, "backend": "tensorrt", "engine": str(cached.plan_path)}
    else:
        trt = "tensorrt not installed"
    cases.append(("TensorRT fp16", trt, True))
    return cases


def gpu_table(
    variants: list[str], repeats: int, folder: Path, engine_cache: Path, verdicts: Verdicts
) -> None:
    import torch

    print(
        f"GPU {torch.cuda.get_device_name()}, {HEIGHT}x{WIDTH}, batch 1, median of {repeats} "
        f"CUDA-synchronised runs after {GPU_WARMUP} warm-ups; speed-up vs fp32 eager, target "
        f">= {TARGET_FP16_SPEEDUP:g}x for fp16 paths"
    )
    header = (
        f"| {'variant':<10} | {'case':<36} | {'median ms':>9} | {'frames/s':>8} | "
        f"{'speed-up':>8} | {'target':>6} | {'torch GPU MB':>12} | {'copied MB':>9} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    summary = []
    for variant in variants:
        baseline = None
        for label, spec, is_fp16 in _gpu_cases(variant, repeats, folder, engine_cache):
            if isinstance(spec, str):
                print(f"| {variant:<10} | {label:<36} | skipped: {spec}")
                continue
            res = _subprocess(spec)
            baseline = baseline or res
            speedup = baseline["median_s"] / res["median_s"]
            met = "-"
            if is_fp16:
                target = f">= {TARGET_FP16_SPEEDUP:g}x"
                check = f"{variant}: {label} speed-up vs fp32 eager"
                verdict = verdicts.add(check, speedup, "x", target, speedup >= TARGET_FP16_SPEEDUP)
                met = "met" if verdict.met else "MISS"
            print(
                f"| {variant:<10} | {label:<36} | {res['median_s'] * 1e3:>9.2f} | "
                f"{1 / res['median_s']:>8.1f} | {speedup:>7.2f}x | {met:>6} | "
                f"{_mb(res['gpu_peak_mb']):>12} | {_mb(res['copied_mb']):>9} |"
            )
        e2e_spec = {"variant": variant, "device": "cuda", "repeats": repeats}
        e2e_spec.update(backend="end-to-end", precision="fp16", cuda_graphs=True, fused=True)
        e2e = _subprocess(e2e_spec)
        ratio = e2e["ratio"]
        verdict = "met" if _judge_end_to_end(verdicts, variant, ratio).met else "MISS"
        summary.append(
            f"{variant}: end to end (pipeline + segmentation + PCA, fp16 + CUDA graphs + fused) "
            f"{e2e['median_s'] * 1e3:.1f} ms = {ratio:.2f}x bare inference "
            f"({e2e['bare_s'] * 1e3:.1f} ms); target <= {TARGET_E2E_RATIO}x: {verdict}"
        )
    print("\n".join(summary))


def _judge_end_to_end(verdicts: Verdicts, variant: str, ratio: float) -> Verdict:
    check = f"{variant}: end to end vs bare inference"
    return verdicts.add(check, ratio, "x", f"<= {TARGET_E2E_RATIO}x", ratio <= TARGET_E2E_RATIO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--repeats", type=int, help=f"timed runs per case ({CPU_REPEATS} CPU, {GPU_REPEATS} GPU)"
    )
    parser.add_argument("--variants", nargs="+", default=["reducedres", "fullres"])
    parser.add_argument("--quick", action="store_true", help="reduced-res only, fewer repeats")
    parser.add_argument(
        "--engine-cache",
        type=Path,
        default=Path.home() / ".cache" / "dve_perception" / "bench_engines",
        help="folder of the TensorRT engines (reused while the export and GPU stay the same)",
    )
    parser.add_argument(
        "--verdicts", type=Path, help="also write the targets met or missed to this JSON file"
    )
    parser.add_argument("--_spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._spec:
        print(json.dumps(run_case(json.loads(args._spec))))
        return

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu)")
    variants = ["reducedres"] if args.quick else args.variants
    gpu = device == "cuda"
    repeats = args.repeats or ((GPU_REPEATS if gpu else CPU_REPEATS) // (3 if args.quick else 1))
    verdicts = Verdicts()
    with tempfile.TemporaryDirectory() as tmp:
        if gpu:
            gpu_table(variants, repeats, Path(tmp), args.engine_cache, verdicts)
        else:
            cpu_table(variants, repeats, Path(tmp), verdicts)
    if args.verdicts:
        verdicts.write(args.verdicts, "bench_inference")


if __name__ == "__main__":
    main()
