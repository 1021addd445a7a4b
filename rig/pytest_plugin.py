"""pytest fixtures for suites that want an emulated ConnectX-3 (`rig_machine`, `rig_device`, ...)."""
