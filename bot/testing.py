"""Testing a pack the way errbot tests a plugin: a pytest plugin shipped with Squall.

A pack author runs `pytest` in the pack's folder and gets the `squallbot` fixture: the pack loaded
into a throwaway Squall (its own SQLite file and config.yml under pytest's temporary folder) with a
chat in memory. A test types a message and reads what the bot answered, runs an action and reads
the execution record, or emits a trigger and reads what the rules ran; `docs/testing-packs.md`
shows it. The same engine and chat objects `squall serve` uses run underneath, so a test sees what
production would do, only with the loopback adapter instead of Slack.

Why it looks the way it does:

- **Plain calls, no asyncio in the tests.** Squall runs on an event loop in a thread of the
  fixture's own; `say`, `run` and `emit` hand it work and block until Squall is idle again (no
  execution running, no trigger being processed, every reply delivered) or the timeout passes. A
  pack author needs neither pytest-asyncio nor to know which of Squall's parts to wait for, and a
  test reads top to bottom like the conversation it checks. Action processes start from that
  thread, so they die with it (`engine/processes.py`) even if a test leaves one running.
- **Free for runs that do not use it.** pytest imports every `pytest11` plugin at start-up, in
  every project of the environment; this module imports only pytest and the standard library, and
  Squall itself only inside the fixture.
- **One place knows Squall's insides.** Which classes assemble the engine and the chat is named in
  `_Running.start` only, and the public face (`SquallBot`, `ChatPost`, the fixture, marker and ini
  options) says nothing of them, so restructuring Squall changes a few lines here and no pack's
  tests.
- **A pack with problems fails the test.** A file that did not load (an alias with a bad format, a
  rule naming a missing action) is logged and skipped by `squall serve`; here it fails the fixture
  with every problem listed, because a test run is where an author wants to hear it
  (`@pytest.mark.squall(allow_problems=True)` when a test is about a broken file).

Run inside the pack's folder, a pack's `aliases/` folder would shadow Squall's own `aliases`
package if Squall's folder were not on `sys.path` as a path entry (a regular package found on any
path entry beats a folder without `__init__.py` found earlier); the editable install puts it there
(`[tool.setuptools] package-dir` in pyproject.toml), as a wheel in site-packages is by nature.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

#: The chat adapter's name, for `routes` in the marker's `config` (`{adapter: loopback, channel: "#ops"}`).
ADAPTER = "loopback"
#: Seconds a call waits for Squall to be idle again; the `squall_timeout` ini option changes it.
DEFAULT_TIMEOUT = 30.0
#: Seconds starting (the first start imports Squall) and stopping may take, whatever `timeout` says.
LIFE_CYCLE_TIMEOUT = 120.0
#: Statuses of executions still on their way; `paused` and `pending` (an inquiry) wait for a person.
ACTIVE = ("requested", "scheduled", "delayed", "running", "canceling", "pausing", "resuming")
#: Environment variables Squall's assembly sets for the `squall` pack's CLI calls; restored after each test.
_SQUALL_ENV = ("SQUALL_CONFIG", "SQUALL_CLI")
#: pytest-asyncio's ini option for the loop of async fixtures (`pytest_load_initial_conftests`).
ASYNCIO_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"
#: Squall's own top-level packages (generic names a pack's folders may also have).
_OWN_PACKAGES = ("bot", "aliases", "engine", "adapters")


# -- pytest hooks: options and the marker ----------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("squall_pack", "the pack squallbot loads (a folder with pack.yaml), relative to the ini "
                  "file; default: the nearest folder with pack.yaml above the test file", default="")
    parser.addini("squall_timeout", f"seconds squallbot waits for Squall to be idle (default {DEFAULT_TIMEOUT:g})",
                  default=str(DEFAULT_TIMEOUT))


@pytest.hookimpl(trylast=True)  # after conftests register their plugins (a conftest's `pytest_plugins`)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> None:
    """In a pack's run, pytest-asyncio's `asyncio_default_fixture_loop_scope` defaults to `function`.

    pytest-asyncio (in a Squall checkout's `.venv`, for Squall's own tests) warns on every run where the
    option is unset, and a pack's tests use no asyncio at all: an author saw a deprecation warning about a
    plugin they never asked for. `function` is the default pytest-asyncio announces; it is set as the
    option's default, so a value in the project's ini file or `-o` still wins. Only runs in a pack's folder
    (or naming one with `squall_pack`) get it: pytest loads this plugin in every project of the environment,
    and another project's async fixtures must keep the loop they had."""
    if early_config.pluginmanager.hasplugin("asyncio") and _runs_for_a_pack(early_config):
        parser.addini(ASYNCIO_LOOP_SCOPE, "default scope of the asyncio event loop used to execute async fixtures "
                      "(squall: `function` in a pack's folder)", type="string", default="function")


