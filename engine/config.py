"""Squall's configuration: one YAML file, every relative path resolved against its folder.

The file is optional: without it Squall runs on the embedded defaults (SQLite under `data/`,
the packs shipped with Squall), so `squall run core.noop` works in an empty folder.
"""

from __future__ import annotations

import difflib
import math
import os
import pwd
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from engine.yamlfile import DuplicateKey
from engine.yamlfile import parse as parse_yaml

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


#: `retention.<key>`: the fewest days each may keep, StackStorm's garbage collector's minimums
#: (`MINIMUM_TTL_DAYS`, 7, for executions and trigger instances; `MINIMUM_TTL_DAYS_EXECUTION_OUTPUT`, 1).
#: `squall execution purge --before` and `squall trigger-instance purge --before` go below them by hand.
#: `audit_days` is Squall's own (StackStorm writes its audit to log files, rotated outside it): 30 at least,
#: since the audit log is the trail people read after an incident.
RETENTION_MINIMUM_DAYS = {"executions_days": 7, "output_days": 1, "trigger_instances_days": 7, "audit_days": 30}
#: What each `retention` key keeps, for its error message.
_RETENTION_KEEPS = {"executions_days": "executions", "output_days": "execution output",
                    "trigger_instances_days": "trigger instances", "audit_days": "the audit log"}
#: The most days a `retention` key may keep (a century): beyond it the cutoff would fall before year 1.
_RETENTION_MAXIMUM_DAYS = 36_500
#: The command that purges younger history than `retention` may, by hand.
_RETENTION_BY_HAND = {"executions_days": "Younger history can be deleted by hand: squall execution purge --before 3d",
                      "output_days": "Younger output goes only with its execution, by hand: squall execution purge "
                                     "--before 1d (which deletes the executions whole)",
                      "trigger_instances_days": "Younger history can be deleted by hand: squall trigger-instance "
                                                "purge --before 3d",
                      "audit_days": "Younger history can be deleted by hand: squall audit purge --before 7d"}
#: Whose minimum each `retention` key's is: `audit_days` is Squall's own (StackStorm keeps no audit table).
_RETENTION_MINIMUM_OF = {"audit_days": "Squall's minimum, for the trail people read after an incident"}


