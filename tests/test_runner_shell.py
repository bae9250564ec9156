"""The local shell runners (`local-shell-cmd`, `local-shell-script`), mostly end to end.

Spec §1.4 (runner parameters), §1.5 (script argument passing), §1.7 (exit code to status,
result shape, timeouts) and §1.8 (environment). Commands really run under bash; processes are
checked by pid to make sure timeouts and cancels leave nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import Squall
from engine.runners.shell_template import render_shell_command
from engine.templates import TemplateRenderError, render_values
from tests.conftest import write

PY = shlex.quote(sys.executable)

#: Values that would run commands, split words or expand if pasted into a shell unquoted.
NASTY = [
    '"; touch {tmp}/pwned; echo "',
    "$(touch {tmp}/pwned2)",
    "`touch {tmp}/pwned3`",
    "it's a 'quoted' value",
    "'; touch {tmp}/pwned4; echo '",
    "a  b\tc  *  ?",
    "$HOME ${{PATH}} $$ $1 \\n \\ trailing\\",
    "line one\nline two; touch {tmp}/pwned5",
    "| touch {tmp}/pwned6 && echo & > {tmp}/pwned7 <",
    "-n",
    "",
]


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus a pack of shell actions, written before Squall starts."""
    pack = home / "packs" / "shelltest"
    write(pack / "pack.yaml", """
        name: shelltest
        description: shell runner test pack
        version: 0.1.0
        author: tests
    """)
    for name, cmd in {
        "unquoted": "printf '%s' {{ value }}",
        "double": "printf '%s' \"{{ value }}\"",
        "single": "printf '%s' '{{ value }}'",
        "mixed": "printf '[%s]' pre{{ value }}post \"in {{ value }} side\" 'one {{ value }} two'",
        "filtered": "printf '%s' \"{{ value | upper }}\"",
        "heredoc": "cat <<'EOF'\n{{ value }}\nEOF\ncat <<EOF\n{{ value }}\nEOF",
        "packname": "printf '%s:%s' \"$ST2_ACTION_PACK_NAME\" {{ value }}",
    }.items():
        write(pack / "actions" / f"{name}.yaml", f"""
            name: {name}
            runner_type: local-shell-cmd
            parameters:
              value:
                type: string
                required: true
              cmd:
                immutable: true
                default: {json.dumps(cmd)}
        """)
    write(pack / "actions" / "argv.sh", f"""
        #!/bin/bash
        exec {PY} -c 'import json,sys;print(json.dumps(sys.argv[1:]))' "$@"
    """)
    write(pack / "actions" / "argv.yaml", """
        name: argv
        runner_type: local-shell-script
        entry_point: argv.sh
        parameters:
          name:
            type: string
          flag:
            type: boolean
          disabled:
            type: boolean
            default: false
          empty:
            type: string
            default: ""
          nothing:
            type: string
          count:
            type: integer
          tags:
            type: array
          p_arr:
            type: array
            position: 2
          p_str:
            type: string
            position: 0
          p_obj:
            type: object
            position: 3
          p_bool:
            type: boolean
            position: 1
          p_none:
            type: string
            position: 4
          p_int:
            type: integer
            position: 5
    """)
    script = write(pack / "actions" / "plain.sh", """
        printf 'ran with %s args: %s' "$#" "$*"
    """)
    script.chmod(0o644)
    write(pack / "actions" / "plain.yaml", """
        name: plain
        runner_type: local-shell-script
        entry_point: plain.sh
        parameters:
          first:
            type: string
            position: 0
    """)
    return home


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty folder of its own (tmp_path also holds the Squall home)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    return await app.executions.wait(record["id"], timeout=30)


