"""`st2common.exceptions.action`: the names packs raise for bad parameters (the csv pack, for one)."""

from st2common.exceptions import StackStormBaseException

__all__ = ["InvalidActionParameterException", "InvalidActionReferencedException",
           "ParameterRenderingFailedException"]


class ParameterRenderingFailedException(StackStormBaseException):
    """A parameter's template could not be rendered."""


class InvalidActionReferencedException(StackStormBaseException):
    """An action reference names no action."""


class InvalidActionParameterException(StackStormBaseException):
    """A parameter value is not acceptable to the action."""