@dataclass(frozen=True)
class RetentionSettings:
    """`retention`: how many days `squall serve` keeps history before deleting it (`engine/retention.py`),
    StackStorm's `[garbagecollector]` TTLs. None keeps it for ever, the default: nothing is deleted unless
    asked. Here, not in `engine/retention.py`, so reading the configuration imports no SQL."""

    #: Executions that ended this long ago go, with their workflow tasks, output and sent chat replies.
    executions_days: float | None = None
    #: Only the output (`execution_output`) of executions that ended this long ago; may be shorter.
    output_days: float | None = None
    #: Processed trigger instances that occurred this long ago go, with their rule enforcements.
    trigger_instances_days: float | None = None
    #: Audit log entries logged this long ago go (after `squall audit export` or an `audit.sinks` copy).
    audit_days: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether any history is purged at all."""
        return any(days is not None for days in (self.executions_days, self.output_days,
                                                 self.trigger_instances_days, self.audit_days))


#: The queue of executions `executor.queues` does not place (a `squall worker` without `--queues` serves all).
DEFAULT_QUEUE = "default"
EXECUTOR_KINDS = ("local", "procrastinate")
#: `workflows.max_depth` unless set: StackStorm sets no bound; only a workflow calling itself without end nears it.
DEFAULT_WORKFLOW_MAX_DEPTH = 100
#: `executor.shutdown_grace` unless set: StackStorm's graceful shutdown waits up to 300 s; 30 s stays well
#: under the `TimeoutStopSec=60` of the docs' systemd units, after which systemd kills what is left.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: The `database.url` schemes Squall runs on: SQLite with Python's own driver, PostgreSQL with psycopg 3
#: (`engine.storage.create_engine`); any other would fail at the first command, on a driver not installed.
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


#: The web UI's roles, lowest first (`bot.accounts.ROLES`; the engine imports nothing of `bot`).
WEB_ROLES = ("viewer", "operator", "admin")
#: `web.oidc` keys (`docs/ui.md`); `client_secret` or `client_secret_env`, not both.
OIDC_KEYS = ("issuer", "client_id", "client_secret", "client_secret_env", "scopes", "role_claim", "roles",
             "default_role")


@dataclass(frozen=True)
class OidcSettings:
    """`web.oidc`: log in to the web UI through an OpenID Connect provider (`bot/web/oidc.py`).

    Checked here with the rest of the file so a typo stops `squall serve` at start, naming the key,
    instead of showing up as a failed login in someone's browser."""

    issuer: str
    client_id: str
    #: The secret from the file, or "" when `client_secret_env` names the variable holding it.
    client_secret: str = field(repr=False)
    client_secret_env: str | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    #: The ID token claim holding the person's groups (a list, or one string).
    role_claim: str = "groups"
    #: role -> the groups that give it; the highest role any of the person's groups gives wins.
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The role of a person in none of those groups; None refuses them.
    default_role: str | None = None

    def secret(self) -> str:
        """The client's secret, read from `client_secret_env` when that is set.

        Read here, when the web app starts, not when the file loads: actions inherit no `SQUALL_*`
        variable (`engine/runners/environment.py`), yet the `squall` pack's actions load this file."""
        if self.client_secret_env is None:
            return self.client_secret
        secret = os.environ.get(self.client_secret_env, "")
        if not secret:
            raise ConfigError(f"'web.oidc.client_secret_env': the environment variable {self.client_secret_env} "
                              "is not set or empty; it must hold the client's secret")
        return secret


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
    #: `executor.shutdown_grace`: seconds `squall serve` and `squall worker` (unless its `--drain` is given), stopped
    #: (SIGTERM, Ctrl-C), let running actions finish before they abandon them (0: at once). Under systemd's
    #: `TimeoutStopSec` (60 in the docs' units).
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: `workflows.max_depth`: how deep workflows may nest (a workflow calling itself without end stops there).
    workflow_max_depth: int = DEFAULT_WORKFLOW_MAX_DEPTH
    #: `web.oidc`: OpenID Connect login to the web UI, when configured.
    oidc: OidcSettings | None = None
    #: `retention.*`: how long history is kept (for ever unless configured).
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    raw: dict[str, Any] = field(default_factory=dict)

    def queue_for(self, ref: str) -> str:
        """The queue of an action's executions: its own entry, else its pack's, else `default`."""
        return self.queues.get(ref) or self.queues.get(ref.partition(".")[0]) or DEFAULT_QUEUE

    @property
    def metrics_enabled(self) -> bool:
        """`metrics.enabled` (default true): whether this process records Prometheus metrics."""
        return self._flag("metrics", "enabled", True)

    @property
    def metrics_public(self) -> bool:
        """`metrics.public` (default false): `/metrics` answers without an API key."""
        return self._flag("metrics", "public", False)

    def _flag(self, section: str, key: str, default: bool) -> bool:
        return flag(self.section(section), key, default, f"{section}.{key}", self.path)

    @property
    def named(self) -> str:
        """The config as messages name it: its file, or that there is none (never `None`)."""
        return str(self.path) if self.path is not None else "the built-in defaults (no config file)"

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section as a dict, for the parts of Squall that own their own keys."""
        value = self.raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: '{name}' must be a mapping, not {type(value).__name__}")
        return value


#: `api` keys: read by `bot/http/state.py` (`ApiSettings`), `bot/http/server.py` and `bot/cli/serve.py`
#: (host, port), `bot/service.py` (enabled), `bot/apikeys.py` (keys).
API_KEYS = frozenset({"enabled", "host", "port", "keys", "max_body_bytes", "token_ttl", "render_keys", "public_docs",
                      "webhooks"})
#: `api.webhooks.<name>` keys (`bot/http/webhook_signatures.py`, `bot/http/state.py`).
WEBHOOK_KEYS = frozenset({"secret", "tolerance", "legacy_signature"})
#: `chat` keys (`bot/chat/dispatcher.py`'s `ChatSettings`; it checks `chat.suggest`'s own).
CHAT_KEYS = frozenset({"prefix", "bot_name", "thread_replies", "confirm_ttl", "suggest", "favourites", "flood"})
#: `chat.flood` keys (`chat_flood`): both required, no default limit.
CHAT_FLOOD_KEYS = ("commands", "seconds")
#: The most `chat.flood.commands` and `chat.flood.seconds` may be (a window of a day).
MAX_FLOOD_COMMANDS = 10_000
MAX_FLOOD_SECONDS = 86_400
#: `auth` keys (`bot/chat/auth.py`'s `Authorizer`).
AUTH_KEYS = frozenset({"admins", "groups", "aliases"})
#: `auth.aliases.<ref>` keys, and what each of them lists (`aliases.model.PERMISSION_SIDES` and
#: `PERMISSION_KINDS`, an alias's own `permissions:`; the engine does not import the alias model).
AUTH_RULE_SIDES = ("allow", "deny")
AUTH_RULE_KINDS = ("users", "groups", "channels", "adapters")
#: `routes.<name>` keys (`bot/chat/announce.py`).
ROUTE_KEYS = frozenset({"adapter", "channel"})
#: `adapters.<name>` keys, the lists each adapter reads (`adapters/<name>.py`; Slack's `_KEYS` and IRC's
#: `_KNOWN_KEYS` are the same sets, which a test holds): checked by `check_adapter` for every section,
#: enabled or not, without importing the platform's library.
ADAPTER_KEYS: dict[str, frozenset[str]] = {
    "console": frozenset({"enabled", "user", "channel"}),
    "slack": frozenset({"enabled", "mode", "base_url", "slash_command", "thread_replies", "file_threshold",
                        "watchdog_seconds", "status_reactions", "bot_token", "app_token", "signing_secret"}),
    "mattermost": frozenset({"enabled", "url", "token", "team", "slash_token", "files", "actions_url",
                             "catch_up_seconds"}),
    "irc": frozenset({"enabled", "server", "port", "tls", "tls_verify", "nick", "channels", "password",
                      "sasl_username", "sasl_password", "username", "realname", "flood_burst", "flood_interval",
                      "reconnect_max", "max_result_lines"}),
}
#: What may qualify a user's name in `auth` (`irc:carol`: that nick on IRC only, `bot/chat/auth.py`): the
#: adapters, and `api` (the users a relaying bot names through the HTTP API).
AUTH_USER_QUALIFIERS = (*ADAPTER_KEYS, "api")
#: `adapters.<name>` keys that are true or false, and their defaults: read by truthiness, a quoted
#: "false" would be true.
ADAPTER_FLAGS: dict[str, dict[str, bool]] = {
    "console": {"enabled": False},
    "slack": {"enabled": False, "thread_replies": True, "status_reactions": False},
    "mattermost": {"enabled": False, "files": True},
    "irc": {"enabled": False, "tls": False, "tls_verify": True},
}
#: `api.port` unless set.
DEFAULT_API_PORT = 9101
#: `api.host` unless set: this machine only.
DEFAULT_API_HOST = "127.0.0.1"
#: `api.max_body_bytes` unless set: the largest HTTP request body (1 MiB).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: `api.token_ttl` unless set: a day, StackStorm's `auth.token_ttl`.
DEFAULT_TOKEN_TTL = 86400
#: `chat.confirm_ttl` unless set: seconds a command waits for its sender's `yes`.
DEFAULT_CONFIRM_TTL = 60.0

_KNOWN_SECTIONS: dict[str, frozenset[str] | set[str] | None] = {
    "database": {"url"},
    "data_dir": None,
    "packs": {"paths", "install_path", "configs_path", "virtualenvs_path"},
    "datastore": {"encryption_key_path"},
    "executor": {"python_workers_per_pack", "max_concurrency", "kind", "queues", "unserved_after", "shutdown_grace"},
    "runners": {"user", "allow_root"},
    "workflows": {"max_depth"},
    "templates": {"max_output_chars", "max_seconds"},
    "web": {"oidc"},
    "api": API_KEYS,
    "chat": CHAT_KEYS,
    # per-adapter settings, checked by each adapter when `squall serve` enables it (`bot/service.py`)
    "adapters": None,
    "routes": None,
    "auth": AUTH_KEYS,
    "logging": None,
    "metrics": {"enabled", "public", "statsd"},
    "audit": {"sinks"},
    "retention": set(RETENTION_MINIMUM_DAYS),
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


def _shutdown_grace(path: Path | None, section: dict[str, Any]) -> float:
    """`executor.shutdown_grace`, checked: a number of seconds, 0 or more (a bool, a string such as "30s",
    a negative or infinite number is refused, naming the key, rather than read as something else)."""
    grace = section.get("shutdown_grace", DEFAULT_SHUTDOWN_GRACE)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise ConfigError(f"{_prefix(path)}'executor.shutdown_grace' must be seconds, 0 or more, such as "
                          f"{DEFAULT_SHUTDOWN_GRACE:g} (how long `squall serve` and `squall worker` let running "
                          f"actions finish when stopped; 0 abandons them at once), not {grace!r}")
    return float(grace)


def _workflow_max_depth(path: Path | None, raw: dict[str, Any]) -> int:
    """`workflows.max_depth`, checked: a whole number of at least 1."""
    depth = (raw.get("workflows") or {}).get("max_depth", DEFAULT_WORKFLOW_MAX_DEPTH)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"{_prefix(path)}'workflows.max_depth' must be a whole number of at least 1, such as "
                          f"{DEFAULT_WORKFLOW_MAX_DEPTH} (how deep workflows may nest), not {depth!r}")
    return depth


def _prefix(path: Path | None) -> str:
    """What starts an error about the file: its path, or nothing for settings not read from one."""
    return f"{path}: " if path is not None else ""


#: The longest a wrong value is quoted in an error (`_given`): a long list must not fill the terminal.
GIVEN_CHARS = 80
_URL_PASSWORD = re.compile(r"(://[^:/@\s'\"]*:)[^@/\s'\"]*@")


def _given(value: Any) -> str:
    """A wrong value as an error quotes it: its repr on one line, cut to `GIVEN_CHARS`, any URL's password
    masked (a `database.url` written as a list still holds one)."""
    text = _URL_PASSWORD.sub(r"\1********@", " ".join(repr(value).split()))
    return text if len(text) <= GIVEN_CHARS else text[: GIVEN_CHARS - 1] + "…"


def api_host(section: Mapping[str, Any], path: Path | None = None) -> str:
    """`api.host`: the address the API listens on, as text. A list or a number was taken as it came (`str()`
    of it by the server) and failed inside uvicorn, or in getaddrinfo, far from the key that was wrong."""
    value = section.get("host", DEFAULT_API_HOST)
    if not isinstance(value, str) or value.split() != [value]:  # `bot/cli/serve.py` binds the raw value: no spaces
        raise ConfigError(f"{_prefix(path)}'api.host' must be a host name or address (text), such as "
                          f"{DEFAULT_API_HOST} (this machine only) or 0.0.0.0 (every address), not {_given(value)}")
    return value


def unknown_key(where: str, value: Mapping[Any, Any], allowed: Collection[str]) -> str | None:
    """The words for the first key of `where` that is not `allowed`, with the nearest allowed one; None
    when every key is known. Shared with the adapters, which raise their own error with it."""
    for sub in value:
        if sub not in allowed:
            near = difflib.get_close_matches(str(sub), sorted(allowed), n=1)
            hint = f" (did you mean '{where}.{near[0]}'?)" if near else ""
            return f"unknown key '{where}.{sub}'{hint}"
    return None


def _check_known(path: Path | None, where: str, value: Mapping[Any, Any], allowed: Collection[str]) -> None:
    """Name a key of `where` that is not `allowed`, with the nearest allowed one."""
    if (problem := unknown_key(where, value, allowed)) is not None:
        raise ConfigError(f"{_prefix(path)}{problem}")


def flag(section: Mapping[str, Any], key: str, default: bool, where: str, path: Path | None = None) -> bool:
    """A true-or-false setting (`where` names it). Only YAML's true and false: a quoted "false" is a
    non-empty string, which truthiness reads as true."""
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{_prefix(path)}'{where}' must be true or false, not {value!r}")
    return value


def check_adapter(name: str, section: Mapping[str, Any], path: Path | None = None) -> bool:
    """`adapters.<name>` (a platform `ADAPTER_KEYS` knows), enabled or not: its keys (a misspelt
    `enable: true` left the adapter off without a word) and its flags. Returns `enabled`. The other
    values are the adapter's to check when it is made, since a disabled one needs none of them."""
    _check_known(path, f"adapters.{name}", section, ADAPTER_KEYS[name])
    flags = {key: flag(section, key, default, f"adapters.{name}.{key}", path)
             for key, default in ADAPTER_FLAGS[name].items()}
    return flags["enabled"]


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
        _check_known(path, key, value, allowed)


