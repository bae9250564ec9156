#!/usr/bin/env python3
"""Processes whose state, command line or pid matches, as StackStorm's linux.check_processes.

Prints {pid: command line} as JSON; with the argument `pidlist` the matching pids also go to
stderr, space-separated, because StackStorm's diag_loadavg workflow reads them from there.
"""

import json
import os
import re
import sys


def processes():
    """(pid, state, command line) of every process but this one; vanished ones are skipped."""
    me = str(os.getpid())
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit() and p != me), key=int):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                # The name in parentheses may hold spaces: the state is the first field after it.
                state = handle.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().decode("utf-8", "replace").replace("\x00", " ").strip()
        except (OSError, IndexError):
            continue
        yield pid, state, command


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: check_processes.py state|name|pid CRITERIA [pidlist]", file=sys.stderr)
        return 2
    search, criteria = argv[0], argv[1]
    matched = {}
    for pid, state, command in processes():
        if ((search == "state" and state == criteria) or (search == "pid" and pid == criteria)
                or (search == "name" and re.search(criteria, command))):
            matched[pid] = command
    if "pidlist" in argv[2:]:
        sys.stderr.write(" ".join(matched))
    print(json.dumps(matched))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
