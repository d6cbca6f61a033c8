"""Each test run talks DDS on a domain of its own, on this machine only.

test_robot_launch.py once failed because another ROS process on the machine answered its fixed
service names on the default domain. test/conftest.py now gives every run a domain no other test
run holds (a lock file per domain) and keeps discovery on localhost.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ros_probe import ROS_REASON

pytest.importorskip("rclpy", reason=ROS_REASON)

pytestmark = pytest.mark.ros

IMPOSTOR = """
import rclpy
from dve_perception_interfaces.srv import QueryText
rclpy.init()
node = rclpy.create_node("impostor")
node.create_service(QueryText, "/dve_isolation_check", lambda req, res: res)
print("ready", flush=True)
rclpy.spin(node)
"""


def test_the_run_has_a_domain_of_its_own_and_stays_on_this_machine():
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert 1 <= domain <= 100  # never 0, everybody's default
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_a_service_on_the_default_domain_is_not_seen(probe):
    from dve_perception_interfaces.srv import QueryText

    env = {**os.environ, "ROS_DOMAIN_ID": "0"}
    impostor = subprocess.Popen(
        [sys.executable, "-c", IMPOSTOR], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert impostor.stdout.readline().strip() == "ready"
        client = probe.node.create_client(QueryText, "/dve_isolation_check")
        assert not client.wait_for_service(timeout_sec=3.0)
        probe.node.destroy_client(client)
        # The same service on our own domain is found at once: the check above can fail.
        env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
        ours = subprocess.Popen(
            [sys.executable, "-c", IMPOSTOR], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert ours.stdout.readline().strip() == "ready"
            client = probe.node.create_client(QueryText, "/dve_isolation_check")
            assert client.wait_for_service(timeout_sec=30.0), "not found on our own domain"
        finally:
            ours.kill()
            ours.wait()
    finally:
        impostor.kill()
        impostor.wait()
