"""Offline replay without ROS: a recording through the pipeline into a map, with previews.

`replay_loop` runs a source (rosbag2 or folder) through the perception pipeline into the voxel
map, `previews` writes the per-frame images, and `demo_recording` makes the demo's virtual
recording around the bundled frame.
"""