def _runs_for_a_pack(config: pytest.Config) -> bool:
    """Whether pytest runs a pack's tests: started in a pack's folder or below it, or told the pack."""
    here = config.invocation_params.dir
    return bool(config.getini("squall_pack")) or any(
        (folder / "pack.yaml").is_file() for folder in (here, *here.parents, config.rootpath))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "squall(pack=None, packs=(), config=None, pack_config=None, allow_problems=False): how the squallbot "
        "fixture builds Squall for this test: another pack folder (relative to the test file), packs it "
        "needs, config.yml keys, the pack's configs/<pack>.yaml, and whether load problems are tolerated",
    )


# -- what a test reads ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatPost:
    """One message the bot posted, as the chat platform shows it."""

    text: str
    channel: str
    thread: str | None
    #: Later edits of this message, oldest first: the ack is edited to the execution's final status.
    edits: tuple[str, ...] = ()

    @property
    def final_text(self) -> str:
        """The text after the last edit (what a person scrolling back reads)."""
        return self.edits[-1] if self.edits else self.text


# -- the fixture ----------------------------------------------------------------------------------

@pytest.fixture
def squallbot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[SquallBot]:
    """The pack under test in a throwaway Squall with a chat in memory (see `SquallBot`)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("squall"))):  # the module's, then the class's, ...
        for key, value in marker.kwargs.items():
            if key == "config" and isinstance(value, Mapping):  # keys add up; the closer marker wins a key
                _merge(options.setdefault("config", {}), value)
            else:
                options[key] = value
    unknown = set(options) - {"pack", "packs", "config", "pack_config", "allow_problems"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.squall: unknown argument(s) {', '.join(sorted(unknown))}")
    pack = find_pack(request, options.get("pack"))
    base = Path(request.path).parent
    extra = [(base / str(path)).resolve() for path in options.get("packs") or ()]
    home = tmp_path_factory.mktemp("squall")
    config_path = write_home(home, pack, extra, options.get("config") or {}, options.get("pack_config"))
    for key in _SQUALL_ENV:  # recorded by monkeypatch, so whatever the assembly sets is undone after the test
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    bot = SquallBot(pack, home, timeout=float(request.config.getini("squall_timeout") or DEFAULT_TIMEOUT))
    bot.start(config_path)
    try:
        if bot.problems and not options.get("allow_problems"):
            pytest.fail("squallbot: files of the packs under test did not load:\n  " + "\n  ".join(bot.problems),
                        pytrace=False)
        yield bot
    finally:
        bot.close()


@pytest.fixture
def squall_pack(squallbot: SquallBot) -> SquallBot:
    """`squallbot` under the name of what it loads."""
    return squallbot


def find_pack(request: pytest.FixtureRequest, option: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the pack under test: the marker's `pack` (relative to the test file), else the
    `squall_pack` ini option (relative to the ini file), else the nearest folder holding pack.yaml
    from the test file's folder up, else pytest's rootdir or the folder pytest was started in."""
    config = request.config
    if option:
        return _pack_folder(Path(request.path).parent / option, "@pytest.mark.squall(pack=...)")
    ini = config.getini("squall_pack")
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return _pack_folder(base / str(ini), "the squall_pack ini option")
    here = Path(request.path).resolve().parent
    for folder in (here, *here.parents, config.rootpath, config.invocation_params.dir):
        if (folder / "pack.yaml").is_file():
            return folder
    raise pytest.UsageError(f"squallbot: no pack.yaml in {here} or above it, nor in the rootdir "
                            f"{config.rootpath}; run pytest in the pack's folder, or name the pack with "
                            "the squall_pack ini option or @pytest.mark.squall(pack=...)")


def _pack_folder(path: Path, named_by: str) -> Path:
    path = path.resolve()
    if not (path / "pack.yaml").is_file():
        raise pytest.UsageError(f"squallbot: {named_by} names {path}, which holds no pack.yaml")
    return path


def pack_ref(pack: Path) -> str:
    """The pack's ref as Squall reads it: pack.yaml's `ref`, else its `name`, else the folder's name."""
    import yaml

    metadata = yaml.safe_load((pack / "pack.yaml").read_text()) or {}
    ref = (metadata.get("ref") or metadata.get("name")) if isinstance(metadata, dict) else None
    return str(ref or pack.name)


