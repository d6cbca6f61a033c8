"""Labelled RGB-D datasets on disk, shared by training and evaluation.

`rgbd_dataset` reads the folder layout of docs/datasets.md (classes, splits, colour, depth,
semantic and instance images); `synthetic_dataset` writes a small one for tests and examples.
"""