def _names(path: Path | None, where: str, value: Any, example: str, *, numbers: bool) -> None:
    """A list of names (None: none). `numbers`: a YAML number is a name too, where the reader makes
    it a string (`auth.admins`, a group's members, channels); elsewhere it would never equal the
    platform's name for anyone, and a deny list that names nobody lets everybody in."""
    if value is None:
        return
    kinds = (str, int) if numbers else (str,)
    if isinstance(value, list) and all(isinstance(n, kinds) and not isinstance(n, bool) for n in value):
        return
    numeric = isinstance(value, list) and any(isinstance(n, int | float) for n in value)
    quote = " (quote a name that looks like a number)" if numeric else ""
    raise ConfigError(f"{_prefix(path)}'{where}' must be a list of {example}, not {value!r}{quote}")


def _auth_rules(path: Path | None, ref: str, rules: Any) -> None:
    """`auth.aliases.<ref>`: `allow` and `deny`, each lists of users, groups, channels and adapters."""
    where = f"auth.aliases.{ref}"
    if rules is None:
        return
    if not isinstance(rules, dict):
        raise ConfigError(f"{_prefix(path)}'{where}' must be a mapping such as {{deny: {{users: [root]}}}}, "
                          f"not {rules!r}")
    _check_known(path, where, rules, AUTH_RULE_SIDES)
    for side, kinds in rules.items():
        if kinds is None:
            continue
        if not isinstance(kinds, dict):
            raise ConfigError(f"{_prefix(path)}'{where}.{side}' must be a mapping of users, groups, channels and "
                              f"adapters, such as {{users: [root]}}, not {kinds!r}")
        _check_known(path, f"{where}.{side}", kinds, AUTH_RULE_KINDS)
        for kind, names in kinds.items():
            _names(path, f"{where}.{side}.{kind}", names, "names, such as [root]", numbers=kind == "channels")
            if kind == "users":
                _user_names(path, f"{where}.{side}.{kind}", names)


