"""Runner types: their names and parameters exactly as StackStorm's, and their implementations.

An action's parameters are its runner's parameters overlaid with its own (spec §1.2); the table
here is the runner half. Each runner turns a prepared `RunRequest` into a `RunOutcome`.
"""

from __future__ import annotations

import functools
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.actions import Action

_SHELL_COMMON: dict[str, dict[str, Any]] = {
    "cwd": {"type": "string", "description": "Working directory where the command runs."},
    "env": {"type": "object", "description": "Environment variables set for the command."},
    "kwarg_op": {"type": "string", "default": "--", "description": "Operator for named arguments."},
    "sudo": {"type": "boolean", "default": False, "description": "Run the command with sudo."},
    "sudo_password": {"type": "string", "secret": True, "default": None, "description": "Password for sudo."},
    "timeout": {"type": "integer", "default": 60, "minimum": 0,
                "description": "Seconds before the command is killed."},
}

_REMOTE_COMMON: dict[str, dict[str, Any]] = {
    "hosts": {"type": "string", "required": True,
              "description": "Comma-separated hosts to run on; host:port is allowed."},
    "username": {"type": "string", "description": "User to log in as (default: the user Squall runs as)."},
    "password": {"type": "string", "secret": True, "description": "Password to log in with."},
    "private_key": {"type": "string", "secret": True,
                    "description": "Private key to log in with: the key material, or a path to the key file."},
    "passphrase": {"type": "string", "secret": True, "description": "Passphrase of the private key."},
    "port": {"type": "integer", "default": 22, "description": "SSH port, for hosts given without one."},
    "bastion_host": {"type": "string", "description": "Host to tunnel the connections through (host[:port])."},
    "cwd": {"type": "string", "default": "/tmp", "description": "Working directory on the remote hosts."},
    "env": {"type": "object", "description": "Environment variables set for the command."},
    "kwarg_op": {"type": "string", "default": "--", "description": "Operator for named arguments."},
    "parallel": {"type": "boolean", "default": False, "description": "Run on all hosts at once."},
    "sudo": {"type": "boolean", "default": False, "description": "Run the command with sudo."},
    "sudo_password": {"type": "string", "secret": True, "default": None, "description": "Password for sudo."},
    "timeout": {"type": "integer", "default": 60, "minimum": 0,
                "description": "Seconds before the command is killed."},
}
_REMOTE_DIR = {"type": "string", "default": "/tmp", "description": "Remote folder the script is copied to."}


#: Bytes of stdout (and of stderr) kept per execution; the rest is dropped, not stored.
OUTPUT_LIMIT = 8 * 1024 * 1024


def truncation(cut: list[str], limit: int) -> str | None:
    """A result's `truncated` for the streams (`stdout`, `stderr`) cut at `limit` bytes (`OUTPUT_LIMIT`), None
    when none was: the one wording of the shell, remote and python runners (the http runner says the same of a
    body). Without it a cut output looked whole."""
    if len(cut) > 1:
        return f"stdout and stderr were cut at {limit} bytes each"
    return f"{cut[0]} was cut at {limit} bytes" if cut else None


@dataclass(frozen=True)
class RunnerType:
    """A runner as pack authors see it: name, parameters and where its main output is."""

    name: str
    description: str
    parameters: dict[str, dict[str, Any]]
    output_key: str | None = None
    needs_entry_point: bool = False
    forbids_entry_point: bool = False
    #: Checks the entry point file at pack load; raises `ContentInvalid` (workflows use it).
    check_entry_point: Callable[[Path, str], None] | None = None
    #: Whether its runs get StackStorm's per-execution API token (`engine/tokens.py`). Runners that
    #: run in Squall's process and call no API need none: minting one is a write per run.
    token: bool = True
    #: Whether `timeout` bounds each of its `hosts`, its connection and its command each, one host after
    #: the other unless `parallel` (the remote runners).
    per_host: bool = False

    def longest(self, parameters: Mapping[str, Any]) -> float | None:
        """The longest a run with these runner parameters may take, in seconds (its API token lasts
        that long at most); None when nothing bounds it. A remote run of 13 hosts one after the other
        may take 26 times its `timeout`: a token bound by one `timeout` died under its later hosts."""
        timeout = parameters.get("timeout")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return None
        if not self.per_host:
            return float(timeout)
        hosts = 1 if parameters.get("parallel") else max(1, sum(
            1 for host in str(parameters.get("hosts") or "").split(",") if host.strip()))
        return float(timeout) * 2 * hosts


def _check_workflow(kind: str, path: Path, display: str) -> None:
    from engine.workflows.service import check_entry_point

    check_entry_point(kind, path, display)