def _gone(pid: int) -> bool:
    """True once the process no longer exists (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if _gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def _read_pid(path: Path) -> int:
    for _ in range(200):
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was never written")


# ---------------------------------------------------------------------------------------------
# Exit codes, output decoding
# ---------------------------------------------------------------------------------------------


async def test_exit_code_maps_to_status(squall: Squall) -> None:
    for cmd, status, code in [("true", "succeeded", 0), ("exit 1", "failed", 1), ("exit 3", "failed", 3),
                              ("exit 255", "failed", 255), ("kill -TERM $$", "abandoned", -15)]:
        done = await run(squall, "core.local", {"cmd": cmd})
        assert done["status"] == status, cmd
        result = done["result"]
        assert result["return_code"] == code
        assert result["succeeded"] is (code == 0)
        assert result["failed"] is (code != 0)
        assert "error" not in result


async def test_stdout_and_stderr_are_stripped_and_json_decoded(squall: Squall) -> None:
    done = await run(squall, "core.local", {"cmd": "echo 42; echo '{\"a\":1}' >&2"})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == 42
    assert done["result"]["stderr"] == {"a": 1}

    done = await run(squall, "core.local", {"cmd": "echo '{\"a\":1}'; echo oops >&2; exit 1"})
    assert done["status"] == "failed"
    assert done["result"]["stdout"] == {"a": 1}
    assert done["result"]["stderr"] == "oops"


async def test_only_one_trailing_newline_is_stripped(squall: Squall) -> None:
    done = await run(squall, "core.local", {"cmd": "printf 'a b\\n\\n'; printf 'x\\r\\n' >&2"})
    assert done["result"]["stdout"] == "a b\n"
    assert done["result"]["stderr"] == "x"
    done = await run(squall, "core.local", {"cmd": "printf 'no newline'"})
    assert done["result"]["stdout"] == "no newline"
    done = await run(squall, "core.local", {"cmd": "true"})
    assert done["result"]["stdout"] == ""
    assert done["result"]["stderr"] == ""


async def test_output_that_is_not_json_stays_text(squall: Squall) -> None:
    done = await run(squall, "core.local", {"cmd": "echo '[1, 2'; echo true"})
    assert done["result"]["stdout"] == "[1, 2\ntrue"
    done = await run(squall, "core.local", {"cmd": "echo '[1, 2]'; echo null >&2"})
    assert done["result"]["stdout"] == [1, 2]
    assert done["result"]["stderr"] is None


async def test_stdin_is_empty_and_bad_utf8_is_replaced(squall: Squall) -> None:
    done = await run(squall, "core.local", {"cmd": "cat; printf 'a\\377b'", "timeout": 20})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == "a\ufffdb"


# ---------------------------------------------------------------------------------------------
# Timeout and cancel kill the whole process group
# ---------------------------------------------------------------------------------------------


async def test_timeout_kills_the_process_group(squall: Squall, scratch: Path) -> None:
    shell_pid, child_pid = scratch / "shell.pid", scratch / "child.pid"
    cmd = f"echo $$ > {shell_pid}; sleep 30 & echo $! > {child_pid}; echo started; sleep 30"
    done = await run(squall, "core.local", {"cmd": cmd, "timeout": 1})
    assert done["status"] == "timeout"
    result = done["result"]
    assert result["return_code"] == -9
    assert result["failed"] is True and result["succeeded"] is False
    assert result["error"] == "Action failed to complete in 1 seconds"
    assert result["stdout"] == "started"
    for path in (shell_pid, child_pid):
        pid = int(path.read_text())
        assert await _wait_gone(pid), f"process {pid} ({path.name}) outlived the timeout"


async def test_background_child_holding_the_pipes_is_killed_on_timeout(squall: Squall, scratch: Path) -> None:
    """The shell exits at once, but a background child keeps stdout open: still bounded."""
    child_pid = scratch / "child.pid"
    done = await run(squall, "core.local", {"cmd": f"sleep 30 & echo $! > {child_pid}; echo bye", "timeout": 1})
    assert done["status"] == "timeout"
    assert done["result"]["stdout"] == "bye"
    assert await _wait_gone(int(child_pid.read_text()))


async def test_cancel_kills_the_running_command(squall: Squall, scratch: Path) -> None:
    shell_pid, child_pid = scratch / "shell.pid", scratch / "child.pid"
    cmd = f"echo $$ > {shell_pid}; sleep 30 & echo $! > {child_pid}; sleep 30"
    record = await squall.executions.request("core.local", {"cmd": cmd})
    pids = [await _read_pid(shell_pid), await _read_pid(child_pid)]
    assert not any(_gone(pid) for pid in pids)
    await squall.executions.cancel(record["id"])
    done = await squall.executions.wait(record["id"], timeout=10)
    assert done["status"] == "canceled"
    for pid in pids:
        assert await _wait_gone(pid), f"process {pid} outlived the cancel"


# ---------------------------------------------------------------------------------------------
# cwd, env and the variables every action gets
# ---------------------------------------------------------------------------------------------


async def test_cwd_runner_parameter(squall: Squall, scratch: Path) -> None:
    folder = scratch / "work dir"
    folder.mkdir()
    done = await run(squall, "core.local", {"cmd": "pwd -P", "cwd": str(folder)})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == str(folder.resolve())


async def test_missing_cwd_fails(squall: Squall, scratch: Path) -> None:
    done = await run(squall, "core.local", {"cmd": "pwd", "cwd": str(scratch / "nope")})
    assert done["status"] == "failed"
    assert "nope" in done["result"]["error"]


async def test_environment_of_the_action(squall: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-do-not-leak")
    monkeypatch.setenv("ACTION_TEST_VISIBLE", "inherited")
    monkeypatch.setenv("SQUALL_OIDC_SECRET", "oidc-do-not-leak")  # the name docs/ui.md suggests
    monkeypatch.setenv("PGPASSWORD", "pg-do-not-leak")
    monkeypatch.setenv("SQUALL_CLI", "/usr/bin/squall")  # the `squall` pack's actions need it
    cmd = f"{PY} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    record = await squall.executions.request(
        "core.local", {"cmd": cmd, "env": {"FOO": "bar baz", "N": 5, "ST2_ACTION_PACK_NAME": "spoofed"}}
    )
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded"
    env = done["result"]["stdout"]
    assert isinstance(env, dict)
    assert env["FOO"] == "bar baz"
    assert env["N"] == "5"
    assert env["ST2_ACTION_PACK_NAME"] == "core"  # ours override the user's env
    assert env["SQUALL_ACTION_PACK_NAME"] == "core"
    assert env["ST2_ACTION_EXECUTION_ID"] == record["id"]
    assert env["SQUALL_ACTION_EXECUTION_ID"] == record["id"]
    assert env["ST2_ACTION_API_URL"] == squall.config.api_url
    assert env["SQUALL_ACTION_API_URL"] == squall.config.api_url
    assert env["ST2_ACTION_DEBUG"] == "False"
    assert env["ACTION_TEST_VISIBLE"] == "inherited"
    assert env["SQUALL_CLI"] == "/usr/bin/squall"
    for name in ("SLACK_BOT_TOKEN", "SQUALL_OIDC_SECRET", "PGPASSWORD"):
        assert name not in env
    assert not {"xoxb-do-not-leak", "oidc-do-not-leak", "pg-do-not-leak"} & set(env.values())


async def test_pack_name_of_a_custom_pack(squall: Squall) -> None:
    done = await run(squall, "shelltest.packname", {"value": "v"})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == "shelltest:v"


# ---------------------------------------------------------------------------------------------
# Shell injection through cmd templates
# ---------------------------------------------------------------------------------------------


def _expected_output(value: str) -> Any:
    """stdout is JSON-decoded when it is JSON (spec §1.7); `"..."` is a JSON string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