def _user_names(path: Path | None, where: str, names: list[Any] | None) -> None:
    """A qualified user's name (`irc:carol`) names an adapter and someone on it; `irc:` names nobody, and
    a deny list naming nobody lets everybody in. A name whose part before its colon is no adapter is a
    user whose name has a colon (an API key `ci:deploy`), unless that part is an adapter's name
    misspelt (`ircc:carol`), which would name nobody as well."""
    for name in names or []:
        adapter, colon, user = str(name).partition(":")
        if not colon:
            continue
        if adapter not in AUTH_USER_QUALIFIERS:
            meant = difflib.get_close_matches(adapter, AUTH_USER_QUALIFIERS, n=1, cutoff=0.8) if adapter[2:] else []
            if meant:
                raise ConfigError(f"{_prefix(path)}'{where}' entry '{name}' is qualified by '{adapter}', which is no "
                                  f"adapter: did you mean {meant[0]}:{user}? A user whose own name holds a colon is "
                                  f"written api:{name}")
            continue
        if not user:
            raise ConfigError(f"{_prefix(path)}'{where}' entry '{name}' names nobody after '{adapter}:': write the "
                              f"user's name after it, such as {adapter}:alice")


def check_auth(section: dict[str, Any], path: Path | None = None) -> None:
    """`auth`, key by key: a misspelt key (`deny: {user: [root]}`) would leave a list empty, and what
    it meant to refuse would run; a string for a list would be read a letter at a time."""
    _names(path, "auth.admins", section.get("admins"), "user names, such as [alice]", numbers=True)
    _user_names(path, "auth.admins", section.get("admins"))
    groups = section.get("groups")
    if groups is not None and not isinstance(groups, dict):
        raise ConfigError(f"{_prefix(path)}'auth.groups' must map group names to lists of users, such as "
                          f"{{ops: [alice, bob]}}, not {groups!r}")
    for name, members in (groups or {}).items():
        _names(path, f"auth.groups.{name}", members, "user names, such as [alice]", numbers=True)
        _user_names(path, f"auth.groups.{name}", members)
    aliases = section.get("aliases")
    if aliases is not None and not isinstance(aliases, dict):
        raise ConfigError(f"{_prefix(path)}'auth.aliases' must map pack or alias refs to {{allow: ..., deny: ...}}, "
                          f"such as {{squall: {{deny: {{users: [root]}}}}}}, not {aliases!r}")
    for ref, rules in (aliases or {}).items():
        _auth_rules(path, str(ref), rules)


