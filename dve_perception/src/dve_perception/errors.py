"""The exceptions dve_perception raises for bad input, files and configuration.

Every message says what was wrong, what was received and what was expected, so a user can fix the
input without reading a traceback. Callers that must keep running (ROS nodes, replay) catch
`DvePerceptionError` at one boundary.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DvePerceptionError",
    "InputError",
    "MapFileError",
    "TrainingError",
    "TransformUnavailableError",
]


class DvePerceptionError(Exception):
    """Base class of every error raised on purpose by dve_perception."""


class ConfigError(DvePerceptionError, ValueError):
    """A configuration value is out of range or inconsistent."""


class InputError(DvePerceptionError, ValueError):
    """An image, tensor or request does not have the expected shape, dtype or encoding."""


class CheckpointError(DvePerceptionError):
    """A model or text-encoder file is missing, unreadable, or does not fit the model."""


class BackendUnavailableError(DvePerceptionError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


class MapFileError(DvePerceptionError):
    """A saved map file is missing, truncated, corrupted, foreign or from a newer format version."""


class TransformUnavailableError(DvePerceptionError, LookupError):
    """No transform between two frames at a stamp.

    Raised for an unknown frame, frames in different trees, or a stamp outside the recorded TF.
    """


class TrainingError(DvePerceptionError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""
