"""Registers devicebench's pytest front: the row options (--device, --scale, --data, ...), fixtures and hooks."""

pytest_plugins = ["fixtures.plugin"]
