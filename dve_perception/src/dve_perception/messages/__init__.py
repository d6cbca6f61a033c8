"""ROS message fields without ROS: conversions to and from the core's frames, and message builders.

Message classes come in as arguments (rclpy's on a robot, rosbags' in offline replay), so the same
tested code serves both: `conversions` reads images, camera_info and transforms, `builders` and
`outputs` fill the messages the nodes publish, `embedding` packs EmbeddingFrame messages, and
`message_types` builds the message classes from rosbags' type store where ROS is absent.
"""
