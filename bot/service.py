"""`squall serve` and `squall chat`: the service on one event loop, with its chat adapters."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import importlib
import logging
import os
import pwd
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.base import Adapter
from adapters.console import ConsoleAdapter
from bot.accounts import FIRST_ADMIN, bootstrap_admin
from bot.app import Squall
from bot.heap import settle_heap
from engine.config import SYSTEM_PACKS_PATH, Config, ConfigError, check_adapter, flag
from engine.core import log_pack_problems
from engine.executor import LocalExecutor
from engine.jobs import REAP_SECONDS, reap_stalled, waiting_note, waiting_since
from engine.packs import ContentWarning, Registry, fingerprint
from engine.policies import RETRY_SETTLE
from engine.retention import RetentionSweep
from engine.storage import Trouble, database_trouble, utcnow
from engine.triggers import NODE_BEAT_SECONDS

log = logging.getLogger("squall")
POLL_SECONDS = 1.0
#: How often the lead of workers looks for retries lost with a killed worker, and for questions whose
#: TTL timer went with a stopped worker (`_queued_work`).
RETRY_SWEEP_SECONDS = 60.0
#: The chat platforms Squall speaks; each is the module `adapters.<name>`.
ADAPTER_NAMES = ["console", "slack", "mattermost", "irc"]
PURGE_SECONDS = 60.0


def configured_adapters(config: Config) -> list[Adapter]:
    """The adapters `adapters.<name>.enabled: true` turns on.

    Every section's keys are checked first, enabled or not (`engine.config.check_adapter`): a misspelt
    `enable: true` must not leave an adapter off without a word, nor a quoted "false" turn one on.
    Each platform lives in `adapters/<name>.py` and exposes `create(section, config) -> Adapter`;
    it is imported only when enabled, so a platform's library costs nothing to those not using it.
    """
    section: dict[str, Any] = config.section("adapters")
    enabled: list[tuple[str, dict[str, Any]]] = []
    for name, settings in section.items():
        settings = settings or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{config.path}: 'adapters.{name}' must be a mapping, not {type(settings).__name__}")
        if name not in ADAPTER_NAMES:
            near = difflib.get_close_matches(name, ADAPTER_NAMES, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(ADAPTER_NAMES)})"
            raise ConfigError(f"{config.path}: unknown adapter 'adapters.{name}'{hint}")
        if check_adapter(name, settings, config.path):
            enabled.append((name, settings))
    # Made once every section passed: a typo in the last one is named before any platform's library loads.
    return [importlib.import_module(f"adapters.{name}").create(settings, config) for name, settings in enabled]


def api_enabled(config: Config) -> bool:
    """`api.enabled` (default true): whether `squall serve` answers HTTP on `api.host`:`api.port`. True or
    false only: a quoted "false" served the API anyway."""
    return flag(config.section("api"), "enabled", True, "api.enabled", config.path)


def action_user_warning(config: Config) -> str | None:
    """What `squall serve` says at start about the user actions run as, if anything.

    As root: nothing when `runners.user` or `runners.allow_root` says who; otherwise that actions
    would run as root. Not root: `runners.user` naming someone else cannot be honoured."""
    uid = os.geteuid()
    if uid == 0:
        if config.runner_user is None and not config.allow_root:
            where = config.path or "config.yml"
            return (f"actions run as root: set runners.user (e.g. useradd --system --create-home squall) "
                    f"or runners.allow_root: true in {where}")
        return None
    if config.runner_user is not None and _uid_of(config.runner_user) != uid:
        try:
            me = pwd.getpwuid(uid).pw_name
        except KeyError:
            me = f"uid {uid}"
        return (f"runners.user is {config.runner_user}, but only root can start actions as another user: "
                f"they run as {me}")
    return None


def _uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


async def reload(squall: Squall) -> None:
    """Pick up edited, installed and removed packs without a restart."""
    registry = await squall.reload_packs()
    settle_heap()
    log.info("packs reloaded: %d packs, %d actions%s", len(registry.packs), len(registry.actions),
             _skipped(registry))
    log_pack_problems(registry.errors)


def _skipped(registry: Registry) -> str:
    """", N pack files skipped" when some were (each said in its own warning), else nothing."""
    skipped = sum(not isinstance(problem, ContentWarning) for problem in registry.errors)
    return f", {skipped} pack file{'s' if skipped != 1 else ''} skipped (see the warnings)" if skipped else ""


def _check_start(config: Config) -> None:
    """What only serving needs, checked before anything starts: the OIDC client's secret variable (read
    now, not when the file loads, since the `squall` pack's actions load the file without it)."""
    if (warning := action_user_warning(config)) is not None:
        log.warning("%s", warning)
    if config.oidc is not None and api_enabled(config):
        config.oidc.secret()