def _check_webhooks(path: Path | None, webhooks: Any) -> None:
    """`api.webhooks.<name>`'s keys (their values are `bot/http/state.py`'s to check)."""
    if not isinstance(webhooks, dict):
        return
    for name, settings in webhooks.items():
        if isinstance(settings, dict):
            _check_known(path, f"api.webhooks.{name}", settings, WEBHOOK_KEYS)


def _check_routes(path: Path | None, routes: Any) -> None:
    """`routes.<name>`: an adapter and a channel; a misspelt `channel` would post to the chat the
    action was started from instead."""
    if not isinstance(routes, dict):
        raise ConfigError(f"{_prefix(path)}'routes' must map route names to chat targets, such as "
                          f"{{ops: {{adapter: irc, channel: '#ops'}}}}, not {routes!r}")
    for name, target in routes.items():
        if not isinstance(target, dict):
            raise ConfigError(f"{_prefix(path)}'routes.{name}' must be a mapping such as "
                              f"{{adapter: irc, channel: '#ops'}}, not {target!r}")
        _check_known(path, f"routes.{name}", target, ROUTE_KEYS)


def _positive(value: Any, *, whole: bool) -> bool:
    """`value` is a number above 0 (a whole one if `whole`); true and false are not numbers here."""
    kinds = int if whole else int | float
    return not isinstance(value, bool) and isinstance(value, kinds) and value > 0


def api_max_body_bytes(section: Mapping[str, Any], path: Path | None = None) -> int:
    """`api.max_body_bytes`: a whole number of bytes above 0 (a unit, `1MiB`, is not read; 0 would
    refuse every body)."""
    value = section.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    if not _positive(value, whole=True):
        raise ConfigError(f"{_prefix(path)}'api.max_body_bytes' must be a whole number of bytes above 0, such as "
                          f"1048576 (1 MiB), not {value!r}")
    return int(value)


def api_token_ttl(section: Mapping[str, Any], path: Path | None = None) -> int:
    """`api.token_ttl`: a whole number of seconds above 0."""
    value = section.get("token_ttl", DEFAULT_TOKEN_TTL)
    if not _positive(value, whole=True):
        raise ConfigError(f"{_prefix(path)}'api.token_ttl' must be a whole number of seconds above 0, not {value!r}")
    return int(value)


def api_render_keys(section: Mapping[str, Any], path: Path | None = None) -> frozenset[str]:
    """`api.render_keys`: names of stored API keys whose requests may ask for templates to render. A
    string would be iterated a letter at a time: `opsadmin` gave the right to keys named o, p, s..."""
    value = section.get("render_keys")
    _names(path, "api.render_keys", value, "API key names, such as [opsadmin]", numbers=True)
    return frozenset(str(name) for name in value or [])


def _check_api_keys(path: Path | None, value: Any) -> None:
    """`api.keys`: one key or a list of them (`bot.apikeys.static_keys`). Never quoted back: keys are
    secrets, and a log keeps what it is given."""
    if value is None or isinstance(value, str):
        return
    entries = value if isinstance(value, list) else [value]
    for index, entry in enumerate(entries):
        if isinstance(entry, bool) or not isinstance(entry, str | int):
            where = f"entry {index + 1} is" if isinstance(value, list) else "it is"
            raise ConfigError(f"{_prefix(path)}'api.keys' must be an API key or a list of them, such as "
                              f"[k-0123456789abcdef0123]; {where} {type(entry).__name__}")


def api_port(section: Mapping[str, Any], path: Path | None = None) -> int:
    """`api.port`: a TCP port, 1 to 65535 (a quoted number is taken). Out of range, the server failed
    inside its task (70000: OverflowError) and serve went on without its API."""
    value = section.get("port", DEFAULT_API_PORT)
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 65535:
        raise ConfigError(f"{_prefix(path)}'api.port' must be a port number from 1 to 65535, such as "
                          f"{DEFAULT_API_PORT}, not {value!r}")
    return number


def chat_confirm_ttl(section: Mapping[str, Any], path: Path | None = None) -> float:
    """`chat.confirm_ttl`: seconds above 0 (a unit, `1m`, is not read)."""
    value = section.get("confirm_ttl", DEFAULT_CONFIRM_TTL)
    if not _positive(value, whole=False):
        raise ConfigError(f"{_prefix(path)}'chat.confirm_ttl' must be a number of seconds above 0, such as 60, "
                          f"not {value!r}")
    return float(value)


