"""What a hostile chat user, API caller or webhook sender types is data (docs/security.md).

A pack like any other (a `local-shell-cmd` action with `cmd: echo "{{message}}"` and an alias
`say {{message}}`), an encrypted datastore value planted as the secret, and a canary folder that
only a successful injection would write to. Every input is tried through the loopback chat; the
secret, in every shape the test knows how to make of it, must appear in no reply, no execution
record, no log line and nowhere in the database file, and the canary folder must stay empty.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat.bot import ChatBot
from bot.http import create_api
from engine.config import load_config
from tests.conftest import write
from tests.test_chat import settle
from tests.workflow_helpers import children

SECRET = f"Qz7{uuid.uuid4().hex[:20]}Wk"
KEY = "hostile-test-key-0123456789"


def secret_shapes(secret: str = SECRET) -> list[str]:
    """The secret as the known template tricks would spell it out."""
    shapes = [secret, secret[::-1], "-".join(secret), " ".join(secret), "".join(f"{c} " for c in secret),
              ", ".join(repr(c) for c in secret), json.dumps(list(secret)), secret[1:], secret[:-1],
              secret[2:-2], secret.upper(), secret.lower(), secret.encode().hex()]
    shapes += [base64.b64encode(secret.encode()).decode().rstrip("="), base64.b32encode(secret.encode()).decode()]
    return shapes


def leaks(text: str) -> list[str]:
    return [shape for shape in secret_shapes() if shape in text]


def _pack(home: Path, canary: Path) -> None:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          keys: [{KEY}]
        routes:
          ops: {{adapter: loopback, channel: "#ops"}}
    """)
    pack = home / "packs" / "hostile"
    write(pack / "pack.yaml", "ref: hostile\nname: hostile\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "say.yaml", """
        name: say
        runner_type: local-shell-cmd
        parameters:
          message: {type: string, required: true}
          cmd: {default: 'echo "{{message}}"', immutable: true}
    """)
    write(pack / "actions" / "count.yaml", """
        name: count
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'echo $(( {{n}} + 1 ))', immutable: true}
    """)
    write(pack / "actions" / "sort.yaml", """
        name: sort
        runner_type: local-shell-cmd
        parameters:
          file: {type: string, required: true}
          cmd: {default: 'sort -- {{file}} < /dev/null', immutable: true}
    """)
    write(pack / "actions" / "pysay.yaml", """
        name: pysay
        runner_type: python-script
        entry_point: pysay.py
        parameters:
          message: {type: string, required: true}
    """)
    write(pack / "actions" / "pysay.py", """
        from st2common.runners.base_action import Action


        class Say(Action):
            def run(self, message):
                return message
    """)
    for name, fmt in (("say", "say {{message}}"), ("count", "count {{n}}"), ("sort", "sort {{file}}"),
                      ("pysay", "pysay {{message}}")):
        write(pack / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: hostile.{name}
            formats: ["{fmt}"]
            result:
              format: "{{{{ execution.result.result if 'result' in execution.result else execution.result.stdout }}}}"
        """)
    write(pack / "rules" / "hook.yaml", """
        name: hook
        pack: hostile
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: hostile}}
        action: {ref: hostile.say, parameters: {message: "{{ trigger.body.text }}"}}
    """)
    write(pack / "actions" / "ask.yaml",
          "name: ask\nrunner_type: action-chain\nentry_point: chains/ask.yaml\n")
    write(pack / "actions" / "chains" / "ask.yaml", """
        chain:
          - name: ask
            ref: core.ask
            params:
              route: ops
              schema:
                type: object
                properties:
                  text: {type: string, required: true}
            publish:
              text: "{{ ask.response.text }}"
            on-success: echo
          - name: echo
            ref: hostile.say
            params: {message: "{{ text }}"}
    """)
    canary.mkdir()


