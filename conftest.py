"""Registers devicebench's pytest plugin: options (--device, --scale, --data, ...), fixtures and hooks."""

pytest_plugins = ["fixtures.plugin", "fixtures.http_server"]
