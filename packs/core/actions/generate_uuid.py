# From StackStorm's core pack (contrib/core/actions/generate_uuid.py), Apache-2.0:
# Copyright 2020 The StackStorm Authors. Copyright 2019 Extreme Networks, Inc. https://github.com/StackStorm/st2
import uuid

from st2common.runners.base_action import Action


class GenerateUUID(Action):
    def run(self, uuid_type):
        if uuid_type == "uuid1":
            return str(uuid.uuid1())
        elif uuid_type == "uuid4":
            return str(uuid.uuid4())
        else:
            raise ValueError("Unknown uuid_type. Only uuid1 and uuid4 are supported")