def chat_flood(section: Mapping[str, Any], path: Path | None = None) -> tuple[int, float] | None:
    """`chat.flood`: (`commands`, `seconds`), at most that many commands per person in any that many
    seconds (`bot/chat/dispatcher.py`'s `FloodGate`); None, no limit, when it is not set. Both keys are
    required: a limit half written must not quietly take a window nobody chose."""
    value = section.get("flood")
    if value is None:
        return None
    example = "{commands: 12, seconds: 60}"
    if not isinstance(value, dict):
        raise ConfigError(f"{_prefix(path)}'chat.flood' must be a mapping such as {example}, not {value!r}")
    _check_known(path, "chat.flood", value, CHAT_FLOOD_KEYS)
    for key in CHAT_FLOOD_KEYS:
        if key not in value:
            raise ConfigError(f"{_prefix(path)}'chat.flood.{key}' is missing: 'chat.flood' needs both commands and "
                              f"seconds, such as {example}")
    commands, seconds = value["commands"], value["seconds"]
    if not _positive(commands, whole=True) or commands > MAX_FLOOD_COMMANDS:
        raise ConfigError(f"{_prefix(path)}'chat.flood.commands' must be a whole number from 1 to "
                          f"{MAX_FLOOD_COMMANDS}, such as 12, not {commands!r}")
    if not _positive(seconds, whole=False) or seconds > MAX_FLOOD_SECONDS:
        raise ConfigError(f"{_prefix(path)}'chat.flood.seconds' must be a number of seconds above 0 and at most "
                          f"{MAX_FLOOD_SECONDS}, such as 60, not {seconds!r}")
    return int(commands), float(seconds)


def _check_chat_side(path: Path | None, raw: dict[str, Any]) -> None:
    """`auth`, `api`, `chat` and `routes` beyond their top-level keys: checked here, so every command
    refuses a file alike, naming the key, before anything reads it."""
    check_auth(raw.get("auth") or {}, path)
    api = raw.get("api") or {}
    _check_webhooks(path, api.get("webhooks"))
    api_max_body_bytes(api, path)
    api_token_ttl(api, path)
    api_render_keys(api, path)
    _check_api_keys(path, api.get("keys"))
    api_port(api, path)
    flag(api, "enabled", True, "api.enabled", path)  # `api.public_docs` is checked as the app is made
    chat = raw.get("chat") or {}
    chat_confirm_ttl(chat, path)
    chat_flood(chat, path)
    flag(chat, "thread_replies", True, "chat.thread_replies", path)
    if raw.get("routes") is not None:
        _check_routes(path, raw["routes"])


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


def _retention(path: Path | None, section: dict[str, Any]) -> RetentionSettings:
    """`retention.*`: each a number of days at least StackStorm's minimum for it, or left out (null) to
    keep that history for ever. Its keys were checked by `_check_keys`."""
    days: dict[str, float | None] = {}
    for key, minimum in RETENTION_MINIMUM_DAYS.items():
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not minimum <= value <= _RETENTION_MAXIMUM_DAYS):
            whose = _RETENTION_MINIMUM_OF.get(key, "StackStorm's minimum")
            raise ConfigError(
                f"{path}: 'retention.{key}' must be a number of days, at least {minimum} "
                f"({whose}) and at most {_RETENTION_MAXIMUM_DAYS}, "
                f"such as 30, not {value!r}; leave it out to keep {_RETENTION_KEEPS[key]} for ever. "
                f"{_RETENTION_BY_HAND[key]}")
        days[key] = value
    return RetentionSettings(**days)


def _oidc_text(path: Path | None, oidc: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    """A required (or defaulted) non-empty string of `web.oidc`."""
    value = oidc.get(key, default)
    if value is None:
        raise ConfigError(f"{path}: 'web.oidc.{key}' is missing: {what}")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: 'web.oidc.{key}' must be {what}, not {value!r}")
    return value.strip()


def _oidc_issuer(path: Path | None, oidc: dict[str, Any]) -> str:
    """The issuer URL exactly as the provider's ID tokens name it: https, or http on this machine only."""
    what = "the provider's https URL, such as https://login.example.com/realms/ops"
    issuer = _oidc_text(path, oidc, "issuer", what)
    parts = urlsplit(issuer)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or parts.query or parts.fragment or not (
            parts.scheme == "https" or (parts.scheme == "http" and local)):
        raise ConfigError(f"{path}: 'web.oidc.issuer' must be {what} (http only for localhost), not {issuer!r}")
    return issuer


def _oidc_secret(path: Path | None, oidc: dict[str, Any]) -> tuple[str, str | None]:
    """`client_secret`, or the name of the environment variable holding it (`client_secret_env`, kept
    out of the file; `OidcSettings.secret` reads it)."""
    if "client_secret" in oidc and "client_secret_env" in oidc:
        raise ConfigError(f"{path}: 'web.oidc.client_secret' and 'web.oidc.client_secret_env' are both set: "
                          "give the secret one way")
    if "client_secret_env" not in oidc:
        what = "the client's secret from the provider (or name an environment variable holding it with " \
               "'client_secret_env')"
        return _oidc_text(path, oidc, "client_secret", what), None
    return "", _oidc_text(path, oidc, "client_secret_env", "the name of an environment variable")


def _oidc_roles(path: Path | None, oidc: dict[str, Any]) -> tuple[dict[str, tuple[str, ...]], str | None]:
    """`roles` (role -> groups) and `default_role`: at least one of them lets somebody in."""
    roles = oidc.get("roles") or {}
    example = "{admin: [ops-leads], operator: [ops], viewer: [staff]}"
    if not isinstance(roles, dict):
        raise ConfigError(f"{path}: 'web.oidc.roles' must map roles to lists of groups, such as {example}")
    mapped: dict[str, tuple[str, ...]] = {}
    for role, groups in roles.items():
        if role not in WEB_ROLES:
            raise ConfigError(f"{path}: 'web.oidc.roles.{role}': unknown role; use {', '.join(WEB_ROLES)}")
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"{path}: 'web.oidc.roles.{role}' must be a list of group names, such as {example}")
        mapped[role] = tuple(groups)
    default = oidc.get("default_role")
    if default is not None and default not in WEB_ROLES:
        raise ConfigError(f"{path}: 'web.oidc.default_role' must be one of {', '.join(WEB_ROLES)} (or left out to "
                          f"refuse people in none of the groups), not {default!r}")
    if not any(mapped.values()) and default is None:
        raise ConfigError(f"{path}: 'web.oidc.roles' is missing: map roles to the provider's groups, such as "
                          f"{example} (or set 'web.oidc.default_role'); as it is, nobody could log in")
    return mapped, default