@pytest.fixture
async def hostile(home: Path, tmp_path: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter, Path]]:
    canary = tmp_path / "canary"
    _pack(home, canary)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    assert squall.registry.errors == []
    await squall.db(squall.datastore.set, "api_token", SECRET, encrypt=True)
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot, loopback, canary
    finally:
        await bot.stop()
        await squall.close()


# (command without the prefix, what the reply must show: "echo" = the value came back as typed,
#  "refused:<word>" = a one-sentence refusal naming <word>, None = anything but a leak or a crash)
HOSTILE: list[tuple[str, str | None]] = [
    # -- template syntax: the value is data, echoed back exactly -----------------------------------
    ("say {{ st2kv.system.api_token | decrypt_kv }}", "echo"),
    ("say {{ st2kv.system.api_token | decrypt_kv | reverse }}", "echo"),
    ("say {{ st2kv.system.api_token | decrypt_kv | list | join('-') }}", "echo"),
    ("say {% for c in st2kv.system.api_token | decrypt_kv %}{{ c }} {% endfor %}", "echo"),
    ("say {{ (st2kv.system.api_token | decrypt_kv)[::-1] }}", "echo"),
    ("say {{ (st2kv.system.api_token | decrypt_kv)[1:] }}", "echo"),
    ("say {{ (st2kv.system.api_token | decrypt_kv) | b64encode }}", "echo"),
    ("say {{ st2kv.system.api_token | decrypt_kv | upper }}", "echo"),
    ("say {% set x = st2kv.system.api_token | decrypt_kv %}{{ x | reverse }}", "echo"),
    ("say {{ st2kv.user.api_token | decrypt_kv }}", "echo"),
    ("say {{ st2kv('system.api_token', decrypt=true) }}", "echo"),
    ("say {{ decrypt_kv(st2kv.system.api_token) }}", "echo"),
    ("say {{ action_context }}", "echo"),
    ("say {{ config_context }}", "echo"),
    ("say {{ st2kv.system }}", "echo"),
    ("say {{ {}.update }}", "echo"),
    ("say {{ 7 * 7 }}", "echo"),
    ("say {{ ''.__class__.__mro__[1].__subclasses__() }}", "echo"),
    ("say {{ cycler.__init__.__globals__.os.popen('touch CANARY/a').read() }}", "echo"),
    ("say {{ lipsum.__globals__['os'].system('touch CANARY/b') }}", "echo"),
    ("say {{ self._TemplateReference__context }}", "echo"),
    ("say {{ 'x' * 20000000 }}", "echo"),
    ("say {{ range(10**9) | list }}", "echo"),
    ("say " + "{{" * 3000 + "x" + "}}" * 3000, None),
    ("say " + "{% if 1 %}" * 500 + "x", None),
    ("say {% raw %}{{ st2kv.system.api_token | decrypt_kv }}{% endraw %}", "echo"),
    ("say {#- comment -#}{{ st2kv.system.api_token|decrypt_kv }}", "echo"),
    # -- runner parameters through key=value: refused, naming the parameter ------------------------
    ('say hi env={"BASH_ENV": "CANARY/evil.sh"}', "refused:env"),
    ('say hi env={"BASH_FUNC_echo%%": "() { touch CANARY/c; }"}', "refused:env"),
    ('say hi env={"LD_PRELOAD": "CANARY/x.so"}', "refused:env"),
    ("say hi cwd=/", "refused:cwd"),
    ("say hi timeout=1", "refused:timeout"),
    ("say hi sudo=true", "refused:sudo"),
    ('say hi cmd="touch CANARY/d"', "refused:cmd"),
    ("say hi cmd=touch", "refused:cmd"),
    ('pysay hi env={"PYTHONPATH": "CANARY"}', "refused:env"),
    ("pysay hi timeout=0", "refused:timeout"),
    ("say hi colour=red", "refused:colour"),
    # -- shell metacharacters in the value: echoed, never run ---------------------------------------
    ("say $(touch CANARY/e)", "echo"),
    ("say `touch CANARY/f`", "echo"),
    ('say "; touch CANARY/g; echo "', None),
    ("say '; touch CANARY/h; echo '", None),
    ("say && touch CANARY/i", "echo"),
    ("say | touch CANARY/j", "echo"),
    ("say ; touch CANARY/k", "echo"),
    ("say ${IFS}touch${IFS}CANARY/l", "echo"),
    ("say a[$(touch CANARY/m)]", "echo"),
    ("say $'\\ntouch CANARY/n'", "echo"),
    ("say > CANARY/o", "echo"),
    ("say line1\ntouch CANARY/p", None),
    ("say x\r\ntouch CANARY/q", None),
    ("say nul\x00touch CANARY/r", None),
    ("say \u202etouch CANARY/s", "echo"),
    ("say " + "A" * 50_000, None),
    ("say it's", "echo"),
    ('say "unterminated', None),
    # -- arithmetic contexts: only numbers get there -----------------------------------------------
    ("count a[$(touch CANARY/t)]", "refused:n"),
    ("count 1+1", "refused:n"),
    ("count x", "refused:n"),
    ("count 1e400", "refused:n"),
    ("count n=a[$(touch CANARY/u)]", "refused:n"),
    ("count 41", None),
    # -- options: after `--` a value is an operand ---------------------------------------------------
    ("sort -oCANARY/v", None),
    ("sort --output=CANARY/w", None),
    ("sort --files0-from=CANARY", None),
    # -- the Python runner: data too ----------------------------------------------------------------
    ("pysay {{ st2kv.system.api_token | decrypt_kv }}", "echo"),
    ("pysay __import__('os').system('touch CANARY/x')", "echo"),
    # -- built-in commands with hostile arguments ---------------------------------------------------
    ("execution " + "x" * 60_000, None),
    ("execution %", None),
    ("execution ' OR 1=1 --", None),
    ("cancel ../../etc/passwd", None),
    ("retry {{ st2kv.system.api_token | decrypt_kv }}", None),
    ("respond nope {{ st2kv.system.api_token | decrypt_kv }}", None),
    ("help (a+)+$", None),
    ("help {{ st2kv.system.api_token | decrypt_kv }}", None),
]


