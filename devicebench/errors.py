"""Errors a user can cause, each carrying a message that names the cause and the fix."""


class DevicebenchError(Exception):
    """Base class: the message is meant to be shown to the user as it is."""


class UsageError(DevicebenchError):
    """A bad option value or an unknown name."""


class DataError(DevicebenchError):
    """A data set or weights file could not be obtained or failed verification."""


class DeviceOutOfMemory(DevicebenchError):
    """The device ran out of memory while running a workload."""
