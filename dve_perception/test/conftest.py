"""Shared fixtures and the hardware/ROS marker policy.

Tests marked `ros`, `tensorrt` or `gpu` run only where that dependency exists; elsewhere they are
skipped with a reason that says what is missing, so a green run here never hides them silently.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

DATA_DIR = Path(__file__).parent / "data"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_MARKER_REQUIREMENTS = {
    "ros": (
        lambda: _has_module("rclpy"),
        "needs rclpy: run on a ROS 2 machine (source /opt/ros/<distro>)",
    ),
    "tensorrt": (
        lambda: _has_module("tensorrt"),
        "needs the tensorrt module: run on a Jetson or a TensorRT host",
    ),
    "gpu": (lambda: torch.cuda.is_available(), "needs a CUDA device visible to torch"),
}


#: Registered here rather than in pytest.ini, which pytest reads only when it starts in this folder:
#: from the repository root the suite must mark, skip and fail on deprecations the same way.
MARKERS = {
    "ros": "needs ROS 2 (rclpy); skipped elsewhere",
    "tensorrt": "needs the tensorrt Python module; skipped elsewhere",
    "gpu": "needs a CUDA device visible to torch; skipped elsewhere",
    "slow": "real-size model or long runs (still part of the default suite)",
}
WARNING_FILTERS = ("error::DeprecationWarning:dve_perception.*",)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    for warning_filter in WARNING_FILTERS:
        config.addinivalue_line("filterwarnings", warning_filter)
    _isolate_dds()
    _use_standard_loggers()


#: DDS domains a test run may take (Fast DDS: 0-232 fit the port range; above ~101 the ports can
#: meet Linux's ephemeral range, and 0 is everybody's default).
ROS_TEST_DOMAINS = range(1, 101)
_domain_lock = None  # held open for the whole run: the domain is ours while it is locked


def _isolate_dds() -> None:
    """Give this run a DDS domain no other test run on the machine holds, and stay on it.

    Tests use fixed names (/query_text, /camera/...): on a shared domain another ROS process
    answered them, and a user's ROS_DOMAIN_ID (their robot's) must never see test traffic. Set
    before anything initialises rclpy, so nodes started in-process and every child process
    (launch files, node executables) inherit it. Discovery stays on this machine
    (ROS_AUTOMATIC_DISCOVERY_RANGE on Jazzy; ROS_LOCALHOST_ONLY on Humble, which lacks it).
    """
    global _domain_lock
    start = os.getpid() % len(ROS_TEST_DOMAINS)
    for offset in range(len(ROS_TEST_DOMAINS)):
        domain = ROS_TEST_DOMAINS[(start + offset) % len(ROS_TEST_DOMAINS)]
        path = Path(tempfile.gettempdir()) / f"dve_perception_test_ros_domain_{domain}.lock"
        handle = open(path, "a")  # noqa: SIM115 - kept open: the lock lives as long as the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _domain_lock = handle
        os.environ["ROS_DOMAIN_ID"] = str(domain)
        break
    else:  # never fall back to the shell's domain, which may be a robot's
        raise pytest.UsageError(
            f"no free ROS test domain in {ROS_TEST_DOMAINS}: runs hold them all"
        )
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if os.environ.get("ROS_DISTRO") == "humble":
        os.environ["ROS_LOCALHOST_ONLY"] = "1"


def _use_standard_loggers() -> None:
    """Make loggers created from now on plain `logging.Logger`s that propagate to caplog.

    launch_testing's pytest plugins load wherever it is installed (any machine with a sourced
    ROS 2) and import `launch`, which sets its LaunchLogger class (propagate=False) for the whole
    process: records of the core's loggers then never reached caplog, and 22 tests failed there.
    Running a launch file resets the class again, so the autouse fixture below repeats this.
    """
    logging.setLoggerClass(logging.Logger)


@pytest.fixture(autouse=True)
def _standard_loggers():
    _use_standard_loggers()
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (available, reason) in _MARKER_REQUIREMENTS.items():
        if available():
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            # get_closest_marker, not `marker in item.keywords`: keywords also hold parameter
            # ids, so a parametrised case named like a marker would be skipped silently.
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def parity_fixture() -> dict[str, np.ndarray]:
    """The official implementation's reference output (see test/data/NOTICE.md)."""
    with np.load(DATA_DIR / "open_reducedres_s1_480x640.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def tiny_config():
    from dve_perception.model.dveformer import TINY_TEST_CONFIG

    return TINY_TEST_CONFIG


@pytest.fixture
def tiny_model(tiny_config):
    from dve_perception.model import build_dveformer
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer(tiny_config)
    model.load_state_dict(generate_state_dict(model, seed=3))
    return model


def write_official_checkpoint(path: Path, state_dict: dict, **extra) -> Path:
    """Write a file the way the official training script does (`torch.save` of a dict)."""
    torch.save({"state_dict": state_dict, "epoch": 249, "logs": {}, **extra}, path)
    return path


@pytest.fixture(scope="session")
def reducedres_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-size reduced-res checkpoint with generated weights (seed 1), official format."""
    from dve_perception.model import build_dveformer
    from dve_perception.model.generated_weights import generate_state_dict

    model = build_dveformer("reducedres")
    path = tmp_path_factory.mktemp("ckpt") / "dveformer_reducedres_generated.pth"
    return write_official_checkpoint(path, generate_state_dict(model, seed=1))


@pytest.fixture
def official_checkpoint_writer():
    return write_official_checkpoint


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text tower with the real 768-d projection and the real tokenizer files."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from dve_perception.text.clip_model_files import CLIP_VIT_L14_TEXT_CONFIG, write_tokenizer_files

    folder = tmp_path_factory.mktemp("text") / "clip-vit-large-patch14-336"
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**{**CLIP_VIT_L14_TEXT_CONFIG, **small}))
    model.save_pretrained(folder)
    write_tokenizer_files(folder)
    return folder
