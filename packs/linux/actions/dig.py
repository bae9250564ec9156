"""linux.dig: dig's answer lines as a list, as StackStorm's action returns them.

dig runs from an argv list, never through a shell, so a host name or option is only ever an
argument; a host name starting with '-' is refused so it cannot become one of dig's options.
"""

import random
import shutil
import subprocess

from st2common.runners.base_action import Action

MISSING = ("Can't find dig installed in the path (usually /usr/bin/dig). If dig isn't installed, you can "
           "install it with 'sudo yum install bind-utils' or 'sudo apt install dnsutils'")


class DigAction(Action):
    def run(self, hostname, queryopts="short", querytype="A", nameserver=None, count=0, rand=False):
        if hostname.startswith("-"):
            return False, f"hostname may not start with '-': {hostname!r}"
        dig = shutil.which("dig")
        if dig is None:
            return False, MISSING
        argv = [dig]
        if nameserver:
            argv.append("@" + nameserver)
        # StackStorm takes several query options separated by commas: "short,tcp" -> +short +tcp.
        options = queryopts.split(",") if queryopts else []
        argv += ["+" + option for option in options if option]
        argv += [hostname, querytype]
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
        text = done.stdout.replace('"', "") if querytype.lower() == "txt" else done.stdout
        lines = [line for line in text.split("\n") if line]
        if count > 0:
            lines = lines[:count]
        if rand:
            random.shuffle(lines)
        return lines
