"""linux.wait_for_ssh: try to log in over SSH until it works or the retries run out.

StackStorm connects with paramiko; Squall already ships asyncssh (its remote runner's SSH), so the
action logs in with that instead of adding a dependency. Host keys are not verified, as StackStorm
does not verify them: the question asked is "is sshd up and does it let us in", nothing more.
"""

import asyncio
import getpass
import os
import time

import asyncssh

from st2common.runners.base_action import Action


class WaitForSSHAction(Action):
    def run(self, hostname, port=22, username=None, password=None, keyfile=None, ssh_timeout=5,
            sleep_delay=20, retries=10):
        username = username or getpass.getuser()
        if not password and not keyfile:
            # StackStorm falls back to the system user's key; the user running actions has theirs.
            self.logger.info("Neither password nor keyfile given: using %s's own SSH keys", username)
        for attempt in range(1, retries + 1):
            try:
                asyncio.run(self._login(hostname, port, username, password, keyfile, ssh_timeout))
                return True
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                self.logger.info("Attempt %s failed (%s), sleeping for %s seconds...",
                                 attempt, exc or type(exc).__name__, sleep_delay)
                if attempt < retries:
                    time.sleep(sleep_delay)
        raise Exception(f"Exceeded max retries ({retries})")

    @staticmethod
    async def _login(hostname, port, username, password, keyfile, timeout):
        options = {"known_hosts": None, "username": username, "connect_timeout": timeout}
        if password:
            options["password"] = password
        if keyfile:
            options["client_keys"] = [os.path.expanduser(keyfile)]
        async with asyncssh.connect(hostname, port=port, **options):
            pass
