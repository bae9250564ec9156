"""Squall's configuration: one YAML file, every relative path resolved against its folder.

The file is optional: without it Squall runs on the embedded defaults (SQLite under `data/`,
the packs shipped with Squall), so `squall run core.noop` works in an empty folder.
"""

from __future__ import annotations

import difflib
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_NAME = "config.yml"
CONFIG_ENV = "SQUALL_CONFIG"

#: The packs shipped with Squall (core, ...) are always loaded, whatever `packs.paths` says.
SYSTEM_PACKS_PATH = Path(__file__).resolve().parent.parent / "packs"


#: `templates.max_output_chars`: the longest text (or list) a template may output or make on the way.
DEFAULT_MAX_OUTPUT_CHARS = 1024 * 1024
#: `templates.max_seconds`: how long one render may take.
DEFAULT_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class TemplateLimits:
    """How much one render may make and how long it may take (config section `templates`; applied
    by `engine.templates.configure_limits`). Here, not in `engine/templates.py`, so reading the
    configuration does not import Jinja."""

    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    max_seconds: float = DEFAULT_MAX_SECONDS


#: The queue of executions `executor.queues` does not place (a `squall worker` without `--queues` serves all).
DEFAULT_QUEUE = "default"
EXECUTOR_KINDS = ("local", "procrastinate")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass
class Config:
    """The settings Squall reads; every path is absolute once loaded."""

    path: Path | None
    base_dir: Path
    database_url: str
    data_dir: Path
    pack_paths: list[Path]
    install_path: Path
    configs_path: Path
    virtualenvs_path: Path
    encryption_key_path: Path
    python_workers_per_pack: int = 4
    max_concurrency: int = 64
    api_url: str = "http://127.0.0.1:9101/api/v1"
    #: `runners.user`: who local shell and Python actions run as when Squall runs as root.
    runner_user: str | None = None
    #: `runners.allow_root`: running them as root is wanted (no warning at `squall serve`).
    allow_root: bool = False
    #: `templates.max_output_chars` / `templates.max_seconds`: what one render may make and take.
    template_limits: TemplateLimits = field(default_factory=TemplateLimits)
    #: `executor.kind`: `local` (everything in `squall serve`) or `procrastinate` (`squall worker`s run
    #: the executions, over PostgreSQL).
    executor_kind: str = "local"
    #: `executor.queues`: pack or action ref -> the queue its executions go to (else `default`).
    queues: dict[str, str] = field(default_factory=dict)
    #: `executor.unserved_after`: seconds a queued execution waits before chat is told no worker took it (0: never).
    unserved_after: float = 60.0
    raw: dict[str, Any] = field(default_factory=dict)

    def queue_for(self, ref: str) -> str:
        """The queue of an action's executions: its own entry, else its pack's, else `default`."""
        return self.queues.get(ref) or self.queues.get(ref.partition(".")[0]) or DEFAULT_QUEUE

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section as a dict, for the parts of Squall that own their own keys."""
        value = self.raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: '{name}' must be a mapping, not {type(value).__name__}")
        return value


_KNOWN_SECTIONS = {
    "database": {"url"},
    "data_dir": None,
    "packs": {"paths", "install_path", "configs_path", "virtualenvs_path"},
    "datastore": {"encryption_key_path"},
    "executor": {"python_workers_per_pack", "max_concurrency", "kind", "queues", "unserved_after"},
    "runners": {"user", "allow_root"},
    "templates": {"max_output_chars", "max_seconds"},
    "api": None,
    "chat": None,
    "adapters": None,
    "routes": None,
    "auth": None,
    "logging": None,
}


def _executor(path: Path | None, section: dict[str, Any], url: str) -> tuple[str, dict[str, str]]:
    """`executor.kind` and `executor.queues`, checked: the scale-out executor needs PostgreSQL."""
    kind = section.get("kind", "local")
    if kind not in EXECUTOR_KINDS:
        raise ConfigError(f"{path}: 'executor.kind' must be one of {', '.join(EXECUTOR_KINDS)}, not {kind!r}")
    if kind == "procrastinate" and not url.startswith("postgresql"):
        raise ConfigError(f"{path}: 'executor.kind: procrastinate' needs PostgreSQL ('database.url: "
                          f"postgresql://...'); this config's database is {url.partition(':')[0]}. "
                          "Use 'executor.kind: local' with SQLite.")
    queues = section.get("queues") or {}
    if not isinstance(queues, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                               for k, v in queues.items()):
        raise ConfigError(f"{path}: 'executor.queues' must map pack or action refs to queue names, such as "
                          "{linux: zone-a, core.remote: zone-b}")
    return str(kind), {k: v.strip() for k, v in queues.items()}


def _check_keys(path: Path | None, raw: dict[str, Any]) -> None:
    """Name unknown keys with the nearest known one: a typo must not silently use a default."""
    for key, value in raw.items():
        if key not in _KNOWN_SECTIONS:
            near = difflib.get_close_matches(key, list(_KNOWN_SECTIONS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{path}: unknown top-level key '{key}'{hint}")
        allowed = _KNOWN_SECTIONS[key]
        if allowed is None or value is None:  # an empty section (`packs:` alone) means its defaults
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping, not {type(value).__name__}")
        for sub in value:
            if sub not in allowed:
                near = difflib.get_close_matches(sub, sorted(allowed), n=1)
                hint = f" (did you mean '{key}.{near[0]}'?)" if near else ""
                raise ConfigError(f"{path}: unknown key '{key}.{sub}'{hint}")


def _runners(path: Path | None, section: dict[str, Any]) -> tuple[str | None, bool]:
    """`runners.user` (an existing user) and `runners.allow_root` (a boolean); not both."""
    user = section.get("user")
    allow_root = section.get("allow_root", False)
    if allow_root is None:
        allow_root = False
    if not isinstance(allow_root, bool):
        raise ConfigError(f"{path}: 'runners.allow_root' must be true or false, not {allow_root!r}")
    if user is None or user == "":
        return None, allow_root
    if not isinstance(user, str):
        raise ConfigError(f"{path}: 'runners.user' must be a user name, not {user!r}")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"{path}: 'runners.user': there is no user '{user}' on this host "
                          f"(create it with: useradd --system --create-home {user})") from None
    if allow_root:
        raise ConfigError(f"{path}: 'runners.user' ({user}) and 'runners.allow_root: true' contradict each "
                          "other: set the user actions run as, or allow root, not both")
    return user, False


def _templates(path: Path | None, section: dict[str, Any]) -> tuple[int, float]:
    """`templates.max_output_chars` (a whole number of characters) and `templates.max_seconds`."""
    chars = section.get("max_output_chars", DEFAULT_MAX_OUTPUT_CHARS)
    seconds = section.get("max_seconds", DEFAULT_MAX_SECONDS)
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1024:
        raise ConfigError(f"{path}: 'templates.max_output_chars' must be a whole number of characters, at least "
                          f"1024, not {chars!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
        raise ConfigError(f"{path}: 'templates.max_seconds' must be a number of seconds above 0 and at most 3600, "
                          f"not {seconds!r}")
    return chars, float(seconds)


def _resolve(base: Path, value: str | os.PathLike[str]) -> Path:
    candidate = Path(os.path.expanduser(str(value)))
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?$")


def _database_url(base: Path, url: str) -> str:
    """Make a relative SQLite path relative to the config file, like every other path.

    Any SQLite driver (`sqlite+pysqlite:///`) and a query string (`?timeout=30`) are kept."""
    match = _SQLITE_URL.match(url)
    if match is None:
        return url
    prefix, database, query = match.group(1), match.group(2), match.group(3) or ""
    if not database or database.startswith("/") or database == ":memory:":
        return url
    return f"{prefix}{_resolve(base, database)}{query}"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file named, or `$SQUALL_CONFIG`, or `./config.yml` when it exists."""
    explicit = path if path is not None else os.environ.get(CONFIG_ENV)
    config_path: Path | None
    if explicit:
        config_path = Path(explicit).expanduser().resolve()
        if not config_path.is_file():
            raise ConfigError(f"config file {config_path} does not exist")
    else:
        candidate = Path.cwd() / DEFAULT_CONFIG_NAME
        config_path = candidate.resolve() if candidate.is_file() else None

    raw: dict[str, Any] = {}
    if config_path is not None:
        try:
            text = config_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: cannot read the config file: {exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            context_mark = getattr(exc, "context_mark", None)
            if mark is None or (context_mark is not None and mark.index >= len(text)):
                # an unclosed quote or bracket is found at the end of the file: name where it starts
                mark = context_mark
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{config_path}{where}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
        raw = loaded
    _check_keys(config_path, raw)

    base = config_path.parent if config_path else Path.cwd()
    data_dir = _resolve(base, raw.get("data_dir", "data"))
    packs = raw.get("packs") or {}
    paths_value = packs.get("paths", ["packs"])
    if isinstance(paths_value, str):
        paths_value = [paths_value]
    if not isinstance(paths_value, list) or not all(isinstance(p, str) for p in paths_value):
        raise ConfigError(f"{config_path}: 'packs.paths' must be a list of folders")
    pack_paths = [_resolve(base, p) for p in paths_value]
    install_path = _resolve(base, packs["install_path"]) if "install_path" in packs else (
        pack_paths[0] if pack_paths else data_dir / "packs"
    )
    database = raw.get("database") or {}
    url = database.get("url") or f"sqlite:///{data_dir / 'squall.db'}"
    executor = raw.get("executor") or {}
    api = raw.get("api") or {}
    api_url = f"http://{api.get('host', '127.0.0.1')}:{api.get('port', 9101)}/api/v1"
    try:
        workers = int(executor.get("python_workers_per_pack", 4))
        concurrency = int(executor.get("max_concurrency", 64))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config_path}: executor settings must be whole numbers: {exc}") from exc
    if workers < 1 or concurrency < 1:
        raise ConfigError(f"{config_path}: executor settings must be at least 1")
    kind, queues = _executor(config_path, executor, str(url))
    unserved = executor.get("unserved_after", 60)
    if isinstance(unserved, bool) or not isinstance(unserved, int | float) or unserved < 0:
        raise ConfigError(f"{config_path}: 'executor.unserved_after' must be seconds (0 or more), not {unserved!r}")
    runner_user, allow_root = _runners(config_path, raw.get("runners") or {})
    max_chars, max_seconds = _templates(config_path, raw.get("templates") or {})
    return Config(
        path=config_path,
        base_dir=base,
        database_url=_database_url(base, str(url)),
        data_dir=data_dir,
        pack_paths=pack_paths,
        install_path=install_path,
        configs_path=_resolve(base, packs.get("configs_path", "configs")),
        virtualenvs_path=_resolve(base, packs.get("virtualenvs_path", data_dir / "virtualenvs")),
        encryption_key_path=_resolve(
            base, (raw.get("datastore") or {}).get("encryption_key_path", data_dir / "datastore.key")
        ),
        python_workers_per_pack=workers,
        max_concurrency=concurrency,
        api_url=api_url,
        runner_user=runner_user,
        allow_root=allow_root,
        template_limits=TemplateLimits(max_output_chars=max_chars, max_seconds=max_seconds),
        executor_kind=kind,
        queues=queues,
        unserved_after=float(unserved),
        raw=raw,
    )
