"""StackStorm's core actions that Exchange packs call and Squall's core pack lacked: `core.sendmail`,
`core.inject_trigger`, `core.uuid`, `core.error` and `core.announcement` (spec §9.4). Each runs for real:
the mail script under bash with a fake sendmail, the Python actions in the pack's worker, the rules on a
real SQLite database."""

from __future__ import annotations

import email
import email.policy
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import SYSTEM_PACKS_PATH, load_config
from engine.packs import load_registry
from tests.conftest import write

#: A value a shell would run if it ever read a parameter as shell text: it creates the marker file.
HOSTILE = "it's \"quoted\" $(touch {marker}) `touch {marker}` ; touch {marker}"


def fake_sendmail(folder: Path, name: str = "fake-sendmail") -> Path:
    """A sendmail that writes its arguments and its stdin (the email) beside itself."""
    return write(folder / name, """
        #!/bin/sh
        printf '%s\\n' "$@" > "$(dirname "$0")/argv.txt"
        cat > "$(dirname "$0")/mail.txt"
    """)


def executable(path: Path) -> Path:
    path.chmod(0o755)
    return path


async def run(squall: Squall, ref: str, parameters: dict[str, Any],
              context: dict[str, Any] | None = None) -> dict[str, Any]:
    requested = await squall.executions.request(ref, parameters, context)
    return await squall.executions.wait(requested["id"])


