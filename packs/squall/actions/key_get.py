"""`!key get NAME`: a system-scope key's value; an encrypted one is shown masked, never decrypted."""

from st2common.runners.base_action import Action


class KeyGet(Action):
    def run(self, name: str) -> tuple[bool, str]:
        for item in self.action_service.list_values(local=False, prefix=name):
            if item.name == name:
                return True, "********" if item.secret else item.value
        return False, f"key '{name}' does not exist in scope system"