RUNNER_TYPES: dict[str, RunnerType] = {
    runner.name: runner
    for runner in (
        RunnerType(
            "local-shell-cmd",
            "Runs a shell command with bash on the Squall host.",
            {"cmd": {"type": "string", "description": "The command to run."}, **_SHELL_COMMON},
            output_key="stdout",
            forbids_entry_point=True,
        ),
        RunnerType(
            "local-shell-script",
            "Runs the action's script on the Squall host with its parameters as arguments.",
            {
                **_SHELL_COMMON,
                "debug": {"type": "boolean", "default": False, "description": "Trace the script (bash -x)."},
                "content_version": {"type": "string", "description": "Git revision of the pack to run."},
            },
            output_key="stdout",
            needs_entry_point=True,
        ),
        RunnerType(
            "remote-shell-cmd",
            "Runs a shell command over SSH on one or more hosts.",
            {
                "cmd": {"type": "string", "description": "The command to run."},
                **_REMOTE_COMMON,
                "dir": {**_REMOTE_DIR, "immutable": True},
            },
            forbids_entry_point=True,
            per_host=True,
        ),
        RunnerType(
            "remote-shell-script",
            "Copies the action's script to one or more hosts over SSH and runs it with its parameters.",
            {**_REMOTE_COMMON, "dir": _REMOTE_DIR},
            needs_entry_point=True,
            per_host=True,
        ),
        RunnerType(
            "python-script",
            "Runs the action's Python class in a warm worker process of its pack.",
            {
                "env": {"type": "object", "description": "Environment variables for the action."},
                "timeout": {"type": "integer", "default": 600, "minimum": 0,
                            "description": "Seconds before it is killed."},
                "log_level": {
                    "type": "string",
                    "default": "DEBUG",
                    "enum": ["AUDIT", "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"],
                    "description": "Lowest level of the action's log lines that are kept.",
                },
                "debug": {"type": "boolean", "default": False, "description": "Enable debug mode."},
                "content_version": {"type": "string", "description": "Git revision of the pack to run."},
            },
            output_key="result",
            needs_entry_point=True,
        ),
        RunnerType(
            "http-request",
            "Sends an HTTP request.",
            {
                "url": {"type": "string", "required": True, "description": "URL to send the request to."},
                "headers": {"type": "object", "description": "HTTP headers."},
                "cookies": {"type": "object", "description": "Cookies to send."},
                "allow_redirects": {"type": "boolean", "default": False, "description": "Follow redirects."},
                "http_proxy": {"type": "string", "description": "Proxy for http:// URLs."},
                "https_proxy": {"type": "string", "description": "Proxy for https:// URLs."},
                "username": {"type": "string", "description": "User name for HTTP basic auth."},
                "password": {"type": "string", "secret": True, "description": "Password for basic auth."},
                "verify_ssl_cert": {"type": "boolean", "default": True, "description": "Verify TLS."},
                "url_hosts_blacklist": {"type": "array", "items": {"type": "string"}},
                "url_hosts_whitelist": {"type": "array", "items": {"type": "string"}},
            },
            output_key="body",
        ),
        RunnerType("noop", "Does nothing, successfully.", {}, token=False),
        RunnerType(
            "action-chain",
            "Runs a chain of actions one after another, each a child execution (ActionChain).",
            {
                "display_published": {"type": "boolean", "default": True,
                                      "description": "Intermediate published variables are stored as part of "
                                                     "the result."},
                "skip_notify": {"type": "array", "default": [],
                                "description": "List of tasks to skip notifications for."},
            },
            output_key="published",
            needs_entry_point=True,
            check_entry_point=functools.partial(_check_workflow, "action-chain"),
        ),
        RunnerType(
            "orquesta",
            "Runs an Orquesta workflow: a graph of tasks, each a child execution.",
            {
                "notify": {"type": "array", "default": [],
                           "description": "List of tasks to trigger notifications for."},
            },
            output_key="output",
            needs_entry_point=True,
            check_entry_point=functools.partial(_check_workflow, "orquesta"),
        ),
        RunnerType(
            "mistral-v2",
            "Runs a Mistral v2 direct workflow (StackStorm before 3.3) on Squall's workflow engine.",
            {
                "context": {"type": "object", "default": {}, "description": "Additional workflow inputs."},
                "skip_notify": {"type": "array", "default": [],
                                "description": "List of tasks to skip notifications for."},
                "task": {"type": "string",
                         "description": "The name of the task to run for reverse workflow (not supported)."},
                "workflow": {"type": "string",
                             "description": "The name of the workflow to run if the entry_point holds it in a "
                                            "workbook; one workflow per file is supported."},
            },
            needs_entry_point=True,
            check_entry_point=functools.partial(_check_workflow, "mistral-v2"),
        ),
        RunnerType(
            "inquirer",
            "Asks people a question and waits (pending) for an answer that fits the schema.",
            {
                "schema": {"type": "object", "description": "JSON schema the response must fit.",
                           "default": {"title": "response_data", "type": "object",
                                       "properties": {"continue": {"type": "boolean",
                                                                   "description": "Would you like to continue the "
                                                                                  "workflow?",
                                                                   "required": True}},
                                       "additionalProperties": False}},
                "route": {"type": "string", "default": "",
                          "description": "Where the question is posted: a route from config."},
                "users": {"type": "array", "default": [], "description": "Users who may respond (all if empty)."},
                "roles": {"type": "array", "default": [], "description": "Groups/roles who may respond."},
                "ttl": {"type": "integer", "default": 1440,
                        "description": "Minutes before the inquiry expires (0: never)."},
                "count": {"type": "integer", "default": 1, "minimum": 1,
                          "description": "Distinct people who must answer before the workflow goes on "
                                         "(a Squall extension, as chat approvals' count)."},
                "self_approval": {"type": "boolean", "default": True,
                                  "description": "Whether the person who started the workflow may answer "
                                                 "(a Squall extension)."},
            },
            token=False,
        ),
        RunnerType(
            "announcement",
            "Posts a message to chat through the service's outbox.",
            {
                "route": {"type": "string", "default": "chatops", "minLength": 1, "maxLength": 255,
                          "description": "Named route from config (adapter and channel), or any label."},
                "experimental": {"type": "boolean", "default": True, "description": "Kept for StackStorm packs."},
            },
            token=False,
        ),
    )
}

