"""`logging.*`: text or JSON lines to stderr, the execution's and the message's context on every line
logged on their behalf, libraries quiet unless asked, bad keys named."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from engine.config import ConfigError, load_config
from engine.logs import JsonFormatter, configure, logging_context, scrubbing
from tests.conftest import write
from tests.test_chat import _config, settle


def _configured(home: Path, text: str, level: str | None = None) -> io.StringIO:
    write(home / "config.yml", (home / "config.yml").read_text() + text)
    configure(load_config(home / "config.yml"), level)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    return stream


def test_json_lines_carry_the_context_and_libraries_stay_quiet(home: Path, restore_logging: None) -> None:
    stream = _configured(home, "logging:\n  format: json\n")
    with logging_context(execution_id="e1", action="core.local", user="alice", adapter="slack", channel="C1"):
        logging.getLogger("engine.executions").info("ran %s", "it")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")  # noise: dropped
    logging.getLogger("alembic.runtime.migration").warning("a library's problem")  # kept
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["message"] == "ran it" and first["level"] == "info" and first["logger"] == "engine.executions"
    assert {k: first[k] for k in ("execution_id", "action", "user", "adapter", "channel")} == {
        "execution_id": "e1", "action": "core.local", "user": "alice", "adapter": "slack", "channel": "C1"}
    assert first["time"].endswith("Z") and lines[1]["message"] == "a library's problem"


def test_text_lines_show_the_context_and_libraries_can_be_asked_for(home: Path, restore_logging: None) -> None:
    stream = _configured(home, "logging:\n  libraries: info\n  level: warning\n")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    logging.getLogger("bot.chat").info("not shown: Squall's own lines are at warning here")
    with logging_context(execution_id="e2"):
        logging.getLogger("bot.chat").warning("slow reply")
    text = stream.getvalue()
    assert "Running upgrade" in text and "not shown" not in text
    assert "WARNING bot.chat: slow reply [execution_id=e2]" in text


@pytest.mark.parametrize(("text", "message"), [
    ("logging:\n  format: xml\n", "'logging.format' must be one of text, json, not 'xml'"),
    ("logging:\n  level: loud\n", "'logging.level' must be one of debug, info, warning, error, not 'loud'"),
    ("logging:\n  colour: true\n", "unknown key 'logging.colour'; known: format, level, libraries"),
])
def test_bad_logging_settings_are_named(home: Path, restore_logging: None, text: str, message: str) -> None:
    write(home / "config.yml", (home / "config.yml").read_text() + text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configure(load_config(home / "config.yml"))


async def test_an_executions_lines_name_it_and_the_chat_message_behind_it(home: Path,
                                                                         restore_logging: None) -> None:
    _config(home)
    stream = _configured(home, "logging:\n  format: json\n", level="debug")
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!greet world", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        execution = (await squall.executions.list(action="demo.greet"))[0]
    finally:
        await squall.chat.stop()
        await squall.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finished = [line for line in lines if line.get("execution_id") == execution["id"]
                and line["message"] == "demo.greet succeeded"]
    assert len(finished) == 1, lines
    assert finished[0]["action"] == "demo.greet" and finished[0]["adapter"] == "loopback"
    assert finished[0]["channel"] == "#ops" and finished[0]["user"] == "alice"


def test_the_json_formatter_keeps_a_traceback_in_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("engine").makeRecord("engine", logging.ERROR, __file__, 1, "failed", (),
                                                         sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


async def test_a_secret_parameter_never_reaches_the_logs(home: Path, restore_logging: None) -> None:
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
    write(home / "packs" / "demo" / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          token: {type: string, secret: true, required: true}
          cmd: {default: "echo using {{ token }} >&2; exit 4", immutable: true}
    """)
    stream = _configured(home, "logging:\n  format: json\n  libraries: debug\n", level="debug")
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("demo.login", {"token": "tok-SECRET-9931"})
        done = await squall.executions.wait(record["id"], timeout=30)
    finally:
        await squall.close()
    assert done["status"] == "failed" and "tok-SECRET-9931" not in str(done)
    text = stream.getvalue()
    assert record["id"] in text  # the run was logged (at debug), and its lines name it
    assert "tok-SECRET-9931" not in text


async def test_the_http_servers_lines_follow_the_logging_config(home: Path, restore_logging: None) -> None:
    """uvicorn logs through Squall's handler: JSON when asked, at `logging.libraries`' level (its own
    logging config printed text past `format: json` and pinned its loggers at warning)."""
    from bot.http.server import ApiServer
    from tests.conftest import free_port

    stream = _configured(home, "logging:\n  format: json\n  libraries: info\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    server = ApiServer(squall, port=free_port())
    try:
        await server.start()
        logging.getLogger("uvicorn.error").info("a line of the server's")
    finally:
        await server.stop()
        await squall.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line JSON
    assert any(line["logger"] == "uvicorn.error" and line["message"] == "a line of the server's" for line in lines)


def test_a_librarys_own_logging_config_does_not_keep_its_lines_from_squalls_handler(
        home: Path, restore_logging: None) -> None:
    """uvicorn's default config (a handler of its own, `propagate: False` on `uvicorn`), applied by anything
    in the process before, kept its lines from Squall's JSON handler; Squall's config holds those loggers."""
    import logging.config

    import uvicorn.config

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    stream = _configured(home, "logging:\n  format: json\n  libraries: info\n")
    logging.getLogger("uvicorn.error").info("a line of the server's")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["logger"] == "uvicorn.error" and line["message"] == "a line of the server's" for line in lines)


