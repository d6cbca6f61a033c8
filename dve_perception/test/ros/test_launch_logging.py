"""The core's log records reach caplog on machines where launch_testing is installed.

launch_testing's pytest plugins load automatically and `import launch`, which makes every logger
created afterwards a LaunchLogger with propagate=False for the whole process; 22 tests that read
caplog failed on any machine with a sourced ROS 2. test/conftest.py restores the standard class.
"""

from __future__ import annotations

import logging

import pytest

launch = pytest.importorskip("launch", reason="needs ROS 2's launch package")

pytestmark = pytest.mark.ros


def test_a_logger_made_after_launch_was_imported_reaches_caplog(caplog):
    logger = logging.getLogger("dve_perception.test_launch_logging.fresh")
    assert type(logger) is logging.Logger and logger.propagate
    with caplog.at_level(logging.WARNING):
        logger.warning("seen by caplog")
    assert "seen by caplog" in caplog.text


def test_a_launch_run_resets_launch_logging(caplog):
    # What LaunchService does when a launch test runs: the logger class becomes LaunchLogger.
    import launch.logging

    launch.logging.reset()
    assert logging.getLoggerClass() is not logging.Logger


def test_loggers_made_in_the_next_test_still_reach_caplog(caplog):
    # Runs after the reset above (file order): the autouse fixture restored the class.
    logger = logging.getLogger("dve_perception.test_launch_logging.after_reset")
    assert type(logger) is logging.Logger
    with caplog.at_level(logging.WARNING):
        logger.warning("seen again")
    assert "seen again" in caplog.text
