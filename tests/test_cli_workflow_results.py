"""`squall run` and `squall execution get` (their human output) say what a workflow's result says: an Orquesta
workflow's output and errors, why an ActionChain failed or what it published, and the inquiry a paused
workflow waits on with how to answer it; `squall inquiry respond` says when no process will resume the
workflow. They said only the status: `failed` with no reason, `paused` with no inquiry id."""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import TYPE_CHECKING

from tests.conftest import serving
from tests.test_cli import in_process, like_a_process, succeeds
from tests.workflow_helpers import workflow_pack

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest
    from click.testing import Result

_OUTPUT = """
version: 1.0
input: [pw, long]
output:
  - greeting: <% ctx(msg) %>
  - doubled: <% ctx(doubled) %>
  - pw: <% ctx(pw) %>
  - long: <% ctx(long) %>
tasks:
  t1:
    action: core.noop
    next:
      - publish:
          - msg: hello world
          - doubled: [2, 4, 6]
"""

_MISSING = """
version: 1.0
tasks:
  t1:
    action: core.nosuchaction
"""

_FAILS = """
version: 1.0
tasks:
  broke:
    action: core.local cmd="echo first >&2; echo 'disk on fire' >&2; exit 3"
"""

_CHAIN_FAILS = """
chain:
  - name: first
    ref: core.noop
    on-success: second
  - name: second
    ref: core.local
    params:
      cmd: "echo 'no such host' >&2; exit 4"
"""

_CHAIN_OK = """
chain:
  - name: only
    ref: core.local
    params:
      cmd: echo out
    publish:
      said: "{{ only.stdout }}"
      many: [1, 2]
"""

_ASKS = """
version: 1.0
output:
  - answer: <% ctx(answer) %>
tasks:
  ask:
    action: core.ask
    input:
      schema:
        type: object
        properties:
          ok: {type: boolean, required: true}
    next:
      - when: <% succeeded() %>
        publish: answer=<% result().response.ok %>
"""


def _pack(home: Path) -> None:
    workflow_pack(home, {
        "output": ("orquesta", "pw: {type: string, secret: true}\nlong: {type: string}", _OUTPUT),
        "missing": ("orquesta", "", _MISSING),
        "fails": ("orquesta", "", _FAILS),
        "chainfails": ("action-chain", "", _CHAIN_FAILS),
        "chainok": ("action-chain", "", _CHAIN_OK),
        "asks": ("orquesta", "", _ASKS),
        "asksunder": ("action-chain", "", "chain:\n  - name: sub\n    ref: wf.asks\n"),
    })


def _run(cli: Callable[..., Result], *args: str) -> tuple[str, dict]:
    """`squall run ARGS` as people see it, and its record as `--json` gives it."""
    shown = cli("run", *args).stdout
    record = json.loads(succeeds(cli, "execution", "get", shown.split()[1], "--json").stdout)
    return shown, record


def _section(shown: str, name: str) -> list[str]:
    """The indented lines under `name:` in `shown`."""
    lines = shown.splitlines()
    start = lines.index(f"{name}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return [line.strip() for line in lines[start:end]]


def test_an_orquesta_workflows_output_and_errors_are_shown(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its output, each value on a line, long ones cut short, a secret masked as stored; each error's
    message, with its task and why the task failed (the last line of its stderr, its exit code)."""
    _pack(home)
    cli = in_process(home, monkeypatch)
    shown, record = _run(cli, "wf.output", "pw=hunter2", f"long={'x' * 5000}")
    assert record["status"] == "succeeded", record
    output = record["result"]["output"]
    lines = _section(shown, "output")
    assert f"greeting: {output['greeting']}" in lines and f"doubled: {json.dumps(output['doubled'])}" in lines
    assert f"pw: {output['pw']}" in lines and "hunter2" not in shown + cli("execution", "get", record["id"]).stdout
    [long] = [line for line in lines if line.startswith("long: ")]
    assert long.endswith("…") and len(long) < 1000 and output["long"].startswith(long[len("long: "):-1])

    shown, record = _run(cli, "wf.missing")
    [error] = record["result"]["errors"]
    assert record["status"] == "failed" and error["message"] in "\n".join(_section(shown, "errors"))

    shown, record = _run(cli, "wf.fails")
    [error] = record["result"]["errors"]
    [line] = _section(shown, "errors")
    assert line.startswith(f"task {error['task_id']}: {error['message']}"), line
    assert "disk on fire" in line and "first" not in line and "exit code 3" in line
    assert _section(cli("execution", "get", record["id"]).stdout, "errors") == [line]


def test_why_an_action_chain_failed_and_what_it_published_are_shown(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed chain: the task that failed, with the last line of its stderr and its exit code (a task
    that succeeded is not listed); one that succeeded: its published values."""
    _pack(home)
    cli = in_process(home, monkeypatch)
    shown, record = _run(cli, "wf.chainfails")
    assert record["status"] == "failed", record
    [line] = _section(shown, "failed tasks")
    assert line.startswith("second failed: ") and "no such host" in line and "exit code 4" in line, line

    shown, record = _run(cli, "wf.chainok")
    published = record["result"]["published"]
    assert record["status"] == "succeeded" and published, record
    assert _section(shown, "published") == [f"said: {published['said']}", f"many: {json.dumps(published['many'])}"]
    assert "failed tasks:" not in shown


def _respond_command(shown: str) -> list[str]:
    """The `squall inquiry respond` command `shown` says to run, answering `{"ok": true}`."""
    [command] = re.findall(r"`(squall inquiry respond [^`]+)`", shown)
    return shlex.split(command.replace("<json>", '{"ok": true}'))[1:]


def test_a_paused_workflow_names_its_inquiry_and_how_to_answer(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` of a workflow that waits on `core.ask` (its own, or a sub-workflow's) names the inquiry and the
    command that answers it, which works; answered with no `squall serve` running, the command says the
    workflow resumes when one runs."""
    _pack(home)
    cli = in_process(home, monkeypatch)
    for ref in ("wf.asks", "wf.asksunder"):
        done = cli("run", ref)
        assert done.exit_code == 1 and "status: paused" in done.stdout, done.stdout
        [inquiry] = json.loads(succeeds(cli, "inquiry", "list", "--json").stdout)
        command = _respond_command(done.stdout)
        assert command[2] == inquiry["id"], command
        assert _respond_command(cli("execution", "get", done.stdout.split()[1]).stdout) == command
        answered = succeeds(cli, *command).stdout
        assert f"inquiry {inquiry['id']} answered" in answered
        assert f"its workflow {inquiry['parent']} resumes when `squall serve` runs" in answered, answered
        parent = json.loads(succeeds(cli, "execution", "get", inquiry["parent"], "--json").stdout)
        assert parent["status"] == "resuming", parent


def test_an_answer_while_squall_serve_runs_says_no_more(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `squall serve` running, it resumes the workflow: `inquiry respond` says it was answered, and
    nothing about waiting for a serve."""
    _pack(home)
    squall = like_a_process(home, monkeypatch)
    paused = squall("run", "wf.asks")
    assert paused.returncode == 1, paused.stdout
    with serving(home):
        answered = squall(*_respond_command(paused.stdout))
        assert answered.returncode == 0 and " answered: " in answered.stdout, answered.stderr
        assert "resumes when" not in answered.stdout, answered.stdout
        deadline = time.monotonic() + 30
        while (record := json.loads(squall("execution", "get", paused.stdout.split()[1], "--json").stdout))[
                "status"] != "succeeded":
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