async def test_core_echo_prints_the_message_and_runs_nothing(squall: Squall, scratch: Path) -> None:
    for template in NASTY:
        message = template.format(tmp=scratch)
        done = await run(squall, "core.echo", {"message": message})
        assert done["status"] == "succeeded", done["result"]
        # "-n" is echo's own option, as in StackStorm: it prints nothing (and still runs nothing)
        assert done["result"]["stdout"] == ("" if message == "-n" else _expected_output(message)), message
    assert sorted(p.name for p in scratch.iterdir()) == []


async def test_core_echo_literal_quote_breakout(squall: Squall, scratch: Path) -> None:
    message = f'x"; touch {scratch}/pwned; echo "'
    done = await run(squall, "core.echo", {"message": message})
    assert done["result"]["stdout"] == message
    assert not (scratch / "pwned").exists()


@pytest.mark.parametrize("action", ["unquoted", "double", "single"])
async def test_cmd_template_quoting_contexts_print_the_exact_value(squall: Squall, scratch: Path, action: str) -> None:
    for template in NASTY:
        value = template.format(tmp=scratch)
        done = await run(squall, f"shelltest.{action}", {"value": value})
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["stdout"] == _expected_output(value), value
    assert list(scratch.iterdir()) == []


async def test_cmd_template_mixed_contexts(squall: Squall, scratch: Path) -> None:
    value = f"a 'b' \"c\" $(touch {scratch}/x)"
    done = await run(squall, "shelltest.mixed", {"value": value})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == f"[pre{value}post][in {value} side][one {value} two]"
    assert list(scratch.iterdir()) == []


async def test_cmd_template_filters_apply_to_the_value(squall: Squall) -> None:
    done = await run(squall, "shelltest.filtered", {"value": "it's $(x)"})
    assert done["result"]["stdout"] == "IT'S $(X)"


async def test_cmd_template_heredocs(squall: Squall, scratch: Path) -> None:
    value = f"$(touch {scratch}/x) 'a' \"b\""
    done = await run(squall, "shelltest.heredoc", {"value": value})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == f"{value}\n{value}"
    done = await run(squall, "shelltest.heredoc", {"value": "two\nlines"})
    assert done["status"] == "failed"
    assert "here-document" in done["result"]["error"]
    assert list(scratch.iterdir()) == []


async def test_stored_cmd_shows_the_rendered_command(squall: Squall) -> None:
    done = await run(squall, "core.echo", {"message": "hello"})
    assert done["parameters"]["cmd"] == 'echo "hello"'
    assert done["result"]["stdout"] == "hello"


