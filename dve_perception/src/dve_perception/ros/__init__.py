"""The ROS 2 adapters: the only place that imports rclpy and friends.

Each node converts messages with the core's pure functions (`messages.conversions`,
`messages.outputs`), calls the core (`node_logic`), and publishes the results. What the nodes
decide is tested without ROS in the core's tests; the wiring here runs against strict stand-ins for
rclpy, message_filters, tf2_ros and diagnostic_updater (`test/ros/test_ros_adapters.py`), and for
real under launch_pytest on a ROS 2 machine (`test/ros/test_robot_launch.py`).
"""
