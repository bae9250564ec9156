"""The `squall` command line: run actions, inspect executions, manage packs, keys and rules, serve.

One module per command group; `common.py` holds what they share (the root app, consoles,
config, errors as exits, pack loading) and `client.py` the line to a running `squall serve`.
Imports go one way, this package → groups → `common`, so there is no cycle; the whole command
tree is wired here, in the order `squall --help` lists it.

Exit codes are a contract (README's list; `common.py`): 0 success, 1 the action failed (or timed
out), 2 bad input, 3 Squall cannot work on this machine's setup, 128 + N stopped by signal N. Every
read command takes `--json` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

from bot.cli import actions, aliases, apikeys, audit, executions, inquiries, keys, packs, rules, sensors, serve, users
from bot.cli.common import app

__all__ = ["app", "main"]

app.command()(executions.run)
app.command()(serve.chat)
app.command()(serve.serve)
app.command()(serve.worker)
app.add_typer(executions.execution_app, name="execution")
app.add_typer(actions.action_app, name="action")
app.add_typer(packs.pack_app, name="pack")
app.add_typer(aliases.alias_app, name="alias")
app.add_typer(apikeys.apikey_app, name="apikey")
app.add_typer(users.user_app, name="user")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(inquiries.inquiry_app, name="inquiry")
app.add_typer(keys.key_app, name="key")
app.add_typer(rules.rule_app, name="rule")
app.add_typer(sensors.sensor_app, name="sensor")
app.add_typer(rules.trigger_app, name="trigger")
app.add_typer(rules.instance_app, name="trigger-instance")
app.add_typer(rules.enforcement_app, name="rule-enforcement")


def main() -> None:
    """The console script `squall` (pyproject's `bot.cli:main`)."""
    app()