# ---------------------------------------------------------------------------------------------
# render_shell_command
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ('echo "{{ m }}"', 'echo "${SQUALL_ARG_0}"'),
        ("echo {{ m }}", 'echo "${SQUALL_ARG_0}"'),
        ("echo '{{ m }}'", "echo ''\"${SQUALL_ARG_0}\"''"),
        ("echo 'a {{ m }} b'", "echo 'a '\"${SQUALL_ARG_0}\"' b'"),
        ("echo --x={{ m }}!", 'echo --x="${SQUALL_ARG_0}"!'),
        ('echo "a \\" {{ m }}"', 'echo "a \\" ${SQUALL_ARG_0}"'),
        ("echo \\' {{ m }}", "echo \\' \"${SQUALL_ARG_0}\""),
        ("echo 'a\\' {{ m }}", "echo 'a\\' \"${SQUALL_ARG_0}\""),
        ("echo $'{{ m }}'", "echo $''\"${SQUALL_ARG_0}\"$''"),
        ('echo "$(echo {{ m }})"', 'echo "$(echo "${SQUALL_ARG_0}")"'),
        ("# it's\necho {{ m }}", '# it\'s\necho "${SQUALL_ARG_0}"'),
        ("echo $#{{ m }}", 'echo $#"${SQUALL_ARG_0}"'),
        ("cat <<EOF\n'{{ m }}'\nEOF\necho {{ m }}", "cat <<EOF\n'${SQUALL_ARG_0}'\nEOF\necho \"${SQUALL_ARG_1}\""),
        ('echo "\\{{ m }}"', 'echo "\\\\${SQUALL_ARG_0}"'),
        ("echo plain", "echo plain"),
    ],
)
def test_render_shell_command_placement(template: str, text: str) -> None:
    rendered, env = render_shell_command(template, {"m": "v"})
    assert rendered == text
    assert set(re.findall(r"SQUALL_ARG_\d+", text)) == set(env)
    assert all(value == "v" for value in env.values())


def _expand(text: str, env: dict[str, str]) -> str:
    """The rendered text with each reference replaced by <its value>, to check the numbering."""
    return re.sub(r"\$\{(SQUALL_ARG_\d+)\}", lambda m: f"<{env[m[1]]}>", text)


def test_render_shell_command_numbers_each_output_and_keeps_blocks_literal() -> None:
    """Each value is its own variable. None is written "None", as Jinja writes it elsewhere (the
    command stored with the execution) and StackStorm runs it: it ran as "" while the record showed
    "None"."""
    template = '{% if flag %}cp {{ src }} "{{ dst }}"{% else %}no{% endif %} {{ none }} {{ n + 1 }} {{ "lit" }}'
    rendered, env = render_shell_command(template, {"flag": True, "src": "a b", "dst": "c", "none": None, "n": 1})
    assert _expand(rendered, env) == 'cp "<a b>" "<c>" "<None>" "<2>" "<lit>"'
    assert sorted(env.values()) == sorted(["a b", "c", "None", "2", "lit"])
    assert sorted(env) == [f"SQUALL_ARG_{n}" for n in range(5)]
    assert rendered.replace("$SQUALL_ARG_", "").count("None") == 0  # the text is a variable, never pasted
    assert render_values({"cmd": template}, {"flag": True, "src": "a b", "dst": "c", "none": None, "n": 1}
                         )["cmd"] == 'cp a b "c" None 2 lit'
    rendered, env = render_shell_command(template, {"flag": False, "none": None, "n": 1})
    assert _expand(rendered, env) == 'no "<None>" "<2>" "<lit>"'
    assert len(env) == 3


def test_render_shell_command_captured_blocks_keep_the_real_value() -> None:
    template = "{% set x %}{{ v }}!{% endset %}{% macro q(a) %}{{ a }}{% endmacro %}echo {{ x }} {{ q(v) }}"
    rendered, env = render_shell_command(template, {"v": "a b"})
    assert _expand(rendered, env) == 'echo "<a b!>" "<a b>"'
    assert "\x00" not in "".join(env.values())


def test_render_shell_command_quoted_heredoc() -> None:
    template = "cat <<'EOF'\n{{ v }}\nEOF\necho {{ v }}"
    rendered, env = render_shell_command(template, {"v": "$(touch x) a"})
    assert rendered == "cat <<'EOF'\n$(touch x) a\nEOF\necho \"${SQUALL_ARG_1}\""
    assert env["SQUALL_ARG_1"] == "$(touch x) a"
    for value in ("two\nlines", "EOF"):
        with pytest.raises(TemplateRenderError, match="here-document"):
            render_shell_command(template, {"v": value})
    with pytest.raises(TemplateRenderError, match="delimiter"):
        render_shell_command("cat <<{{ v }}\nx\n", {"v": "EOF"})


def test_render_shell_command_loops_and_repeats() -> None:
    rendered, env = render_shell_command("{% for x in xs %}echo '{{ x }}'; {% endfor %}", {"xs": ["a", "b"]})
    assert rendered == "echo ''\"${SQUALL_ARG_0}\"''; echo ''\"${SQUALL_ARG_1}\"''; "
    assert env == {"SQUALL_ARG_0": "a", "SQUALL_ARG_1": "b"}


def test_render_shell_command_errors_are_template_errors() -> None:
    with pytest.raises(TemplateRenderError):
        render_shell_command("echo {{ missing }}", {})
    with pytest.raises(TemplateRenderError):
        render_shell_command("echo {{ unclosed", {"unclosed": 1})
    with pytest.raises(TemplateRenderError, match="filter"):
        render_shell_command('echo {% filter replace("0", "x") %}{{ v }}{% endfilter %}', {"v": "abc"})


def test_render_shell_command_is_reentrant_between_calls() -> None:
    first = render_shell_command("a {{ x }}", {"x": 1})
    second = render_shell_command("b {{ x }} {{ y }}", {"x": 2, "y": 3})
    assert first == ('a "${SQUALL_ARG_0}"', {"SQUALL_ARG_0": "1"})
    assert second == ('b "${SQUALL_ARG_0}" "${SQUALL_ARG_1}"', {"SQUALL_ARG_0": "2", "SQUALL_ARG_1": "3"})