def write_home(home: Path, pack: Path, extra_packs: Sequence[Path], config: Mapping[str, Any],
               pack_config: Mapping[str, Any] | None) -> Path:
    """A Squall home in `home`: config.yml on SQLite loading exactly the given packs (a path holding
    pack.yaml is that one pack, not its siblings), with `config` merged over it; the pack's config
    file when given. Returns the config file's path."""
    import yaml

    settings: dict[str, Any] = {
        "database": {"url": "sqlite:///data/squall.db"},
        "packs": {"paths": [str(pack), *map(str, extra_packs)], "configs_path": "configs"},
        # Python actions start one warm worker per pack: enough for a test, and quick to start.
        "executor": {"python_workers_per_pack": 1},
    }
    _merge(settings, config)
    path = home / "config.yml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    if pack_config is not None:
        (home / "configs").mkdir(exist_ok=True)
        (home / "configs" / f"{pack_ref(pack)}.yaml").write_text(yaml.safe_dump(dict(pack_config)))
    return path


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge `extra` into `into`, mappings key by key; copies, so a marker's dicts are never changed."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


# -- the bot a test drives --------------------------------------------------------------------------

class SquallBot:
    """A running Squall with the pack under test and one in-memory chat. Every method blocks until
    Squall is idle again (or `timeout` seconds pass: `TimeoutError`, naming what was still busy).

    `say(text)` types a chat message and returns the texts the bot posted for it (ack, result,
    notifications...); `run(ref, **parameters)` runs an action and returns its finished execution
    record; `emit(ref, payload)` fires a trigger and returns the finished executions its rules
    started; `webhook(hook, body)` is `emit` for `core.st2.webhook`."""

    def __init__(self, pack: Path, home: Path, *, timeout: float = DEFAULT_TIMEOUT,
                 user: str = "tester", channel: str = "#test") -> None:
        self.pack = pack
        self.pack_ref = pack_ref(pack)
        self.home = home
        #: Seconds each call waits; change it for a slow action (`squallbot.timeout = 120`).
        self.timeout = timeout
        #: Who `say` speaks as, and where, unless told otherwise.
        self.user = user
        self.channel = channel
        #: Files of the loaded packs that did not load, as "file:line: reason".
        self.problems: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._squall: _Running | None = None

    # -- chat --------------------------------------------------------------------------------------
    def say(self, text: str, *, user: str | None = None, channel: str | None = None, thread: str | None = None,
            direct: bool = False, mentioned: bool = False, groups: Sequence[str] = ()) -> list[str]:
        """Type `text` in the chat (address the bot: `!command`, or `direct=True`) and return what the
        bot posted until it was idle again, in order, each as first posted (an ack's later edit to
        the final status is in `posts[i].edits`)."""
        running = self._running()

        async def say() -> list[str]:
            first = len(running.loopback.posted)
            await running.loopback.say(text, user=user or self.user, channel=channel or self.channel,
                                       thread=thread, direct=direct, mentioned=mentioned, groups=list(groups))
            await running.idle()
            return [posted.reply.text for posted in running.loopback.posted[first:]]

        return self._call(say(), f"the answer to {text!r}")

    @property
    def posts(self) -> list[ChatPost]:
        """Everything the bot posted in this test, oldest first, with channel, thread and edits."""
        return self._call(self._posts(), "the list of posts")

    async def _posts(self) -> list[ChatPost]:
        return [ChatPost(p.reply.text, p.reply.channel, p.reply.thread, tuple(p.edits))
                for p in self._running().loopback.posted]

    @property
    def replies(self) -> list[str]:
        """The texts of `posts`, as first posted."""
        return [post.text for post in self.posts]

    # -- actions, triggers, the datastore ------------------------------------------------------
    def run(self, ref: str, parameters: Mapping[str, Any] | None = None, /, **params: Any) -> dict[str, Any]:
        """Run action `ref` with `parameters` and/or keyword parameters (values taken as given, as
        from `squall run`) and return its finished execution record: `status`, `result`, ...
        Bad input (unknown action or parameter) raises, as `squall run` exits 2."""
        running = self._running()

        async def run() -> dict[str, Any]:
            executions = running.engine.executions
            requested = await executions.request(ref, {**(parameters or {}), **params}, {"user": self.user})
            finished = await executions.wait(requested["id"])
            await running.idle()
            return await executions.get(finished["id"])

        return self._call(run(), f"the execution of {ref}")

    def emit(self, ref: str, payload: Any = None, /, **trigger_parameters: Any) -> list[dict[str, Any]]:
        """Fire trigger `ref` with `payload` (checked against the trigger's payload schema) and return
        the finished executions of the rules it matched, in the order they were enforced (none: no
        rule matched). Keyword arguments are the trigger's parameters (`url=` of a webhook, say):
        only rules on the same parameters see the instance. A rule that matched but could not
        request its action fails the call with the rule's reason."""
        running = self._running()

        async def emit() -> list[dict[str, Any]]:
            engine = running.engine
            instance = await engine.triggers.dispatch(ref, {} if payload is None else payload,
                                                      parameters=trigger_parameters or None)
            await running.idle()
            enforcements = await engine.rules.enforcements(trigger_instance_id=instance["id"], limit=10_000)
            enforcements.sort(key=lambda e: str(e.get("enforced_at") or ""))
            failed = [f"{e['rule']['ref']}: {e.get('failure_reason')}" for e in enforcements if not e["execution_id"]]
            if failed:
                raise AssertionError(f"rules failed on {ref}:\n  " + "\n  ".join(failed))
            return [await engine.executions.get(e["execution_id"]) for e in enforcements]

        return self._call(emit(), f"the rules on {ref}")

    def webhook(self, hook: str, body: Any, /, headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """POST `body` to `/api/v1/webhooks/<hook>` as far as the rules can tell: a `core.st2.webhook`
        instance for that hook with the payload the API builds (`headers`, `headers_lower`, `body`)."""
        sent = {name.title(): value for name, value in (headers or {}).items()}  # as the API names them
        payload = {"headers": sent, "headers_lower": {k.lower(): v for k, v in sent.items()}, "body": body}
        return self.emit("core.st2.webhook", payload, url=hook.strip("/"))

    def executions(self, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Execution records, newest first (of `action` only, when given)."""
        running = self._running()
        return self._call(running.engine.executions.list(action=action, limit=limit), "the execution list")

    def set_key(self, name: str, value: Any, *, encrypt: bool = False) -> None:
        """Store a datastore value (`st2kv.system.<name>` in templates; `{{ ... | decrypt_kv }}` if encrypted)."""
        running = self._running()

        async def set_key() -> None:
            await running.engine.db(running.engine.datastore.set, name, value, encrypt=encrypt)
            await running.idle()  # rules on core.st2.key_value_pair.* act first

        self._call(set_key(), f"storing key {name}")

    def get_key(self, name: str, *, decrypt: bool = False) -> Any:
        """A datastore value (None when unset), say one an action stored."""
        running = self._running()

        async def get_key() -> Any:
            record = await running.engine.db(running.engine.datastore.get, name, decrypt=decrypt)
            return record["value"] if record else None

        return self._call(get_key(), f"reading key {name}")

    def wait_idle(self) -> None:
        """Wait until nothing runs, no trigger is being processed and every reply is delivered."""
        self._call(self._running().idle(), "Squall to be idle")

    @property
    def engine(self) -> Any:
        """Squall's engine object itself, for what the methods above do not cover. Its API is
        Squall's internals and may change between releases; its coroutines run on the bot's loop."""
        return self._running().engine

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, config_path: Path) -> None:
        """Start Squall on `config_path` on a loop in a thread of its own."""
        import asyncio

        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="squallbot", daemon=True)
        self._thread.start()
        try:
            self._squall = self._call(_Running.start(config_path), "Squall to start", timeout=LIFE_CYCLE_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise
        self.problems = self._squall.problems

    def close(self) -> None:
        """Stop the chat and the engine (what still runs is abandoned), then the loop and its thread."""
        try:
            if self._squall is not None:
                squall, self._squall = self._squall, None
                self._call(squall.close(), "Squall to stop", running=False, timeout=LIFE_CYCLE_TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    def _running(self) -> _Running:
        if self._squall is None:
            raise RuntimeError("squallbot is not running (it is started by the fixture, for one test)")
        return self._squall

    def _call(self, coroutine: Coroutine[Any, Any, T], what: str, *, running: bool = True,
              timeout: float | None = None) -> T:
        """Run `coroutine` on the bot's loop and wait for it at most `timeout` (default `self.timeout`)
        seconds; past that it is canceled and the error says what Squall was still busy with."""
        import asyncio

        if self._loop is None:
            coroutine.close()
            raise RuntimeError("squallbot is not running")
        seconds = self.timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, seconds), self._loop)
        try:
            return future.result(seconds + 5)  # the margin: a blocking call on the loop (an import) is not canceled
        except TimeoutError:
            future.cancel()
            busy = self._call_quietly(self._squall.busy()) if running and self._squall is not None else ""
            raise TimeoutError(f"squallbot: {what} took longer than {seconds:g} s{busy}") from None

    def _call_quietly(self, coroutine: Coroutine[Any, Any, str]) -> str:
        """A short report for an error message; never raises."""
        import asyncio

        if self._loop is None:
            coroutine.close()
            return ""
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5)
        except Exception:
            return ""


# -- Squall's insides: the only part that names them -------------------------------------------------

class _Running:
    """The engine and the chat of one test, and what "idle" means for them."""

    def __init__(self, engine: Any, chat: Any, loopback: Any, problems: list[str]) -> None:
        self.engine = engine
        self.chat = chat
        self.loopback = loopback
        self.problems = problems

    @classmethod
    async def start(cls, config_path: Path) -> _Running:
        """Squall as `squall serve` assembles it (`bot.app.Squall`: the engine with chat in front),
        with the loopback adapter as its only chat platform. Imported here, not at plugin import."""
        try:
            from adapters.loopback import LoopbackAdapter
            from aliases import load_aliases
            from bot.app import Squall
            from engine.config import load_config
        except ImportError as exc:
            shadowed = _shadowed(exc)
            if shadowed is None:
                raise
            raise shadowed from exc

        loopback = LoopbackAdapter(ADAPTER)
        squall = await Squall.start(load_config(config_path), adapters=[loopback])
        try:
            await squall.chat.start()
        except BaseException:
            await squall.close()
            raise
        _, alias_errors = load_aliases(squall.registry)
        problems = [str(error) for error in [*squall.registry.errors, *alias_errors]]
        return cls(squall, squall.chat, loopback, list(dict.fromkeys(problems)))

    async def close(self) -> None:
        await self.engine.close()  # the chat side stops with it

    def _listeners(self) -> int:
        """Handlers of finished executions and other events still at work (posting results, notifications)."""
        return self.engine.executions.notifying + self.engine.events.busy

    async def _quiet(self) -> bool:
        engine, outbox = self.engine, self.chat.outbox
        await engine.emitted()  # datastore triggers handed to the loop, and every trigger instance processed
        if engine.executor.running or self._listeners() or engine.triggers.busy:
            return False
        if await engine.executions.list(status=list(ACTIVE), limit=1):
            return False
        if outbox.pending:
            await outbox.drain()
            return False
        return True

    async def idle(self) -> None:
        """Return once Squall was found quiet twice in a row, a loop turn or two apart: an execution
        that just finished hands its result to listeners, which hand it to the outbox."""
        import asyncio

        quiet_in_a_row = 0
        while quiet_in_a_row < 2:
            quiet_in_a_row = quiet_in_a_row + 1 if await self._quiet() else 0
            await asyncio.sleep(0.005)

    async def busy(self) -> str:
        """What keeps Squall from being idle, for a timeout's message."""
        active = await self.engine.executions.list(status=list(ACTIVE), limit=20)
        parts = [f"{e['action']} {e['status']} ({e['id']})" for e in active]
        if self._listeners():
            parts.append(f"{self._listeners()} result/notification handler(s)")
        if self.chat.outbox.pending:
            parts.append(f"{self.chat.outbox.pending} reply(ies) not delivered")
        posted = [p.text for p in self.loopback.posted][-5:]
        said = f"; last posts: {posted}" if posted else "; nothing posted"
        return (f"; still busy: {', '.join(parts)}" if parts else "") + said


def _shadowed(exc: ImportError) -> pytest.UsageError | None:
    """The error to show when Squall's own packages were found as folders of the project under
    test (an install whose import hook runs after the path search), instead of the bare ImportError."""
    shadowed = [name for name in _OWN_PACKAGES
                if name in sys.modules and getattr(sys.modules[name], "__file__", None) is None]
    if not shadowed:
        return None
    where = ", ".join(f"{name} -> {list(getattr(sys.modules[name], '__path__', []))}" for name in shadowed)
    return pytest.UsageError(
        f"squallbot: Squall's own package(s) resolved to folders of this project instead ({where}): {exc}. "
        "Squall's folder must be a sys.path entry: reinstall it (`make install` in Squall's checkout, or "
        "`pip install <checkout>`), not with an import hook")
