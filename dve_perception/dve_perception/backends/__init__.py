"""Inference backends and model export.

`onnx_export` turns a DVEFormer into a self-contained ONNX file with the official TensorRT recipe
(`fixed_pooling` for the export size, dynamic batch, opset 20) and stamps it with the
`export_metadata` that backends check their inputs against. The runtime backends come later; like
the exporter, they import their heavy dependencies (onnx, onnxruntime, tensorrt) lazily, so
importing this package is cheap.
"""

from __future__ import annotations
