"""Shared pieces of the TensorRT tests: a small ONNX file with export metadata, fake engines.

The ONNX stub is a real ONNX model (one Identity node and a weight initialiser that makes the
graph field large) carrying the metadata `export-onnx` writes, so hashing and metadata reading
run on a genuine file; the fake TensorRT parser does not look inside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trt_fake
from trt_fake import DataType, IOTensor

from dve_perception.model.dveformer import TINY_TEST_CONFIG
from dve_perception.perception.backends.engine_cache import Platform
from dve_perception.perception.backends.export_metadata import OUTPUT_NAME, ExportMetadata
from dve_perception.perception.backends.fused_outputs import FusedOutputs

SIZE = (64, 96)
DIM = TINY_TEST_CONFIG.embedding_dim  # 16; stride 1 (full resolution)
PLATFORM = Platform("Orin", "8.7", 16)  # AGX Orin 64 GB


def write_export_stub(
    path: Path,
    *,
    height: int = SIZE[0],
    width: int = SIZE[1],
    fused: FusedOutputs | None = None,
    seed: int = 0,
) -> ExportMetadata:
    """Write an ONNX file with dve_perception export metadata; `seed` changes its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    metadata = ExportMetadata.create(
        "custom", TINY_TEST_CONFIG, height, width, fused or FusedOutputs()
    )
    weight = np.random.default_rng(seed).standard_normal(300_000).astype(np.float32)  # 1.2 MB
    graph = helper.make_graph(
        [helper.make_node("Identity", ["rgb"], [OUTPUT_NAME])],
        "stub",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return metadata


def network_io(
    height: int = SIZE[0], width: int = SIZE[1], extra: tuple[IOTensor, ...] = ()
) -> list[IOTensor]:
    """The tensors an export's network has: dynamic batch, fixed size, then `extra` outputs."""
    return [
        IOTensor("rgb", True, (-1, 3, height, width)),
        IOTensor("depth", True, (-1, 1, height, width)),
        IOTensor(OUTPUT_NAME, False, (-1, DIM, height, width)),
        *extra,
    ]


def compute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fake engine's function: channel d is rgb[d % 3] * (d + 1) + depth."""
    rgb, depth = feeds["rgb"], feeds["depth"]
    main = np.stack([rgb[:, d % 3] * (d + 1) + depth[:, 0] for d in range(DIM)], axis=1)
    return {OUTPUT_NAME: main}


def expected_main(rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """`compute` written independently with torch indexing."""
    channels = torch.arange(DIM)
    scale = (channels + 1).float()[None, :, None, None]
    return rgb[:, channels % 3] * scale + depth


def make_trt(version: str = "10.3.0", **io_kwargs):
    """A fake tensorrt module whose parser yields `network_io(**io_kwargs)`."""
    return trt_fake.make_tensorrt(version, network_io=network_io(**io_kwargs), compute=compute)


def inputs(batch: int = 1, height: int = SIZE[0], width: int = SIZE[1], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, height, width, generator=gen)
    return rgb, torch.randn(batch, 1, height, width, generator=gen)


__all__ = [
    "DIM",
    "PLATFORM",
    "SIZE",
    "DataType",
    "compute",
    "expected_main",
    "inputs",
    "make_trt",
    "network_io",
    "write_export_stub",
]
