"""Node settings: typed configurations, their ROS parameter declarations and the parameters YAML.

`node_config` holds one frozen dataclass per node (defaults, descriptions, validation),
`parameters` turns them into ROS parameter specs, and `params_yaml` reads and writes the
`/**: ros__parameters:` files that the nodes and the command line share.
"""