#: Runners whose `cmd` is bash text rendered by `shell_template` (locally or over SSH).
SHELL_COMMAND_RUNNERS = frozenset({"local-shell-cmd", "remote-shell-cmd"})


@dataclass
class RunRequest:
    """Everything a runner needs for one execution, secrets included (never stored like this)."""

    execution_id: str
    action: Action
    runner_parameters: dict[str, Any]
    action_parameters: dict[str, Any]
    context: dict[str, Any]
    pack_config: dict[str, Any]
    templates: dict[str, str] = field(default_factory=dict)
    template_context: dict[str, Any] = field(default_factory=dict)
    api_url: str = ""
    #: The Jinja environment templates render with (it decrypts `decrypt_kv` lookups).
    jinja: Any = None
    #: Secrets the action decrypted while it ran (datastore reads); scrubbed from its result.
    revealed: list[str] = field(default_factory=list)
    #: The execution's `ST2_ACTION_AUTH_TOKEN` (`engine.tokens`): the API accepts it until the run ends.
    auth_token: str = ""
    #: Where a runner reports output while the action runs: `on_output("stdout" | "stderr", chunk)`
    #: (`engine.output.OutputSink`); None when nobody records it. The result still carries the output.
    on_output: Callable[[str, bytes], None] | None = None

    @property
    def pack_path(self) -> Path:
        return self.action.pack_path


@dataclass
class RunOutcome:
    """A finished run: StackStorm's status string and result object (or `WAITING_ON_TASKS`)."""

    status: str
    result: Any


#: The status of a workflow step's outcome that is no end: the workflow waits on tasks that run as
#: jobs elsewhere and stays `running`, conducted on by the step that one of them queues when it ends.
WAITING_ON_TASKS = "running"


@dataclass(frozen=True)
class RunAs:
    """The account local actions start as (`runners.user`, StackStorm's `system_user`).

    Only a service running as root can switch users; the assembly builds one of these only then.
    The local shell runners and the Python workers start their processes as this user with its
    groups, and HOME, USER and LOGNAME name it. Remote (SSH) actions are not affected.
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def of(cls, name: str) -> RunAs:
        """Look the user up (`KeyError` if there is none), with its supplementary groups."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)), entry.pw_dir)

    def process_options(self) -> dict[str, Any]:
        """Keyword arguments of `asyncio.create_subprocess_exec` that start the process as this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def environment(self) -> dict[str, str]:
        """The variables that name the user, replacing the service's own."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    @property
    def workdir(self) -> str:
        """Where a shell action without `cwd` runs: the user's home, or `/` when it has none
        (the service's own working folder may be closed to the user)."""
        return self.home if os.path.isdir(self.home) else "/"


class Runner(Protocol):
    """One runner type's behaviour. Cancellation arrives as `asyncio.CancelledError`."""

    async def run(self, request: RunRequest) -> RunOutcome: ...


class LazyRunner:
    """A runner whose module, and the libraries it needs, load at its first run: most installations
    never run a remote action, and asyncssh alone costs `squall serve` ~0.15 s at every start (requests,
    for `http-request`, ~30 ms)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self._runner: Runner | None = None

    async def run(self, request: RunRequest) -> RunOutcome:
        if self._runner is None:
            import importlib

            self._runner = getattr(importlib.import_module(self.module), self.name)()
        return await self._runner.run(request)
