"""`st2common.exceptions.db`: "not found" and conflict errors pack code catches around lookups."""

from st2common.exceptions import StackStormBaseException

__all__ = ["StackStormDBObjectConflictError", "StackStormDBObjectMalformedError",
           "StackStormDBObjectNotFoundError"]


class StackStormDBObjectNotFoundError(StackStormBaseException):
    """The object looked up does not exist."""


class StackStormDBObjectMalformedError(StackStormBaseException):
    """The object is not valid."""


class StackStormDBObjectConflictError(StackStormBaseException):
    """The object conflicts with one stored; `conflict_id` and `model_object` say which."""

    def __init__(self, message: str, conflict_id: str, model_object: object) -> None:
        super().__init__(message)
        self.conflict_id = conflict_id
        self.model_object = model_object
