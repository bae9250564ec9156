"""`st2common.exceptions.actionrunner`: runner errors some pack libraries raise or catch."""

from st2common.exceptions import StackStormBaseException

__all__ = ["ActionRunnerCreateError", "ActionRunnerDispatchError", "ActionRunnerException",
           "ActionRunnerPreRunError"]


class ActionRunnerException(StackStormBaseException):
    """A runner failed."""


class ActionRunnerCreateError(ActionRunnerException):
    """A runner could not be created."""


class ActionRunnerDispatchError(ActionRunnerException):
    """An execution could not be handed to its runner."""


class ActionRunnerPreRunError(ActionRunnerException):
    """A runner's preparation before the run failed."""