async def test_a_librarys_lines_during_a_run_are_scrubbed_of_its_secrets(home: Path, restore_logging: None) -> None:
    """The `http-request` runner sends in-process: urllib3, at debug, quotes the path and query of what it
    sent, here a `secret: true` parameter rendered into the URL; the line stays, the secret does not."""
    from tests.test_http_secret_headers import _echo_server

    stream = _configured(home, "logging:\n  format: json\n  libraries: debug\n")
    with _echo_server() as (url, seen):
        write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
        write(home / "packs" / "demo" / "actions" / "query.yaml", f"""
            name: query
            runner_type: http-request
            parameters:
              pin: {{type: string, secret: true, required: true}}
              url: {{default: "{url}?q={{{{ pin }}}}", immutable: true}}
        """)
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            record = await squall.executions.request("demo.query", {"pin": "Query-Marker-7h6g5f"})
            done = await squall.executions.wait(record["id"], timeout=30)
        finally:
            await squall.close()
    assert done["status"] == "succeeded" and len(seen) == 1  # the request went out with the pin
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    sent = [line for line in lines if line["logger"].startswith("urllib3") and "/echo?q=" in line["message"]]
    assert sent and all(line["execution_id"] == record["id"] for line in sent)  # logged, for the run
    assert "Query-Marker-7h6g5f" not in stream.getvalue()


def test_a_line_logged_while_secrets_are_bound_is_scrubbed_traceback_and_all(
        home: Path, restore_logging: None) -> None:
    stream = _configured(home, "logging:\n  format: text\n  libraries: debug\n")
    with scrubbing(lambda: ["Bound-Marker-1a2s3d"]):
        try:
            raise ValueError("refused Bound-Marker-1a2s3d")
        except ValueError:
            logging.getLogger("somelib").exception("sent %s", "/q?x=Bound-Marker-1a2s3d")
    logging.getLogger("somelib").warning("after Bound-Marker-1a2s3d")  # outside the block: as logged
    text = stream.getvalue()
    assert "sent /q?x=********" in text and "ValueError: refused ********" in text
    assert text.count("Bound-Marker-1a2s3d") == 1 and "after Bound-Marker-1a2s3d" in text


@pytest.mark.parametrize(("libraries", "shown"), [
    ("debug", ["a line of its own", "another library's debug"]),
    ("error", []),  # held at INFO at most, never raised above the libraries' level
])
def test_sse_starlette_stays_at_info_when_libraries_log_at_debug(home: Path, restore_logging: None,
                                                                 libraries: str, shown: list[str]) -> None:
    """It logs every chunk it streams (a run's output, results) at debug: no diagnosis, and the run's data."""
    stream = _configured(home, f"logging:\n  format: json\n  libraries: {libraries}\n")
    logging.getLogger("sse_starlette.sse").debug("chunk: %s", "a run's output")
    logging.getLogger("sse_starlette.sse").info("a line of its own")
    logging.getLogger("urllib3.connectionpool").debug("another library's debug")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == shown


def test_a_librarys_extra_never_takes_the_place_of_squalls_context(home: Path, restore_logging: None) -> None:
    """procrastinate logs `extra={"action": "start_job"}`: `action` is the Squall action a line was
    logged for, and the library's own field is kept beside it as `extra_action`."""
    stream = _configured(home, "logging:\n  format: json\n")
    logging.getLogger("procrastinate.worker").warning("Starting job", extra={"action": "start_job", "job_id": 3})
    with logging_context(execution_id="e1", action="demo.build"):
        logging.getLogger("procrastinate.worker").warning("Job success", extra={"action": "job_success"})
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "action" not in outside and outside["extra_action"] == "start_job"
    assert inside["action"] == "demo.build" and inside["execution_id"] == "e1"
    assert inside["extra_action"] == "job_success"


def test_a_librarys_extra_is_shown_apart_in_text_lines_too(home: Path, restore_logging: None) -> None:
    stream = _configured(home, "logging:\n  format: text\n")
    with logging_context(action="demo.build"):
        logging.getLogger("procrastinate.worker").warning("Job success", extra={"action": "job_success"})
    assert stream.getvalue().rstrip().endswith("Job success [action=demo.build extra_action=job_success]")


async def test_writes_to_a_connection_its_peer_closed_leave_no_lines(home: Path, restore_logging: None) -> None:
    """A browser closing a tab with a live page left up to 44 `socket.send() raised exception.` WARNINGs from
    asyncio (a write to a connection its peer closed, said from the sixth on), naming nothing; asyncio's other
    warnings are kept."""
    import asyncio

    stream = _configured(home, "")
    closed = asyncio.Event()

    async def live(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the browser went away
        for _ in range(20):  # what a stream writes before its next look tells it so
            writer.write(b"data: tick\n\n" * 1000)
            await asyncio.sleep(0.01)
        closed.set()

    server = await asyncio.start_server(live, "127.0.0.1", 0)
    try:
        _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.transport.abort()  # reset, as a closed tab's socket
        await asyncio.wait_for(closed.wait(), 30)
    finally:
        server.close()
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.2)
    text = stream.getvalue()
    assert "socket.send() raised exception" not in text
    assert "Executing <Task> took 0.200 seconds" in text
