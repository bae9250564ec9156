import random
import time

from st2common.runners.base_action import Action


class PauseAction(Action):
    def run(self, max_pause, random=False):
        seconds = random_seconds(max_pause) if random else max_pause
        time.sleep(seconds)
        return seconds


def random_seconds(max_pause):
    return random.uniform(0, max_pause)
