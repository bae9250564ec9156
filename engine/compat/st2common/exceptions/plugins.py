"""`st2common.exceptions.plugins`: raised when a class lacks what its plug-in base requires."""

from st2common.exceptions import StackStormBaseException

__all__ = ["IncompatiblePluginException", "PluginLoadError"]


class IncompatiblePluginException(StackStormBaseException):
    """A class does not implement the abstract methods of its plug-in base class."""


class PluginLoadError(StackStormBaseException):
    """A plug-in file could not be loaded."""