def parsed(path: Path) -> email.message.EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_the_core_pack_has_stackstorms_actions_that_packs_call(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    sendmail = registry.action("core.sendmail")
    assert sendmail.runner_type == "local-shell-script" and sendmail.entry_path is not None
    assert os.access(sendmail.entry_path, os.X_OK)
    positions = {name: spec.get("position") for name, spec in sendmail.parameters.items() if "position" in spec}
    assert positions == {"sendmail_binary": 0, "from": 1, "to": 2, "subject": 3, "send_empty_body": 4,
                         "content_type": 5, "body": 6, "attachments": 7}
    assert sendmail.parameters["sendmail_binary"]["default"] == "None"
    assert sendmail.parameters["from"]["default"] == "stanley"
    assert sendmail.parameters["send_empty_body"]["default"] is True
    assert sendmail.parameters["content_type"]["default"] == "text/html"
    assert {name for name in ("to", "subject", "body") if sendmail.parameters[name].get("required")} == {
        "to", "subject", "body"}
    assert sendmail.parameters["sudo"]["immutable"] is True
    inject = registry.action("core.inject_trigger")
    assert inject.runner_type == "python-script"
    assert {"trigger", "trigger_name", "payload", "trace_tag"} <= set(inject.parameters)
    assert inject.parameters["payload"]["type"] == "object"
    generate = registry.action("core.uuid")
    assert generate.runner_type == "python-script"
    assert generate.parameters["uuid_type"]["default"] == "uuid4"
    assert generate.parameters["uuid_type"]["enum"] == ["uuid1", "uuid4"]
    error = registry.action("core.error").parameters
    assert error["cmd"]["default"] == '>&2 echo "{{message}}"' and error["cmd"]["immutable"] is True
    assert error["message"]["required"] is True and error["sudo"]["default"] is False
    announcement = registry.action("core.announcement")
    assert announcement.runner_type == "announcement"
    assert announcement.parameters["message"]["type"] == "object"
    assert announcement.parameters["experimental"]["immutable"] is True
    assert announcement.parameters["experimental"]["default"] is True
    assert "core.winrm_cmd" not in registry.actions  # no winrm runner in Squall


async def test_sendmail_pipes_the_email_and_runs_nothing_of_its_values(squall: Squall, tmp_path: Path) -> None:
    mailer = executable(fake_sendmail(tmp_path / "bin"))
    marker = tmp_path / "marker"
    subject = HOSTILE.format(marker=marker)
    body = "first line\n" + HOSTILE.format(marker=marker) + "\nEOF\nlast line"
    record = await run(squall, "core.sendmail", {
        "sendmail_binary": str(mailer), "from": "alerts@example.org", "to": "ops@example.org",
        "subject": subject, "content_type": "text/plain", "body": body})
    assert record["status"] == "succeeded", record["result"]
    assert record["result"]["stdout"] == "Successfully sent mail to ops@example.org"
    assert not marker.exists()
    message = parsed(tmp_path / "bin" / "mail.txt")
    assert message["To"] == "ops@example.org"
    assert message["From"] == "alerts@example.org"
    assert message["Subject"] == subject  # base64-encoded on the wire, every character kept
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
    text = message.get_content()
    assert text.startswith(body + "\n\nThis message was generated by Squall action core.sendmail running on ")
    assert not marker.exists()


async def test_sendmail_uses_sendmail_t_by_default_and_attaches_files(
        squall: Squall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "bin"
    executable(fake_sendmail(folder, "sendmail"))
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    report = write(tmp_path / "report.txt", "disk at 91%\n")
    record = await run(squall, "core.sendmail", {
        "from": "stanley", "to": "ops@example.org", "subject": "Å report 😃", "body": "<p>see attached</p>",
        "attachments": f"{report},{tmp_path / 'missing.txt'}"})
    assert record["status"] == "succeeded", record["result"]
    assert (folder / "argv.txt").read_text() == "-t\n"  # recipients read from the headers
    assert "attachment" in record["result"]["stderr"] and "missing.txt not found" in record["result"]["stderr"]
    message = parsed(folder / "mail.txt")
    assert message["From"].startswith("stanley@")
    assert message["Subject"] == "Å report 😃"
    assert message.get_content_type() == "multipart/mixed"
    inline, attached = [part for part in message.iter_parts() if part.get_content_disposition() == "inline"], [
        part for part in message.iter_parts() if part.get_content_disposition() == "attachment"]
    assert [part.get_filename() for part in attached] == ["report.txt"]
    assert attached[0].get_content() == "disk at 91%\n"
    assert inline[0].get_content().startswith("<p>see attached</p>\n<br><br>\nThis message was generated by Squall")


async def test_sendmail_refuses_a_line_break_in_a_header_and_skips_an_empty_body(
        squall: Squall, tmp_path: Path) -> None:
    mailer = executable(fake_sendmail(tmp_path / "bin"))
    record = await run(squall, "core.sendmail", {
        "sendmail_binary": str(mailer), "to": "ops@example.org\nBcc: eve@example.org", "subject": "s", "body": "b"})
    assert record["status"] == "failed"
    assert "TO may not contain a line break" in record["result"]["stderr"]
    assert not (tmp_path / "bin" / "mail.txt").exists()
    record = await run(squall, "core.sendmail", {
        "sendmail_binary": str(mailer), "to": "ops@example.org", "subject": "s", "body": "  ",
        "send_empty_body": False})
    assert record["status"] == "succeeded" and record["result"]["stdout"] == "Nothing to send"
    assert not (tmp_path / "bin" / "mail.txt").exists()


def rule_pack(home: Path) -> None:
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", """
        ref: demo
        name: demo
        description: Demo pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "triggers" / "event.yaml", """
        name: event
        pack: demo
        description: Something happened.
        payload_schema:
          type: object
          properties:
            host: {type: string}
          required: [host]
    """)
    write(pack / "rules" / "on_event.yaml", """
        name: on_event
        pack: demo
        enabled: true
        trigger: {type: demo.event}
        action:
          ref: core.echo
          parameters:
            message: "{{ trigger.host }} is down"
    """)


async def test_inject_trigger_fires_the_rules_of_a_registered_trigger_type(home: Path) -> None:
    rule_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await run(squall, "core.inject_trigger", {"trigger_name": "demo.event", "payload": {"host": "db1"}})
        assert record["status"] == "succeeded", record["result"]
        injected = record["result"]["result"]
        assert injected["trigger"] == "demo.event" and injected["payload"] == {"host": "db1"}
        assert injected["trace_tag"] == f"execution-{record['id']}"  # leads back to the run that injected it
        await squall.rules.settle()
        [enforcement] = await squall.rules.enforcements(trigger_instance_id=injected["id"])
        assert enforcement["rule"]["ref"] == "demo.on_event"
        fired = await squall.executions.wait(enforcement["execution_id"])
        assert fired["status"] == "succeeded" and fired["result"]["stdout"] == "db1 is down"

        tagged = await run(squall, "core.inject_trigger", {"trigger": "demo.event", "payload": {"host": "db2"},
                                                           "trace_tag": "deploy-42"})
        assert tagged["result"]["result"]["trace_tag"] == "deploy-42"
        stored = await squall.triggers.get(tagged["result"]["result"]["id"])
        assert stored["trace_tag"] == "deploy-42" and stored["payload"] == {"host": "db2"}

        # Run under a trace (a rule's run carries its trigger instance's tag): the injected instance joins it.
        traced = await run(squall, "core.inject_trigger", {"trigger_name": "demo.event", "payload": {"host": "db3"}},
                           {"trace_context": {"trace_tag": "webhook-st2-abc"}})
        assert traced["result"]["result"]["trace_tag"] == "webhook-st2-abc"
    finally:
        await squall.close()


async def test_inject_trigger_fails_naming_a_trigger_type_that_is_not_registered(home: Path) -> None:
    rule_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await run(squall, "core.inject_trigger", {"trigger_name": "demo.evnt", "payload": {"host": "x"}})
        assert record["status"] == "failed"
        assert 'trigger type "demo.evnt" is not registered; did you mean demo.event?' in record["result"]["stderr"]
        record = await run(squall, "core.inject_trigger", {"trigger_name": "demo.event", "payload": {}})
        assert record["status"] == "failed"
        assert "payload for \"demo.event\" is invalid" in record["result"]["stderr"]
        assert await squall.triggers.list(trigger="demo.event") == []
    finally:
        await squall.close()


async def test_uuid_generates_the_type_asked_for(squall: Squall) -> None:
    default = await run(squall, "core.uuid", {})
    assert default["status"] == "succeeded", default["result"]
    assert uuid.UUID(default["result"]["result"]).version == 4
    one = await run(squall, "core.uuid", {"uuid_type": "uuid1"})
    assert uuid.UUID(one["result"]["result"]).version == 1


async def test_error_writes_the_message_to_stderr_and_succeeds_as_stackstorms(squall: Squall, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    message = HOSTILE.format(marker=marker)
    record = await run(squall, "core.error", {"message": message})
    assert record["status"] == "succeeded"  # StackStorm's is echo's exit status: 0
    assert record["result"]["stderr"] == message and record["result"]["stdout"] == ""
    assert not marker.exists()


async def test_announcement_broadcasts_to_the_stream_and_posts_nothing(squall: Squall) -> None:
    """StackStorm's `core.announcement` only announces (stream consumers read it): run outside chat it failed
    with "no channel to post to", and from chat it posted the message object's repr into the channel."""
    message = {"text": "deploy 42 done", "level": "info"}
    record = await run(squall, "core.announcement", {"message": message},
                       {"user": "t", "chat": {"adapter": "loopback", "channel": "#ops"}})
    assert record["status"] == "succeeded", record["result"]
    assert record["result"]["output"] == {"message": message} and record["result"]["message"] == message
    assert await squall.db(squall.store.outbox_pending, ["loopback"]) == []