async def serve_forever(config: Config, stop_signals: tuple[signal.Signals, ...] = (),
                        adapters: list[Adapter] | None = None) -> None:
    """Start, recover pending work, then keep running stored requests until told to stop.

    The first of `stop_signals` stops gracefully (`let_runs_finish`), another stops at once. A cancel of
    this task (errbot's plugin stopping) stops at once, as before."""
    stop = asyncio.Event()
    again = asyncio.Event()  # a stop signal while stopping: abandon what still runs, now
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, _signalled, stop, again)
    _check_start(config)
    # The pack folders as they are before the packs load: an edit made while serve starts (after the
    # load, before the loop) differs from this, and the first tick loads it.
    pack_paths = [SYSTEM_PACKS_PATH, *config.pack_paths, config.configs_path]
    before_load = await _fingerprint(pack_paths)
    squall = await Squall.start(config, adapters=configured_adapters(config) if adapters is None else adapters)
    squall.executions.reload_packs = functools.partial(reload, squall)
    bot = squall.chat
    # First what earlier runs left to send and the results they owed, then recovery's own results
    # behind them; the bot listens already, so abandoned executions are told in chat.
    await bot.begin()
    await squall.executions.recover()
    if (note := squall.executions.foreign_note()) is not None:  # PostgreSQL: other hosts' processes hold these
        log.warning("%s", note)
    await squall.inquiries.recover()  # TTL timers of inquiries still waiting for an answer
    await squall.triggers.recover()
    await bot.start()
    if bot.adapters and not squall.db.store.is_sqlite:  # workers' and other nodes' replies, sent at once
        bot.outbox.follow(config.database_url)
    if config.executor_kind == "procrastinate":  # the trigger instances workers store, processed at once
        squall.triggers.follow(config.database_url)
    timers = asyncio.create_task(squall.timers.run(), name="squall-timers")
    await squall.sync_sensors()
    api = None
    if api_enabled(config):
        from bot.http import ApiServer

        api = ApiServer(squall)
        try:
            await api.start()
            log.info("web UI and HTTP API on %s (OpenAPI at /openapi.json)", ui_address(api.host, api.port))
        except Exception as exc:  # a port in use (`ApiServer._serve`'s OSError) must not take chat and executions down
            log.error("the HTTP API could not start on %s:%d (%s); serving without it", api.host, api.port,
                      exc.__class__.__name__)
            api = None
        else:
            await _first_admin(squall, ui_address(api.host, api.port))
    log.info("Squall is serving: %d packs, %d actions%s, adapters %s, database %s", len(squall.registry.packs),
             len(squall.registry.actions), _skipped(squall.registry), ", ".join(bot.adapters) or "none",
             config.database_url.split("@")[-1])
    settle_heap()
    housekeeping = Housekeeping(squall, pack_paths, seen=before_load)
    await housekeeping.start()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):  # not wait_for: it can swallow a cancel on 3.11
                    await stop.wait()
            await housekeeping.tick()
    finally:
        log.info("Squall is stopping")
        await housekeeping.stop()
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        if stop.is_set():  # a signal: the API and chat stay up meanwhile, so results reach their readers
            await let_runs_finish(squall, config.shutdown_grace, again)
        if api is not None:
            await api.stop()
        await squall.close()


def _signalled(stop: asyncio.Event, again: asyncio.Event) -> None:
    """SIGTERM or SIGINT: the first stops gracefully, another (while the running actions finish) at once."""
    if stop.is_set():
        again.set()
    stop.set()


async def let_runs_finish(squall: Squall, grace: float, now: asyncio.Event) -> None:
    """`squall serve` stops gracefully, as StackStorm's action runner does (`graceful_shutdown`): no run
    starts any more and the actions running get up to `grace` seconds (`executor.shutdown_grace`) to
    finish, or until `now` is set (stopped again); `squall.close()` then abandons what still runs. A
    request that comes meanwhile (API, chat, a rule, a workflow's next task) is stored and left for the
    next start's recovery, as when Squall is down: accepted, it is never lost. Cutting every run at once
    ended actions with a second left `abandoned` at each routine restart, and a workflow's task cut so
    ran again from its start after it, its side effect twice.

    Only `executor.kind: local` runs actions in this process; with 0, what runs is abandoned at once."""
    local = squall.policies.inner
    if grace <= 0 or not isinstance(local, LocalExecutor):
        return
    squall.executions.stopping = True
    polling = asyncio.create_task(_poll_while_stopping(squall), name="squall-stopping-poll")
    try:
        await local.drain(grace, now)
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling


