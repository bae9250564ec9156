"""The `Action` base class StackStorm Python actions subclass, unchanged in its contract."""

from __future__ import annotations

import abc
import logging
from typing import Any

__all__ = ["Action"]


class Action(abc.ABC):
    """Base class of Python actions: `run(**parameters)` returns a result or `(ok, result)`."""

    def __init__(self, config: dict[str, Any] | None = None, action_service: Any = None) -> None:
        self.config = config if config is not None else {}
        self.action_service = action_service
        self.logger = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")

    @abc.abstractmethod
    def run(self, **kwargs: Any) -> Any:
        """Do the action's work with its (rendered, cast) action parameters."""