_CASES: list[tuple[str, Any]] = [
    ("printf '%s' {{ v }}", lambda v: v),
    ('printf \'%s\' "{{ v }}"', lambda v: v),
    ("printf '%s' '{{ v }}'", lambda v: v),
    ("printf '%s' x{{ v }}\"{{ v }}\"'{{ v }}'x", lambda v: f"x{v}{v}{v}x"),
    ("printf '%s' $'a\\t{{ v }}\\'b'", lambda v: f"a\t{v}'b"),
    ("# it's a comment\nprintf '%s' {{ v }}", lambda v: v),
    ("printf '%s' {{ v }} # it's fine\nprintf '%s' '{{ v }}'", lambda v: v + v),
    ("(printf '%s' {{ v }}) # don't\nprintf '%s' {{ v }}", lambda v: v + v),
    ("set -- a b; printf '%s' $#{{ v }}", lambda v: "2" + v),
    ("printf '%s' \"$(printf '%s' {{ v }})\"", lambda v: v.rstrip("\n")),
    ('printf \'%s\' "$(printf \'%s\' "{{ v }}")"', lambda v: v.rstrip("\n")),
    ("printf '%s' \"`printf '%s' {{ v }}`\"", lambda v: v.rstrip("\n")),
    ("printf '%s' \"${UNSET_X:-{{ v }}}\" ${UNSET_X:-{{ v }}}", lambda v: v + v),
    ("cat <<EOF\n{{ v }} \"{{ v }}\" '{{ v }}'\nEOF\nprintf '%s' '{{ v }}'", lambda v: f"{v} \"{v}\" '{v}'\n{v}"),
    ("cat <<-END\n\t{{ v }} x\n\tEND\n", lambda v: f"{v} x\n"),
    ("cat <<A; cat <<'B'\n{{ v }}\nA\nquoted '$x'\nB\nprintf '%s' '{{ v }}'", lambda v: f"{v}\nquoted '$x'\n{v}"),
]


def _bash(template: str, value: str, cwd: Path) -> str:
    text, env = render_shell_command(template, {"v": value})
    proc = subprocess.run(["bash", "-c", text], env={"PATH": os.environ["PATH"], **env}, cwd=cwd,
                          capture_output=True, timeout=10)
    assert proc.returncode == 0, (text, proc.stderr)
    return proc.stdout.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(("template", "expected"), _CASES)
def test_rendered_command_prints_nasty_values_exactly(template: str, expected: Any, scratch: Path) -> None:
    for nasty in NASTY:
        value = nasty.format(tmp=scratch)
        assert _bash(template, value, scratch) == expected(value), value
    assert list(scratch.iterdir()) == []


def test_rendered_arithmetic(scratch: Path) -> None:
    assert _bash("printf '%s' $(( {{ v }} * 2 )); (( {{ v }} > 1 )) && printf ' big'", "21", scratch) == "42 big"
    assert _bash("printf '%s' $(( ({{ v }} + 1) << 1 ))\nprintf ' %s' {{ v }}", "1", scratch) == "4 1"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))))
def test_rendered_command_prints_any_value_exactly(value: str, scratch: Path) -> None:
    for template, expected in _CASES:
        assert _bash(template, value, scratch) == expected(value), template


# ---------------------------------------------------------------------------------------------
# local-shell-script argument passing
# ---------------------------------------------------------------------------------------------


async def test_script_named_then_positional_arguments(squall: Squall) -> None:
    done = await run(squall, "shelltest.argv", {
        "name": "alice", "flag": True, "count": 5, "tags": ["x", "y"],
        "p_str": "hello world", "p_bool": True, "p_arr": ["a", "b", "c"], "p_obj": {"k": 1}, "p_int": 7,
    })
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == [
        "--name=alice", "--flag", "--count=5", "--tags=['x', 'y']",
        "hello world", "1", "a,b,c", '{"k": 1}', "", "7",
    ]


async def test_script_false_none_and_empty_are_omitted_and_positionals_always_present(squall: Squall) -> None:
    done = await run(squall, "shelltest.argv", {"flag": False, "name": "", "p_bool": False, "p_arr": [],
                                                "p_obj": {}})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == ["", "0", "", "", "", ""]
    done = await run(squall, "shelltest.argv", {})
    assert done["result"]["stdout"] == ["", "", "", "", "", ""]


async def test_script_parameters_are_cast_before_serialising(squall: Squall) -> None:
    done = await run(squall, "shelltest.argv", {"p_arr": "a, b", "p_bool": "false", "count": "3", "flag": "yes"})
    assert done["result"]["stdout"] == ["--flag", "--count=3", "", "0", "a,b", "", "", ""]


