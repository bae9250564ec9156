"""Start-up (issue 21): `squall serve`'s engine imports what its config uses, when it uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

#: Libraries only some configurations or requests need; none may load while the engine starts.
LAZY = ("requests", "asyncssh", "yaql", "orquesta", "jsonschema", "jsonpath_ng", "semver", "httpx",
        "psycopg", "procrastinate", "wordllama", "opentelemetry.sdk", "sqlalchemy.dialects.postgresql")

PROBE = """
import asyncio, json, sys
from bot.app import Squall
from engine.config import load_config

async def main():
    squall = await Squall.start(load_config(sys.argv[1]))
    loaded = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
    await squall.close()
    print(json.dumps(loaded))

asyncio.run(main())
"""


def test_the_engine_starts_without_the_libraries_its_config_does_not_use(home: Path) -> None:
    """The shipped packs and the default config (SQLite, the local executor, no OIDC, no traces):
    runners, workflow engines and validators that may never be used load at their first use."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(home / "config.yml"), json.dumps(LAZY)], cwd=home,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


#: What the `squall` command itself (every command group, as `squall serve` and `squall --help` load it)
#: leaves to the commands that use it.
CLI_LAZY = ("rich.table", "sqlalchemy", "fastapi", "uvicorn", "jinja2", "engine.storage", "bot.app")

CLI_PROBE = """
import json, sys
import bot.cli
print(json.dumps([name for name in json.loads(sys.argv[1]) if name in sys.modules]))
"""


def test_the_squall_command_loads_tables_and_the_engine_only_for_commands_that_use_them() -> None:
    done = subprocess.run([sys.executable, "-c", CLI_PROBE, json.dumps(CLI_LAZY)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
