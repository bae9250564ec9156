"""`!key set NAME VALUE`: a system-scope key, written by the service itself (no CLI to start, and
rules on `core.st2.key_value_pair.*` fire at once)."""

from st2common.runners.base_action import Action


class KeySet(Action):
    def run(self, name: str, value: str, encrypt: bool = False) -> str:
        self.action_service.set_value(name, value, local=False, encrypt=encrypt)
        return f"set st2kv.system key {name}" + (" (encrypted)" if encrypt else "")