def _one_sentence(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text and len(text) < 400


async def test_hostile_chat_inputs_are_data(hostile, caplog: pytest.LogCaptureFixture, home: Path) -> None:
    squall, bot, loopback, canary = hostile
    caplog.set_level(logging.DEBUG)
    assert len(HOSTILE) >= 60
    problems: list[str] = []
    for index, (command, expect) in enumerate(HOSTILE):
        typed = command.replace("CANARY", str(canary))
        before = len(loopback.posted)
        await loopback.say("!" + typed, user="mallory", channel="#ops")
        await settle(squall, bot)
        replies = [p.text for p in loopback.posted[before:]] + [e for p in loopback.posted[before:]
                                                                 for e in p.edits]
        shown = f"#{index} {command[:70]!r}"
        if list(canary.iterdir()):
            problems.append(f"{shown}: the canary folder got {sorted(p.name for p in canary.iterdir())}")
        if any(leaks(text) for text in replies):
            problems.append(f"{shown}: a reply shows the secret: {replies}")
        if any("something went wrong" in text for text in replies):
            problems.append(f"{shown}: reached the last-resort handler: {replies}")
        if not replies:
            problems.append(f"{shown}: no answer at all")
        if expect == "echo":
            value = typed.split(" ", 1)[1]
            if not any(value.strip() in text for text in replies):
                problems.append(f"{shown}: the value did not come back as typed: {[r[:200] for r in replies]}")
        elif expect and expect.startswith("refused:"):
            word = expect.split(":", 1)[1]
            refusal = [t for t in replies if t.startswith("I can't run that")]
            if not refusal or word not in refusal[0] or not _one_sentence(refusal[0]):
                problems.append(f"{shown}: expected one sentence refusing {word!r}, got {replies}")
        for path in canary.iterdir():
            path.unlink()
    assert not problems, "\n".join(problems)

    records = json.dumps(await squall.executions.list(limit=10_000), default=str)
    assert leaks(records) == []
    assert leaks(json.dumps(await squall.db(squall.store.audit_list, 10_000), default=str)) == []
    assert leaks("\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)) == []
    for file in (f for f in (home / "data").glob("squall.db*") if f.is_file()):
        raw = file.read_bytes().decode("latin-1")
        assert leaks(raw) == [], file


async def _finished(squall: Squall, action: str, count: int) -> list[dict]:
    for _ in range(2000):
        rows = await squall.executions.list(action=action, limit=1000)
        if len(rows) >= count and all(r["status"] not in ("requested", "scheduled", "running") for r in rows):
            return rows
        await asyncio.sleep(0.01)
    raise AssertionError(f"{action} did not finish")


PROBES = [
    "{{ st2kv.system.api_token | decrypt_kv }}",
    "{{ st2kv.system.api_token | decrypt_kv | reverse }}",
    "{{ st2kv.system.api_token | decrypt_kv | list | join('-') }}",
    "{% for c in st2kv.system.api_token | decrypt_kv %}{{ c }} {% endfor %}",
    "{{ (st2kv.system.api_token | decrypt_kv)[1:] }}",
    "{{ st2kv.system.api_token | decrypt_kv | b64encode }}",
    "{{ st2kv.system.api_token | decrypt_kv | to_json_string }}",
]


async def test_a_planted_secret_leaks_through_no_input_path(hostile, caplog: pytest.LogCaptureFixture,
                                                             home: Path) -> None:
    """Chat, API alias execution, a webhook payload into a rule and an inquiry answer."""
    squall, bot, loopback, canary = hostile
    caplog.set_level(logging.DEBUG)
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as api:
        for probe in PROBES:
            await loopback.say(f"!say {probe}", user="mallory", channel="#ops")
            answer = await api.post("/api/v1/aliasexecution", json={"command": f"say {probe}", "user": "mallory"})
            assert answer.status_code == 201, answer.text
            hook = await api.post("/api/v1/webhooks/hostile", json={"text": probe})
            assert hook.status_code in (200, 202), hook.text
        await squall.triggers.settle()
        await settle(squall, bot)

        # An inquiry answer flows through a workflow into the next task's parameters.
        workflow = await squall.executions.request("hostile.ask", {}, {"user": "tester"})
        for _ in range(2000):
            asked = [c for c in await children(squall, workflow["id"]) if c["runner"] == "inquirer"]
            if asked and asked[0]["status"] == "pending":
                break
            await asyncio.sleep(0.01)
        answered = await api.put(f"/api/v1/inquiries/{asked[0]['id']}",
                                 json={"response": {"text": PROBES[1]}, "user": "mallory"})
        assert answered.status_code in (200, 201), answered.text
        for _ in range(2000):
            done = await squall.executions.get(workflow["id"])
            if done["status"] == "succeeded":
                break
            await asyncio.sleep(0.01)
        assert done["status"] == "succeeded", done
        await settle(squall, bot)

    says = await _finished(squall, "hostile.say", 3 * len(PROBES) + 1)
    outputs = sorted(str((r["result"] or {}).get("stdout")) for r in says)
    assert outputs == sorted([*PROBES * 3, PROBES[1]])  # every value reached the action as it was sent
    assert leaks(json.dumps(says, default=str)) == []
    assert leaks("\n".join(p.text for p in loopback.posted)) == []
    assert leaks("\n".join(r.getMessage() for r in caplog.records)) == []
    for file in (f for f in (home / "data").glob("squall.db*") if f.is_file()):
        assert leaks(file.read_bytes().decode("latin-1")) == [], file
    assert not list(canary.iterdir())


def test_the_shapes_would_catch_a_leak() -> None:
    """The detector itself: each trick's output, made here from the secret, is caught."""
    made = [SECRET[::-1], "-".join(SECRET), " ".join(SECRET), SECRET[1:],
            base64.b64encode(SECRET.encode()).decode(), json.dumps(SECRET)]
    assert all(leaks(f"reply: {text}") for text in made)
    assert leaks("nothing here") == []
    assert re.fullmatch(r"[A-Za-z0-9]+", SECRET)


_FRAGMENTS = st.sampled_from([
    "{{", "}}", "{%", "%}", "st2kv.system.api_token", "| decrypt_kv", "| reverse", "| list | join('-')",
    "[::-1]", "| b64encode", "action_context", "$(touch CANARY/z)", "`touch CANARY/z`", "a[$(touch CANARY/z)]",
    '"', "'", ";", "&&", "|", "\n", "\x00", "--output=CANARY/z", "env=", '{"BASH_ENV": "CANARY/z"}', "cwd=/",
    "timeout=1", "sudo=true", "=", " ", "say", "count", "sort", "pysay", "respond", "execution", "retry", "7*7",
])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(st.lists(_FRAGMENTS, min_size=1, max_size=12).map(" ".join), min_size=1, max_size=12))
def test_fuzzed_commands_never_run_code_leak_or_crash(tmp_path_factory: pytest.TempPathFactory,
                                                      commands: list[str]) -> None:
    home = tmp_path_factory.mktemp("hostile")
    (home / "packs").mkdir()
    canary = home / "canary"
    _pack(home, canary)

    async def scenario() -> None:
        loopback = LoopbackAdapter()
        squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
        await squall.db(squall.datastore.set, "api_token", SECRET, encrypt=True)
        bot = squall.chat
        await bot.start()
        try:
            for command in commands:
                before = len(loopback.posted)
                await loopback.say("!" + command.replace("CANARY", str(canary)), user="fuzzer", channel="#fuzz")
                await settle(squall, bot)
                said = [p.text for p in loopback.posted[before:]]
                assert said, command  # every addressed message gets an answer
                assert not any(t.startswith("Sorry, something went wrong") for t in said), (command, said)
                assert not any(leaks(t) for t in said), (command, said)
                assert not list(canary.iterdir()), command
        finally:
            await bot.stop()
            await squall.close()

    asyncio.run(scenario())


# -- an alias's immutable `cmd` template: the chat's names (nick, channel) are data too ----------------

#: A nick that runs `touch` if it is pasted into bash text (`${IFS}`: nicks have no spaces).
NICK = "x`touch${IFS}MARKER`y"
#: A channel (or the API's `source_channel`) that runs `touch` if it is pasted into bash text.
CHANNEL = "ops-$(touch MARKER)"


def _immutable_pack(home: Path, tmp_path: Path) -> None:
    """The hostile pack plus a `local-shell-cmd` action without a `cmd` of its own, run through aliases
    whose `immutable_parameters` give it one naming the chat's user and channel (typed, confirmed and
    approved), and an alias whose immutable parameters feed no shell (`env`, `timeout`, typed ones)."""
    _pack(home, tmp_path / "canary")
    config = home / "config.yml"
    config.write_text(config.read_text() + "auth:\n  groups:\n    approvers: [ann]\n")
    pack = home / "packs" / "hostile"
    write(pack / "actions" / "raw.yaml", """
        name: raw
        runner_type: local-shell-cmd
        parameters:
          message: {type: string, required: true}
    """)
    write(pack / "actions" / "tagged.yaml", """
        name: tagged
        runner_type: local-shell-cmd
        parameters:
          by: {type: string}
          count: {type: integer}
          labels: {type: array}
          cmd: {default: 'echo "{{ by }}" {{ count }}', immutable: true}
    """)
    for name, extra in (("whoami", "enabled: true"), ("whoconfirm", "confirm: true"),
                        ("whoapproved", "approval: {groups: [approvers]}")):
        write(pack / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: hostile.raw
            formats: ["{name} {{{{message}}}}"]
            immutable_parameters:
              cmd: "echo requested by {{{{ user }}}} in {{{{ source_channel }}}}"
            ack: {{format: "ACK {{{{ execution.parameters.cmd }}}}"}}
            result: {{format: "OUT={{{{ execution.result.stdout }}}}"}}
            {extra}
        """)
    write(pack / "aliases" / "tagged.yaml", """
        name: tagged
        action_ref: hostile.tagged
        formats: ["tagged"]
        immutable_parameters:
          by: "{{ user }} in {{ source_channel }}"
          count: "{{ 2 + 3 }}"
          labels: "a, {{ user }}"
          env: {WHO: "{{ user }}"}
          timeout: "{{ 5 * 6 }}"
    """)


@pytest.fixture
async def immutable_chat(home: Path, tmp_path: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    _immutable_pack(home, tmp_path)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    assert squall.registry.errors == []
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot, loopback
    finally:
        await bot.stop()
        await squall.close()


def _marked(text: str, tmp_path: Path, name: str) -> str:
    return text.replace("MARKER", str(tmp_path / name))


def _markers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("marker"))


async def test_an_alias_immutable_cmd_passes_the_nick_and_channel_as_data(immutable_chat, tmp_path: Path) -> None:
    """`immutable_parameters: {cmd: "echo requested by {{ user }} in {{ source_channel }}"}` rendered the
    nick and the channel into the command's text, and bash ran a nick such as x`id`y. They go through the
    shell runner's quoting as every `cmd` value does (docs/security.md, "Shell templates"): typed, after a
    confirmation, after approval, and again on `!retry`; the ack still shows the command as written out."""
    squall, bot, loopback = immutable_chat
    nick, channel = _marked(NICK, tmp_path, "marker-nick"), _marked(CHANNEL, tmp_path, "marker-channel")
    await loopback.say("!whoami hi", user=nick, channel="#ops")
    await loopback.say("!whoami hi", user="bob", channel=channel)
    await loopback.say("!whoconfirm hi", user=nick, channel="#ops")
    await loopback.say("!yes", user=nick, channel="#ops")
    await loopback.say("!whoapproved hi", user=nick, channel="#ops")
    await settle(squall, bot)
    approval_id = next(b["value"] for p in loopback.posted for b in p.reply.buttons
                       if b["value"].startswith("approve ")).split()[1]
    await loopback.say(f"!approve {approval_id}", user="ann", channel="#ops")
    await settle(squall, bot)

    first = next(r for r in await _finished(squall, "hostile.raw", 4)
                 if r["context"]["user"] == nick and r["context"]["chat"]["alias"] == "hostile.whoami")
    await loopback.say(f"!retry {first['id']}", user=nick, channel="#ops")
    await settle(squall, bot)

    runs = await _finished(squall, "hostile.raw", 5)
    assert _markers(tmp_path) == []
    said = {f"requested by {nick} in #ops": 4, f"requested by bob in {channel}": 1}
    assert sorted(r["result"]["stdout"] for r in runs) == sorted(t for t, n in said.items() for _ in range(n))
    texts = loopback.texts()
    first_texts = [p.reply.text for p in loopback.posted]  # an ack is edited to its status line after
    for text, count in said.items():
        assert texts.count(f"OUT={text}") == count, texts
        assert f"ACK echo {text}" in first_texts
    assert all(r["parameters"]["cmd"] == f"echo {r['result']['stdout']}" for r in runs)


async def test_the_alias_execution_api_passes_user_and_source_channel_as_data(immutable_chat, tmp_path: Path) -> None:
    """`POST /api/v1/aliasexecution` names the user and the channel in its body: both reach the alias's
    immutable `cmd` as data, and the answer's ack shows the command as written out."""
    squall, _bot, _loopback = immutable_chat
    nick, channel = _marked(NICK, tmp_path, "marker-nick"), _marked(CHANNEL, tmp_path, "marker-channel")
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as api:
        answer = await api.post("/api/v1/aliasexecution",
                                json={"command": "whoami hi", "user": nick, "source_channel": channel})
    assert answer.status_code == 201, answer.text
    assert answer.json()["message"] == f"ACK echo requested by {nick} in {channel}"
    [run] = await _finished(squall, "hostile.raw", 1)
    assert _markers(tmp_path) == []
    assert run["status"] == "succeeded" and run["result"]["stdout"] == f"requested by {nick} in {channel}"


async def test_an_alias_immutable_parameters_that_feed_no_shell_render_as_before(immutable_chat,
                                                                                 tmp_path: Path) -> None:
    """Only a shell runner's `cmd` waits for the engine: the alias's other immutable parameters render
    against its context as before, to the same values and, once cast, the same types."""
    squall, bot, loopback = immutable_chat
    nick = _marked(NICK, tmp_path, "marker-nick")
    await loopback.say("!tagged", user=nick, channel="#ops")
    await settle(squall, bot)
    [run] = await _finished(squall, "hostile.tagged", 1)
    assert {k: run["parameters"][k] for k in ("by", "count", "labels", "env", "timeout")} == {
        "by": f"{nick} in #ops", "count": 5, "labels": ["a", nick], "env": {"WHO": nick}, "timeout": 30}
    assert run["status"] == "succeeded" and run["result"]["stdout"] == f"{nick} in #ops 5"
    assert _markers(tmp_path) == []


def test_a_remote_shell_cmd_alias_leaves_its_immutable_cmd_to_the_engine(home: Path, tmp_path: Path) -> None:
    """The same for `remote-shell-cmd` (no SSH server needed to see it): the alias hands its `cmd` template
    over as written, named in `render`, with the chat's names beside it, and the command bash gets refers
    to the nick through a variable, never holds it."""
    from aliases import AliasMatcher, load_aliases
    from aliases.model import immutable_names
    from bot.app import load_packs
    from engine.parameters import resolve
    from engine.runners.shell_template import render_shell_command

    _immutable_pack(home, tmp_path)
    template = "echo requested by {{ user }} in {{ source_channel }}"
    write(home / "packs" / "hostile" / "actions" / "remote.yaml", """
        name: remote
        runner_type: remote-shell-cmd
        parameters:
          message: {type: string, required: true}
    """)
    write(home / "packs" / "hostile" / "aliases" / "whereami.yaml", f"""
        name: whereami
        action_ref: hostile.remote
        formats: ["whereami {{{{message}}}}"]
        immutable_parameters: {{cmd: "{template}", hosts: "127.0.0.1"}}
    """)
    registry = load_packs(load_config(home / "config.yml"))
    aliases, errors = load_aliases(registry)
    assert errors == []
    action = registry.actions["hostile.remote"]
    match = AliasMatcher(aliases).match("whereami hi")
    nick = _marked(NICK, tmp_path, "marker-nick")
    context = {"user": nick, "api_user": nick, "source": "chat", "source_channel": "#ops"}
    parameters, render = match.request_parameters(action, context)
    assert parameters == {"message": "hi", "cmd": template, "hosts": "127.0.0.1"} and render == {"cmd"}
    names = immutable_names(match.alias, render, context)
    assert names is not None and names["user"] == nick
    resolution = resolve(action, parameters, names, render=render)
    command, variables = render_shell_command(resolution.templates["cmd"], {**names, **resolution.values})
    assert nick not in command and nick in variables.values()
    assert command == 'echo requested by "${SQUALL_ARG_0}" in "${SQUALL_ARG_1}"'