async def test_a_rule_template_rendering_a_null_array_or_object_passes_nothing(squall: Squall) -> None:
    """A rule's `tags: "{{ trigger.body.tags }}"` with a webhook body `{"tags": null}` renders "None": the
    array was `['None']`, so the script got a literal `None` (and an object was refused). StackStorm's
    `_cast_object` reads it as null: a positional argument "" and no named one."""
    template = "{{ trigger.body.tags }}"
    record = await squall.executions.request(
        "shelltest.argv", {"tags": template, "p_arr": template, "p_obj": template}, {},
        extra_template_context={"trigger": {"body": {"tags": None}}}, render=True)
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == ["", "", "", "", "", ""]
    assert (done["parameters"].get("tags"), done["parameters"].get("p_arr")) == (None, None)


async def test_script_kwarg_op_override(squall: Squall) -> None:
    done = await run(squall, "shelltest.argv", {"name": "bob", "flag": True, "kwarg_op": "-", "p_str": "x"})
    assert done["result"]["stdout"] == ["-name=bob", "-flag", "x", "", "", "", "", ""]


async def test_script_values_arrive_intact_as_single_arguments(squall: Squall, scratch: Path) -> None:
    name = f"it's \"$(touch {scratch}/a)\" `touch {scratch}/b` ; rm -rf ~ *"
    positional = "  spaced  \n  $HOME  'q' \"d\" "
    done = await run(squall, "shelltest.argv", {"name": name, "p_str": positional, "p_arr": ["x y", "$(z)"]})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == [f"--name={name}", positional, "", "x y,$(z)", "", "", ""]
    assert list(scratch.iterdir()) == []


async def test_runner_parameters_are_not_arguments(squall: Squall, scratch: Path) -> None:
    done = await run(squall, "shelltest.argv", {"cwd": str(scratch), "timeout": 30, "env": {"X": "1"},
                                                "debug": False})
    assert done["result"]["stdout"] == ["", "", "", "", "", ""]


async def test_script_without_shebang_or_executable_bit_runs(squall: Squall, home: Path) -> None:
    done = await run(squall, "shelltest.plain", {"first": "one two"})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == "ran with 1 args: one two"


async def test_script_debug_traces_a_script_without_shebang(squall: Squall) -> None:
    done = await run(squall, "shelltest.plain", {"first": "x", "debug": True})
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == "ran with 1 args: x"
    assert "+ printf" in done["result"]["stderr"]
    done = await run(squall, "shelltest.plain", {"first": "x"})
    assert done["result"]["stderr"] == ""


async def test_script_exit_code_and_stderr(squall: Squall, home: Path) -> None:
    script = home / "packs" / "shelltest" / "actions" / "plain.sh"
    script.write_text("echo 'went wrong' >&2\nexit 4\n")
    done = await run(squall, "shelltest.plain", {})
    assert done["status"] == "failed"
    assert done["result"]["return_code"] == 4
    assert done["result"]["stderr"] == "went wrong"


async def test_a_canceled_command_leaves_no_unretrieved_error_behind(tmp_path: Path) -> None:
    """Canceling a run (a workflow's cancel) stops its output readers; their gather ended with an error
    nobody read, which asyncio logged as a traceback ("exception was never retrieved") at every cancel."""
    import gc

    from engine.runners.shell import run_process

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        started = tmp_path / "started"
        run = asyncio.create_task(run_process(["sh", "-c", f"echo out; touch {started}; sleep 30"],
                                              env=dict(os.environ), cwd=str(tmp_path), timeout=60))
        for _ in range(400):
            if started.exists():
                break
            await asyncio.sleep(0.02)
        assert started.exists()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []


