"""Scratch buffers are reused, grown when needed and typed as asked."""

from __future__ import annotations

import torch

from dve_perception.mapping.workspace import Workspace


def test_a_smaller_request_reuses_the_same_memory():
    workspace = Workspace(torch.device("cpu"))
    first = workspace.get("rows", (100, 8), torch.float32)
    second = workspace.get("rows", (50, 8), torch.float32)
    assert second.data_ptr() == first.data_ptr() and second.shape == (50, 8)


def test_a_larger_request_or_another_dtype_gets_a_new_buffer():
    workspace = Workspace(torch.device("cpu"))
    small = workspace.get("rows", (10, 8), torch.float32)
    large = workspace.get("rows", (1000, 8), torch.float32)
    assert large.shape == (1000, 8) and large.is_contiguous()
    assert large.data_ptr() != small.data_ptr()
    assert workspace.get("rows", (10, 8), torch.float16).dtype == torch.float16


def test_names_are_independent():
    workspace = Workspace(torch.device("cpu"))
    a = workspace.get("a", (4,), torch.float32)
    b = workspace.get("b", (4,), torch.float32)
    assert a.data_ptr() != b.data_ptr()
