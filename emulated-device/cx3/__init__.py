"""A Mellanox ConnectX-3 (15b3:1003) model for the mlx4_core driver, served over vfio-user.

Importing the package loads nothing. The model: cx3.device (Cx3Device), served by
`python -m cx3` with the control server cx3.server. The rig's side: cx3.client (ControlClient),
cx3.ops (the op and fault-knob table), cx3.wire (framing, records) and cx3.layout (BAR0 and its
live registers); those import nothing of the model.
"""