def _oidc(path: Path | None, web: dict[str, Any]) -> OidcSettings | None:
    """`web.oidc`, checked key by key; None when it is not configured."""
    oidc = web.get("oidc")
    if oidc is None:
        return None
    if not isinstance(oidc, dict):
        raise ConfigError(f"{path}: 'web.oidc' must be a mapping with issuer, client_id, client_secret and roles, "
                          f"not {type(oidc).__name__}")
    for key in oidc:
        if key not in OIDC_KEYS:
            near = difflib.get_close_matches(str(key), OIDC_KEYS, n=1)
            hint = f" (did you mean 'web.oidc.{near[0]}'?)" if near else ""
            raise ConfigError(f"{path}: unknown key 'web.oidc.{key}'{hint}; known: {', '.join(OIDC_KEYS)}")
    scopes = oidc.get("scopes", ["openid", "profile", "email"])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes) \
            or "openid" not in scopes:
        raise ConfigError(f"{path}: 'web.oidc.scopes' must be a list of scopes including openid, such as "
                          f"[openid, profile, email, groups], not {scopes!r}")
    roles, default = _oidc_roles(path, oidc)
    secret, secret_env = _oidc_secret(path, oidc)
    return OidcSettings(
        issuer=_oidc_issuer(path, oidc),
        client_id=_oidc_text(path, oidc, "client_id", "the client id registered at the provider"),
        client_secret=secret,
        client_secret_env=secret_env,
        scopes=tuple(scopes),
        role_claim=_oidc_text(path, oidc, "role_claim", "the name of the ID token claim with the groups",
                              default="groups"),
        roles=roles,
        default_role=default,
    )


def _resolve(base: Path, value: str | os.PathLike[str]) -> Path:
    """`value` with `~` expanded, relative to `base` unless absolute. Only for text checked by
    `_path_setting` (or a default): `str()` of a list made a folder named `['data', '`."""
    candidate = Path(os.path.expanduser(str(value)))
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _path_setting(path: Path | None, section: Mapping[str, Any], key: str, where: str,
                  default: str | Path, base: Path) -> Path:
    """A folder or file setting (`where` names it): text, resolved against `base`. A list, a mapping, a
    number or an empty value is refused, naming the key: `str()` of it made a folder such as
    `['data', '` or `None` and put Squall's state there without a word."""
    value = section.get(key, default)
    if isinstance(value, os.PathLike):
        return _resolve(base, value)
    if not isinstance(value, str) or not value.strip():
        given = {list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value), repr(value))
        example = default if isinstance(default, str) else f"data/{default.name}"
        raise ConfigError(f"{_prefix(path)}'{where}' must be a path (text), such as {example}, not {given}")
    return _resolve(base, value)


def _executor_count(path: Path | None, section: Mapping[str, Any], key: str, default: int, meaning: str) -> int:
    """`executor.<key>`: a whole number of at least 1 (a quoted one is taken, as `api.port` takes it). A
    fraction or true was cut to a whole number by `int()` (2.7 ran 2 at once, true 1) without a word."""
    value = section.get(key, default)
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value)
    if number is None or number < 1:
        raise ConfigError(f"{_prefix(path)}'executor.{key}' must be a whole number of at least 1, such as "
                          f"{default} ({meaning}), not {value!r}")
    return number


def _database_url_text(path: Path | None, database: Mapping[str, Any], data_dir: Path) -> str:
    """`database.url` as text, or SQLite in `data_dir` when it is left out (or empty). A number, a list or a
    mapping was refused as "not a URL" without saying what was given: it is quoted (any password masked)."""
    url = database.get("url")
    if url is None or url == "":
        return f"sqlite:///{data_dir / 'squall.db'}"
    if not isinstance(url, str):
        raise ConfigError(f"{_prefix(path)}'database.url' must be a URL (text), such as sqlite:///data/squall.db "
                          f"or postgresql://USER:PASSWORD@HOST:PORT/DATABASE, not {_given(url)}")
    return url


