"""`st2common.runners.utils`: how StackStorm builds an action instance, for the worker and for packs' tests.

Many Exchange actions were written before `action_service` existed and define
`__init__(self, config)`; StackStorm still runs them, so Squall must too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_action_class_instance"]


def get_action_class_instance(action_cls: type, config: dict[str, Any] | None = None,
                              action_service: Any = None) -> Any:
    """Construct with `config` and `action_service`; a constructor that refuses `action_service` is
    called with `config` alone and gets `action_service` as an attribute afterwards, as StackStorm does.

    Only that one refusal is retried: any other TypeError is the action's own and is raised.
    """
    try:
        return action_cls(config=config, action_service=action_service)
    except TypeError as exc:
        if "unexpected keyword argument 'action_service'" not in str(exc):
            raise
    instance = action_cls(config=config)
    instance.action_service = action_service
    return instance
