"""pytest fixtures for suites that want an emulated ConnectX-3 (see the README)."""