def _check_database_url(path: Path | None, url: str) -> None:
    """Refuse a `database.url` Squall cannot run on, naming the schemes it can. The URL itself is not
    quoted: it may hold a password."""
    scheme, sep, _rest = url.partition("://")
    if sep and scheme in DATABASE_SCHEMES:
        return
    given = f"a {scheme!r} URL" if sep and scheme else "not a URL"
    raise ConfigError(f"{path}: 'database.url' must be sqlite:///PATH (SQLite) or "
                      f"postgresql://USER:PASSWORD@HOST:PORT/DATABASE (PostgreSQL); this one is {given} "
                      f"(supported schemes: {', '.join(DATABASE_SCHEMES)})")


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


def _refuse_duplicates(path: Path, duplicates: list[DuplicateKey]) -> None:
    """A key written twice in the file: YAML keeps the last and drops the first without a word, and
    with it whatever it held (a second `auth:` block dropped the first one's deny rules)."""
    if duplicates:
        first = duplicates[0]
        raise ConfigError(f"{path}:{first.again}: {first}: YAML keeps only the last and drops the first "
                          "without a word; merge them into one")


def _pack_paths(path: Path | None, packs: Mapping[str, Any]) -> list[str]:
    """`packs.paths`: a list of folders (one folder as text is taken as a list of it). What was given
    instead is quoted: "must be a list of folders" alone left `[packs, [nested]]` to be puzzled over."""
    value = packs.get("paths", ["packs"])
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(f"{_prefix(path)}'packs.paths' must be a list of folders (text), such as "
                          f"[packs, /opt/squall/packs], not {_given(value)}")
    return paths


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file named, or `$SQUALL_CONFIG`, or `./config.yml` when it exists."""
    explicit = path if path is not None else os.environ.get(CONFIG_ENV)
    config_path: Path | None
    if explicit:
        config_path = Path(explicit).expanduser().resolve()
        if config_path.is_dir():
            raise ConfigError(f"config file {config_path} is a folder, not a file: give the YAML config "
                              f"file itself, such as {config_path / DEFAULT_CONFIG_NAME}")
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
            loaded, _node, duplicates = parse_yaml(text, yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            context_mark = getattr(exc, "context_mark", None)
            if mark is None or (context_mark is not None and mark.index >= len(text)):
                # an unclosed quote or bracket is found at the end of the file: name where it starts
                mark = context_mark
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{config_path}{where}: not valid YAML: {exc}") from exc
        _refuse_duplicates(config_path, duplicates)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
        raw = loaded
    _check_keys(config_path, raw)
    _check_chat_side(config_path, raw)

    base = config_path.parent if config_path else Path.cwd()
    data_dir = _path_setting(config_path, raw, "data_dir", "data_dir", "data", base)
    packs = raw.get("packs") or {}
    pack_paths = [_resolve(base, p) for p in _pack_paths(config_path, packs)]
    install_path = (_path_setting(config_path, packs, "install_path", "packs.install_path", "packs", base)
                    if "install_path" in packs else pack_paths[0] if pack_paths else data_dir / "packs")
    url = _database_url_text(config_path, raw.get("database") or {}, data_dir)
    _check_database_url(config_path, url)
    executor = raw.get("executor") or {}
    api = raw.get("api") or {}
    api_url = f"http://{api_host(api, config_path)}:{api_port(api, config_path)}/api/v1"
    workers = _executor_count(config_path, executor, "python_workers_per_pack", 4,
                              "warm Python action processes per pack")
    concurrency = _executor_count(config_path, executor, "max_concurrency", 64,
                                  "executions running at once in one process")
    kind, queues = _executor(config_path, executor, url)
    unserved = executor.get("unserved_after", 60)
    if isinstance(unserved, bool) or not isinstance(unserved, int | float) or not math.isfinite(unserved) \
            or unserved < 0:
        raise ConfigError(f"{config_path}: 'executor.unserved_after' must be seconds (0 or more), not {unserved!r}")
    runner_user, allow_root = _runners(config_path, raw.get("runners") or {})
    max_chars, max_seconds = _templates(config_path, raw.get("templates") or {})
    oidc = _oidc(config_path, raw.get("web") or {})
    retention = _retention(config_path, raw.get("retention") or {})
    return Config(
        path=config_path,
        base_dir=base,
        database_url=_database_url(base, url),
        data_dir=data_dir,
        pack_paths=pack_paths,
        install_path=install_path,
        configs_path=_path_setting(config_path, packs, "configs_path", "packs.configs_path", "configs", base),
        virtualenvs_path=_path_setting(config_path, packs, "virtualenvs_path", "packs.virtualenvs_path",
                                       data_dir / "virtualenvs", base),
        encryption_key_path=_path_setting(config_path, raw.get("datastore") or {}, "encryption_key_path",
                                          "datastore.encryption_key_path", data_dir / "datastore.key", base),
        python_workers_per_pack=workers,
        max_concurrency=concurrency,
        api_url=api_url,
        runner_user=runner_user,
        allow_root=allow_root,
        template_limits=TemplateLimits(max_output_chars=max_chars, max_seconds=max_seconds),
        executor_kind=kind,
        queues=queues,
        unserved_after=float(unserved),
        shutdown_grace=_shutdown_grace(config_path, executor),
        workflow_max_depth=_workflow_max_depth(config_path, raw),
        oidc=oidc,
        retention=retention,
        raw=raw,
    )