async def _poll_while_stopping(squall: Squall) -> None:
    """While the running actions finish, every `POLL_SECONDS`: what other processes ask of them (`squall
    execution cancel` or `pause` from the CLI) is still carried out, not left to the stop's abandon. (What
    the poll would submit stays where it is: nothing starts.)"""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        try:
            await squall.executions.poll()
        except Exception as exc:  # the next poll tries again; the stop goes on
            log.warning("while stopping, looking for cancels of the running actions failed: %s",
                        database_trouble(exc) or repr(exc))


class Housekeeping:
    """What `squall serve` does every `POLL_SECONDS`, each step on its own: one that fails (a pack file it
    cannot read, a database hiccup) is logged and tried again at the next tick, and never keeps the
    others (stored requests, the outbox, the sensors' lead) from running.

    A step the database fails (down, full, locked elsewhere: `database_trouble`) says so once, without a
    traceback, and once more when it works again: logged each tick with its traceback, a PostgreSQL
    outage of 20 s made 4,293 lines of an idle service's log. Other failures keep their traceback, each
    time: they are bugs or broken packs, which a retry does not mend."""

    def __init__(self, squall: Squall, pack_paths: list[Path], seen: tuple[int, int] | None = None) -> None:
        self.squall = squall
        self.pack_paths = pack_paths
        #: The pack folders' fingerprint the loaded packs match; `serve_forever` takes it before the load.
        self.seen = seen
        self.ticks = 0
        #: How the steps' failures are said: a database outage once a step, until it works again.
        self.trouble = Trouble(log, "at every tick")
        #: `retention.*`: old history purged by the lead, once an hour (`engine/retention.py`).
        self.retention = RetentionSweep(squall.config.retention)

    async def start(self) -> None:
        """Unless given one, what the pack folders look like now: later ticks reload the packs when that
        changes. Taken here, after the load, an edit made between the two would be the baseline and
        never loaded: `serve_forever` hands over the one it took before. Then the node's heartbeat starts
        (PostgreSQL, `TriggerService.start_beating`): while it beats, no serve node of another host takes
        over the trigger instances it processes; the ticks look at the others' (`resume_silent`)."""
        if self.seen is None:
            self.seen = await _fingerprint(self.pack_paths)
        self.squall.triggers.start_beating()  # PostgreSQL: the other serve nodes see this one lives

    async def tick(self) -> None:
        squall = self.squall
        self.ticks += 1
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("reloading changed packs", self._packs),  # first: a request stored by the CLI may need them
            ("running stored requests", squall.executions.poll),
            ("sending the outbox", squall.chat.outbox.poll),
            ("following the sensors' lead", self._lead),
        ]
        if squall.config.executor_kind == "procrastinate":  # what workers stored, should a wake-up be lost
            steps.append(("taking up the trigger instances squall workers stored", squall.triggers.take_pending))
        if not squall.store.is_sqlite and self.ticks % int(NODE_BEAT_SECONDS / POLL_SECONDS) == 0:
            steps.append(("resuming the trigger instances of serve nodes that stopped beating",
                          squall.triggers.resume_silent))
        if squall.config.executor_kind == "procrastinate" and self.ticks % int(REAP_SECONDS / POLL_SECONDS) == 0:
            sweep = self.ticks % int(RETRY_SWEEP_SECONDS / POLL_SECONDS) == 0
            steps.append(("looking after queued work", functools.partial(_queued_work, squall, sweep=sweep)))
        if self.ticks % int(PURGE_SECONDS / POLL_SECONDS) == 0:
            steps.append(("purging expired keys", functools.partial(squall.db, squall.datastore.purge_expired)))
            steps.append(("purging old deliveries", functools.partial(squall.db, squall.triggers.purge_deliveries)))
            steps.append(("taking up trigger instances left behind",
                          functools.partial(squall.triggers.recover, pending_for=PURGE_SECONDS)))
        if self.retention.enabled:  # after the lead's step: it runs only where that found the lead
            steps.append(("purging old history",
                          functools.partial(self.retention.tick, squall.db, lambda: squall.sensor_lead)))
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                self._failed(what, exc)
            else:
                self._worked(what)

    async def stop(self) -> None:
        """`squall serve` is stopping: a history purge under way records what it deleted so far."""
        try:
            await self.retention.stop(self.squall.db)
        except Exception as exc:
            self._failed("recording the history purge cut short", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.trouble.failed(f"background housekeeping ({what})", exc)

    def _worked(self, what: str) -> None:
        self.trouble.worked(f"background housekeeping ({what})")

    async def _packs(self) -> None:
        current = await asyncio.to_thread(fingerprint, self.pack_paths)
        if current != self.seen:
            self.seen = current
            await reload(self.squall)

    async def _lead(self) -> None:
        if await self.squall.leading() != self.squall.sensor_lead:
            await self.squall.sync_sensors()  # the lead changed hands: start or stop the sensors


async def _fingerprint(pack_paths: list[Path]) -> tuple[int, int] | None:
    """`engine.packs.fingerprint` off the loop; None when it fails (logged): the first tick then reloads
    the packs, and says what failed if it fails again."""
    try:
        return await asyncio.to_thread(fingerprint, pack_paths)
    except Exception:
        log.exception("could not look at the pack folders")
        return None


def ui_address(host: str, port: int) -> str:
    """The UI's address to print: a wildcard bind (`0.0.0.0`, `::`) is shown as this machine's loopback."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


#: Where `squall serve` without a terminal leaves the first admin's password, under the data dir.
INITIAL_PASSWORD_FILE = "initial-admin-password"


async def _first_admin(squall: Squall, address: str) -> None:
    """On a database without web accounts, make `admin` and hand its password over, once: `make run`,
    then log in. Later starts find the account and say nothing.

    At a terminal the password is printed there. Under systemd or docker stderr is the log stream, and a
    log pipeline keeps (and ships) what it is given: the password goes to a file only this user reads
    (`<data_dir>/initial-admin-password`), and the log says where, never what."""
    password = await bootstrap_admin(squall.db)
    if password is None:
        return
    if sys.stderr.isatty():
        print(f"Created the web UI's first account: log in at {address} as {FIRST_ADMIN} with password {password}\n"
              f"(shown only now; `squall user passwd {FIRST_ADMIN}` sets another)", file=sys.stderr, flush=True)
        return
    path = squall.config.data_dir / INITIAL_PASSWORD_FILE
    try:
        _write_private(path, f"{password}\n")
    except OSError as exc:
        log.error("created the web UI's first account %s, but could not write its password to %s (%s); set "
                  "one with `squall user passwd %s`", FIRST_ADMIN, path, exc, FIRST_ADMIN)
        return
    log.warning("created the web UI's first account: log in at %s as %s with the password in %s (readable by "
                "this user only); read it, then delete the file (or set another with `squall user passwd %s`)",
                address, FIRST_ADMIN, path, FIRST_ADMIN)


def _write_private(path: Path, text: str) -> None:
    """`text` in a new file at `path` that only this user may read (0600): one left from an earlier
    database is replaced, and a symlink planted there is removed, never followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


async def _queued_work(squall: Squall, sweep: bool = False) -> None:
    """`executor.kind: procrastinate`: the leading node ends what stalled workers left (also when no
    worker is left to do it) and, with `sweep` (every `RETRY_SWEEP_SECONDS`), does what a worker that
    stopped left undone: the retries it never requested, and the questions whose TTL timer was in it
    (`InquiryService.recover`: the overdue expire, the others get a timer here). Every node tells the
    chat threads whose executions no worker has taken for `executor.unserved_after` seconds (once
    each: the reply is keyed)."""
    if squall.sensor_lead:
        await reap_stalled(squall.executions, squall.jobs)  # type: ignore[arg-type]
        if sweep:
            await squall.policies.recover_retries(settled=RETRY_SETTLE)
            await squall.inquiries.recover()
    config = squall.config
    if config.unserved_after <= 0:
        return
    now = utcnow()
    waiting = await squall.db(waiting_since, squall.store, now - timedelta(seconds=config.unserved_after))
    for record in waiting:
        note = waiting_note(config, record, now)
        if note is not None:
            await squall.chat.dispatcher.post_waiting(record, f"Still queued: {note}.")


async def chat_session(config: Config, user: str, channel: str) -> None:
    """`squall chat`: a console chat against the same engine; at the end of input, wait for the
    executions it started and their replies, then return."""
    console = ConsoleAdapter(user=user, channel=channel)
    squall = await Squall.start(config, adapters=[console])
    bot = squall.chat
    try:
        await bot.start()
        await console.finished.wait()
        while True:
            await bot.outbox.drain()
            if not (squall.executor.running or squall.executions.notifying or bot.outbox.pending):
                break
            await asyncio.sleep(0.02)
    finally:
        await squall.close()
