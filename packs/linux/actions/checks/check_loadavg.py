#!/usr/bin/env python3
"""Load average per CPU, as StackStorm's linux.check_loadavg prints it.

Run as a script (not a Python action) so the result has the shell result's shape StackStorm users
read: `stdout` is one number for a period, or {"1", "5", "15"} as JSON for `all`.
"""

import json
import os
import sys


def main(period: str) -> int:
    try:
        with open("/proc/loadavg") as handle:
            loads = handle.read().split()[:3]
    except OSError as exc:
        print(f"Error opening /proc/loadavg: {exc}")
        return 2
    cpus = os.cpu_count() or 1
    per_cpu = {key: str(float(value) / cpus) for key, value in zip(("1", "5", "15"), loads, strict=True)}
    aliases = {"one": "1", "five": "5", "fifteen": "15"}
    period = aliases.get(period, period)
    print(per_cpu[period] if period in per_cpu else json.dumps(per_cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "all"))
