from st2common.runners.base_action import Action


class EchoInput(Action):
    def run(self, value):
        return {"value": value}