# ---------------------------------------------------------------------------------------------
# A kill that leaves something holding the output: the run still ends
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait after a kill, cut so the tests that reach its end do not take 5 s each."""
    import engine.runners.shell as shell

    monkeypatch.setattr(shell, "KILL_GRACE", 0.5)


def _kill(pid_file: Path) -> None:
    """Kill the process named in `pid_file`, which the test left running on purpose."""
    import signal

    with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


#: A command whose child leaves the process group (setsid) with the output pipes open: killing the
#: group cannot reach it, and the run waited until it ended by itself.
_ESCAPING = "setsid sh -c 'echo $$ > {pid}; exec sleep 600' & echo started; sleep 600"


async def test_timeout_ends_the_run_when_a_process_outside_the_group_holds_the_output(
        squall: Squall, scratch: Path, short_grace: None) -> None:
    pid_file = scratch / "escaped.pid"
    try:
        record = await squall.executions.request("core.local", {"cmd": _ESCAPING.format(pid=pid_file),
                                                                "timeout": 1})
        done = await squall.executions.wait(record["id"], timeout=20)
        assert done["status"] == "timeout"
        result = done["result"]
        assert result["return_code"] == -9
        assert result["stdout"] == "started"
        assert result["error"].startswith("Action failed to complete in 1 seconds; ")
        assert "still held its output open" in result["error"] and "may still be running" in result["error"]
        assert not _gone(await _read_pid(pid_file))  # it did escape; the test kills it
    finally:
        _kill(pid_file)


async def test_cancel_ends_the_run_when_a_process_outside_the_group_holds_the_output(
        squall: Squall, scratch: Path, short_grace: None) -> None:
    pid_file = scratch / "escaped.pid"
    try:
        record = await squall.executions.request("core.local", {"cmd": _ESCAPING.format(pid=pid_file)})
        await _read_pid(pid_file)
        await squall.executions.cancel(record["id"])
        done = await squall.executions.wait(record["id"], timeout=20)
        assert done["status"] == "canceled"
        assert done["result"]["error"] == "canceled by request"
        assert "may still be running" in done["result"]["stray_processes"]
    finally:
        _kill(pid_file)


# ---------------------------------------------------------------------------------------------
# Output over the limit says it was cut
# ---------------------------------------------------------------------------------------------


async def test_output_over_the_limit_is_cut_and_says_so(squall: Squall) -> None:
    from engine.runners import OUTPUT_LIMIT

    cmd = f"head -c {OUTPUT_LIMIT + 10} /dev/zero | tr '\\0' a; echo fine >&2"
    done = await run(squall, "core.local", {"cmd": cmd})
    assert done["status"] == "succeeded"
    result = done["result"]
    assert len(result["stdout"]) == OUTPUT_LIMIT
    assert result["stderr"] == "fine"
    assert result["truncated"] == f"stdout was cut at {OUTPUT_LIMIT} bytes"


async def test_truncated_names_each_stream_cut_and_only_those(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.runners.shell as shell

    monkeypatch.setattr(shell, "OUTPUT_LIMIT", 100)
    env, cwd = dict(os.environ), str(tmp_path)
    exact = await shell.run_process(["sh", "-c", "printf '%100s' x; printf '%100s' y >&2"], env=env, cwd=cwd,
                                    timeout=30)
    assert "truncated" not in exact
    assert len(exact["stdout"]) == 100 and len(exact["stderr"]) == 100
    both = await shell.run_process(["sh", "-c", "printf '%101s' x; printf '%250s' y >&2"], env=env, cwd=cwd,
                                   timeout=30)
    assert both["truncated"] == "stdout and stderr were cut at 100 bytes each"
    assert both["stdout"] == " " * 100 and both["stderr"] == " " * 100
    err = await shell.run_process(["sh", "-c", "printf '%101s' y >&2; sleep 30"], env=env, cwd=cwd, timeout=1)
    assert err["return_code"] == -9
    assert err["truncated"] == "stderr was cut at 100 bytes"


# ---------------------------------------------------------------------------------------------
# Values the OS cannot carry are refused before anything runs
# ---------------------------------------------------------------------------------------------

#: The kernel's limit on one argument or environment string on x86-64 and most machines (32 pages).
_STRING_LIMIT = 32 * os.sysconf("SC_PAGESIZE")


def _refused(done: dict[str, Any]) -> str:
    """The error of a run that was refused before it started: failed, no traceback, no return code."""
    assert done["status"] == "failed", done["result"]
    result = done["result"]
    assert "traceback" not in result, result["traceback"]
    assert "return_code" not in result
    return str(result["error"])


async def test_a_nul_byte_in_a_parameter_is_refused_naming_it(squall: Squall, scratch: Path) -> None:
    error = _refused(await run(squall, "shelltest.double", {"value": f"a\x00b; touch {scratch}/x"}))
    assert error.startswith('parameter "value" holds a NUL byte'), error
    assert "cannot carry" in error
    error = _refused(await run(squall, "shelltest.argv", {"name": "a\x00b"}))
    assert error.startswith('parameter "name" holds a NUL byte'), error
    error = _refused(await run(squall, "shelltest.argv", {"p_str": "a\x00b"}))
    assert error.startswith('parameter "p_str" holds a NUL byte'), error
    error = _refused(await run(squall, "core.local", {"cmd": "echo hi", "env": {"A": "a\x00b"}}))
    assert error.startswith('parameter "env" (variable "A") holds a NUL byte'), error
    error = _refused(await run(squall, "core.local", {"cmd": "echo hi", "cwd": "/tmp\x00/x"}))
    assert error.startswith('parameter "cwd" holds a NUL byte'), error
    assert list(scratch.iterdir()) == []


async def test_a_value_over_the_kernels_string_limit_is_refused_naming_it(squall: Squall) -> None:
    big = "x" * 200_000
    for ref, params, name in [("shelltest.double", {"value": big}, 'parameter "value"'),
                              ("core.echo", {"message": big}, 'parameter "message"'),
                              ("shelltest.argv", {"name": big}, 'parameter "name"'),
                              ("shelltest.argv", {"p_str": big}, 'parameter "p_str"'),
                              ("core.local", {"cmd": "true", "env": {"BIG": big}}, 'parameter "env" (variable "BIG")'),
                              ("core.local", {"cmd": f"echo {big}"}, 'parameter "cmd"')]:
        error = _refused(await run(squall, ref, params))
        assert error.startswith(f"{name} is 200"), (ref, error)
        assert f"at most {_STRING_LIMIT} bytes" in error, error
    # Just under the limit it runs, and arrives whole.
    fits = "y" * (_STRING_LIMIT - len("SQUALL_ARG_0=") - 1)
    done = await run(squall, "shelltest.double", {"value": fits})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == fits


async def test_values_too_big_together_are_refused_without_a_traceback(squall: Squall) -> None:
    env = {f"V{n}": "z" * 100_000 for n in range(int(os.sysconf("SC_ARG_MAX") / 100_000) + 2)}
    error = _refused(await run(squall, "core.local", {"cmd": "true", "env": env}))
    assert "arguments and environment" in error and "together" in error, error
    assert "Argument list too long" not in error


async def test_a_cancel_while_the_command_starts_kills_its_group_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_grace: None) -> None:
    """Canceled while asyncio still connected its pipes (the command already running): asyncio's own clean-up
    killed the leader alone and then waited for pipes a child of the command held open, so the cancel hung for
    as long as that child ran (a CI run's sudo test: sudo killed, the root command it started kept the pipes).
    The start is now seen through and the run ended as any cancel ends it, its whole group killed."""
    import asyncio.base_subprocess as base_subprocess

    from engine.runners.shell import run_process

    gate = asyncio.Event()
    connect = base_subprocess.BaseSubprocessTransport._connect_pipes

    async def held_open(self: Any, waiter: Any) -> None:  # the loop slow to connect the pipes
        await gate.wait()
        await connect(self, waiter)

    monkeypatch.setattr(base_subprocess.BaseSubprocessTransport, "_connect_pipes", held_open)
    child_pid = tmp_path / "child.pid"
    run = asyncio.create_task(run_process(["sh", "-c", f"sleep 60 & echo $! > {child_pid}; wait"],
                                          env=dict(os.environ), cwd=str(tmp_path), timeout=60))
    child = await _read_pid(child_pid)  # the command runs; its start has not returned
    try:
        run.cancel()
        await asyncio.sleep(0.1)
        gate.set()
        done, _ = await asyncio.wait([run], timeout=20)  # a bound on a hang only: it takes about a second
        assert done, "the cancel waited for the pipes the command's child held open"
        assert run.cancelled()
        for _ in range(100):
            if _gone(child):
                break
            await asyncio.sleep(0.05)
        assert _gone(child), "the command's child outlived the cancel"
    finally:
        _kill(child_pid)


#: Here-document words as pack authors may write them, with the quoting bash removes.
HEREDOC_WORDS = ["EOF", "'EOF'", '"EOF"', "$'EOF'", '$"EOF"', "$EOF", "'E\\OF'", '"E\\OF"', '"E\\$F"', "E\\OF",
                 "E$'O'F", "E'O'\"F\"", "$'E'$\"OF\"", '"a\\"b"', "'a\"b'"]


@pytest.mark.parametrize("word", HEREDOC_WORDS)
def test_the_heredoc_delimiter_is_the_line_bash_ends_the_document_at(word: str) -> None:
    """The line Squall takes for a here-document's end is the one bash ends it at (bash itself says): a value
    equal to bash's delimiter must be refused in a quoted document, or the next value runs as a command
    (`<<$'EOF'` ends at `EOF`; Squall took `$EOF` and let the value `EOF` through)."""
    from engine.runners.shell_template import _heredoc_delimiter

    delimiter = _heredoc_delimiter(word)
    assert delimiter is not None
    script = f"cat <<{word}\ninside\n{delimiter}\necho after\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.stdout == "inside\nafter\n", (word, delimiter, done.stdout, done.stderr)


@pytest.mark.parametrize("word", ["$'EOF'", '$"EOF"', "E$'O'F", "'E\\OF'"])
def test_a_value_equal_to_an_unusual_quoted_delimiter_is_refused(word: str, tmp_path: Path) -> None:
    """A quoted document whose word bash reads otherwise than it is written: a value equal to bash's delimiter
    is refused, and rendered commands run nothing of the value that follows it (no marker file)."""
    from engine.runners.shell_template import _heredoc_delimiter

    marker = tmp_path / "pwned"
    template = f"cat <<{word}\n{{{{ a }}}}\n{{{{ b }}}}\n{_heredoc_delimiter(word)}"
    with pytest.raises(TemplateRenderError, match="could end it early"):
        render_shell_command(template, {"a": _heredoc_delimiter(word), "b": f"touch {marker}"})
    rendered, env = render_shell_command(template, {"a": "x", "b": f"touch {marker}"})
    done = subprocess.run(["bash", "-c", rendered], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=10)
    assert done.stdout == f"x\ntouch {marker}\n" and not marker.exists()


def test_an_ansi_c_delimiter_with_an_escape_is_refused() -> None:
    """`<<$'E\\x4fF'` ends at `EOF` in bash, which decodes the escape: Squall refuses to guess the line."""
    with pytest.raises(TemplateRenderError, match="backslash escape"):
        render_shell_command("cat <<$'E\\x4fF'\n{{ a }}\nEOF", {"a": "x"})
