"""Fixtures every test directory may ask for: the real OpenStack servers (started on demand)."""

pytest_plugins = ["tests.servers.swift", "tests.servers.zaqar"]
