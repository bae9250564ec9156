# From StackStorm's core pack (contrib/core/actions/inject_trigger.py), Apache-2.0:
# Copyright 2020 The StackStorm Authors. Copyright 2019 Extreme Networks, Inc. https://github.com/StackStorm/st2
# StackStorm's posts to its /webhooks/st2 API through st2client; Squall's hands the trigger to the service
# through `action_service.dispatch`, which stores the instance (checked against its trigger type) before it
# returns, so its rules fire, and returns it.
from st2common.runners.base_action import Action

__all__ = ["InjectTriggerAction"]


class InjectTriggerAction(Action):
    def run(self, trigger=None, trigger_name=None, payload=None, trace_tag=None):
        payload = payload or {}

        # Raise an error if both trigger and trigger_name are specified
        if trigger and trigger_name:
            raise ValueError("Parameters `trigger` and `trigger_name` are mutually exclusive.")

        # Raise an error if neither trigger nor trigger_name are specified
        if not trigger and not trigger_name:
            raise ValueError("You must include the `trigger_name` parameter.")

        trigger = trigger if trigger else trigger_name
        self.logger.debug('Injecting trigger "%s" with payload="%s"', trigger, payload)
        return self.action_service.dispatch(trigger, payload, trace_tag=trace_tag)
