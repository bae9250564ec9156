"""`st2common.exceptions`: StackStorm's root exception classes, which packs catch and subclass."""

__all__ = ["StackStormBaseException", "StackStormPluginException"]


class StackStormBaseException(Exception):
    """The root of StackStorm's own exceptions (packs catch it to handle any st2 error)."""


class StackStormPluginException(StackStormBaseException):
    """The root of exceptions a plug-in API (a pack's library) defines, as StackStorm recommends."""
