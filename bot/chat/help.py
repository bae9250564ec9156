"""`help` and `help COMMAND` for the person asking, in the channel they ask in (issue 20).

`help` lists what the asker may run there, by the same `Authorizer.check` the command path applies,
grouped by pack, each alias with its formats; admins also learn how many commands ordinary people
do not see there. `help COMMAND` (an alias name, its ref, or the first words of one of its formats)
shows the action's parameters from its schema, the formats, and who may run it. Plain lines with
backticks only: every platform (IRC included) reads them, and the text is split into replies by
pack so that no platform turns help into an attached file. `help PACK` lists one pack's commands;
where a long list would hold a channel's pace (no threads, no files, a result line cap: IRC), `help`
is one line per pack instead (`listing`'s `adapter`). `executions` lists a channel's recent runs one
line each (`execution_line`): what, how it went, who asked and when.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from adapters.base import Adapter, Message, line_breaks
from aliases import Alias
from aliases.grammar import PLACEHOLDER as _FORMAT_PLACEHOLDER
from aliases.model import PERMISSION_KINDS
from bot.chat.auth import Authorizer
from bot.chat.replies import status_line
from bot.forms import short
from engine.parameters import mask_value, shown_parameters

#: Built-in commands, shown after the packs' aliases.
BUILTINS = ["help [command]", "run-form [command]", "executions", "execution <id>", "cancel <id>", "retry <id>",
            "respond <inquiry-id> <answer>", "approve <approval-id>", "deny <approval-id> <reason>"]
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.DOTALL)
#: What a secret parameter's `{{ name = default }}` default is shown as (as `parameter_lines` masks it).
MASK = "********"
_DEFAULT_GROUPS = ("dq", "sq", "brace", "bare")
#: A listing longer than this many lines (over several packs) ends with how to narrow it (`help <pack>`).
LONG_LISTING = 20
#: How many of a pack's command names its line of the short listing (`summary`) names before `…`.
SUMMARY_NAMES = 8
#: The most characters of a requester's name an `executions` line shows (`execution_line`).
REQUESTER_CHARS = 40


def visible(aliases: Sequence[Alias], auth: Authorizer, message: Message) -> list[Alias]:
    """The enabled aliases `message`'s sender may run in its channel (what the command path allows)."""
    return [a for a in aliases if a.enabled and auth.check(a, message).allowed]


def hidden_count(aliases: Sequence[Alias], auth: Authorizer, message: Message) -> int:
    """How many enabled aliases a person with no group and no admin right may not run in this channel."""
    ordinary = replace(message, user="", groups=[])
    return sum(1 for a in aliases if a.enabled and not auth.check(a, ordinary).allowed)


def withheld_count(aliases: Sequence[Alias], mine: Sequence[Alias]) -> int:
    """How many enabled aliases the asker may not run here, of `aliases`, given `mine` (`visible`)."""
    return sum(1 for a in aliases if a.enabled) - len(mine)


def admin_names(auth: Authorizer, adapter: str) -> list[str]:
    """The admins (config `auth.admins`) a person on `adapter` can ask, as they are named there: a name
    qualified by another adapter (`slack:U0123` seen from IRC) is no one they can reach."""
    names = set()
    for name in auth.admins:
        where, _, bare = name.rpartition(":")
        if not where or where == adapter:
            names.add(bare)
    return sorted(names)


def listing(aliases: Sequence[Alias], prefix: str, hidden: int | None,
            actions: Mapping[str, Any] | None = None, *, withheld: int = 0, admins: Sequence[str] = (),
            adapter: Adapter | None = None) -> list[str]:
    """The help text as blocks, one per pack (then the built-ins and the admin's note): the caller
    joins blocks into replies that fit the platform.

    Only formats with a `display` are listed, as StackStorm's help and `AliasMatcher.help` do: a
    format with `representation` only is how a pack author keeps a command out of help. With
    `actions` (action ref → action) a display's default for a secret parameter is masked. A long
    list over several packs says how to narrow it (`help <pack>`, in the built-ins' block, which a
    filtered list drops). `withheld`: how many commands here the (non-admin) asker may not run, said
    in one line naming whom to ask (`admins`) when any are known. With `adapter`, one that can
    neither thread nor attach and caps results (`max_result_lines`) gets `summary` when the whole
    list is longer than that cap: each line costs every channel of the connection its pace."""
    if adapter is not None and _paced(adapter):
        whole = listing(aliases, prefix, hidden, actions, withheld=withheld, admins=admins)
        if line_breaks("\n".join(whole)).count("\n") + 1 > getattr(adapter, "max_result_lines", 0):
            return summary(aliases, prefix, whole[-1 - bool(hidden) - bool(withheld):])
    blocks: list[str] = []
    by_pack: dict[str, list[Alias]] = {}
    for alias in aliases:
        by_pack.setdefault(alias.pack, []).append(alias)
    for pack in sorted(by_pack):
        lines = [f"{pack}:"]
        entries = [(alias, [masked(d, _secrets(alias, actions)) for d in displays(alias)]) for alias in by_pack[pack]]
        for alias, shown in sorted((e for e in entries if e[1]), key=lambda e: e[1][0].lower()):
            description = f" — {alias.description}" if alias.description else ""
            lines.append(f"  {prefix}{shown[0]}{description}")
            lines += [f"      {prefix}{other}" for other in shown[1:]]
        blocks.append("\n".join(lines))
    builtins = "built in: " + ", ".join(f"{prefix}{b}" for b in BUILTINS)
    if len(by_pack) > 1 and sum(block.count("\n") + 1 for block in blocks) > LONG_LISTING:
        builtins += f"\n{_NARROW.format(prefix=prefix)}"
    blocks.append(builtins)
    if hidden:
        blocks.append(f"(admin) {hidden} command{'s here are' if hidden != 1 else ' here is'} hidden from people "
                      "without a group or user permission; `help <command>` shows who may run one.")
    if withheld > 0:
        ask = f"; ask {_either(admins)}" if admins else ""
        blocks.append(f"{withheld} more command{'s need' if withheld != 1 else ' needs'} permissions you don't "
                      f"have here{ask}.")
    return blocks


_NARROW = "`{prefix}help <pack>` lists one pack's commands; `{prefix}help <command>` shows one in full."


def _either(names: Sequence[str]) -> str:
    """`root-admin`, `alice or bob`, `alice, bob or carol`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _paced(adapter: Adapter) -> bool:
    """Whether `adapter` sends every line at a pace the whole connection shares, with nowhere else to
    put a long text: no threads, no files, and a result line cap (`replies.capped` cuts results to it)."""
    capabilities = adapter.capabilities
    return not capabilities.threads and not capabilities.files and getattr(adapter, "max_result_lines", 0) > 0


def summary(aliases: Sequence[Alias], prefix: str, tail: Sequence[str]) -> list[str]:
    """The short listing: one line per pack naming its commands (the first `SUMMARY_NAMES`, then how
    many more), how to see a pack's or a command's details, then `tail` (the built-ins and notes).
    Names are what `help NAME` finds; an alias help would not list (no display) is not named."""
    by_pack: dict[str, list[str]] = {}
    for alias in aliases:
        if displays(alias):
            by_pack.setdefault(alias.pack, []).append(alias.name)
    lines = []
    for pack in sorted(by_pack):
        names = sorted(by_pack[pack], key=str.lower)
        more = f" … (+{len(names) - SUMMARY_NAMES})" if len(names) > SUMMARY_NAMES else ""
        lines.append(f"{pack}: {', '.join(names[:SUMMARY_NAMES])}{more}")
    builtins = tail[0].split("\n")[0]
    return ["\n".join(lines), f"{builtins}\n{_NARROW.format(prefix=prefix)}", *tail[1:]]


def find(aliases: Sequence[Alias], query: str) -> list[Alias]:
    """Aliases `query` names: by ref, by name, else by the first words of one of their formats that
    help lists (one with a display; a representation-only format is kept out of help), else by their
    pack's name (`help ops`: every alias of `aliases` in pack ops)."""
    wanted = query.strip().lower()
    exact = [a for a in aliases if wanted in (a.ref.lower(), a.name.lower())]
    if exact:
        return exact
    words = wanted.split()
    found = []
    for alias in aliases:
        for fmt in alias.formats:
            if not fmt.display:
                continue
            for text in [fmt.display, *fmt.representations]:
                leading = _PLACEHOLDER.split(text)[0].lower().split()
                if words and leading[:len(words)] == words:
                    found.append(alias)
                    break
            else:
                continue
            break
    # StackStorm's `help <pack>`: a word naming no command but a pack names the pack's commands
    return found or [a for a in aliases if a.pack.lower() == wanted]


def details(alias: Alias, action: Any, prefix: str, who: str) -> str:
    """One alias in full: description, formats, the parameters a person may give, who may run it."""
    lines = [f"{alias.ref} → {alias.action_ref}" + (f": {alias.description}" if alias.description else "")]
    lines.append("formats:")
    secrets = secret_names(action)
    shown = [fmt for fmt in alias.formats if fmt.display]  # a format without display is kept out of help
    for fmt in shown:
        lines.append(f"  {prefix}{masked(str(fmt.display), secrets)}")
        lines += [f"  {prefix}{masked(r, secrets)}" for r in fmt.representations if r != fmt.display]
    if not shown:
        lines.append("  (none listed in help)")
    lines.append("parameters:")
    lines += parameter_lines(alias, action, prefix) or ["  (none)"]
    if alias.confirm:
        lines.append("asks for confirmation before it runs")
    approval = alias.approval or getattr(action, "approval", None)
    if approval:
        lines.append(f"held until {approval['count']} of {', '.join(approval['groups'])} approve it"
                     + ("" if approval.get("self_approval") else " (not the requester)"))
    lines.append(f"who may run it: {who}")
    return "\n".join(lines)


def displays(alias: Alias) -> list[str]:
    """The display strings of `alias`'s formats, in order: what help may show of it."""
    return [fmt.display for fmt in alias.formats if fmt.display]


def secret_names(action: Any) -> Collection[str] | None:
    """The action's secret parameter names; None when the action is not loaded (then every
    default is treated as secret: help cannot tell which are)."""
    return None if action is None else action.secret_names


def _secrets(alias: Alias, actions: Mapping[str, Any] | None) -> Collection[str] | None:
    if actions is None:
        return ()  # the caller gave no schemas: displays are shown as the author wrote them
    return secret_names(actions.get(alias.action_ref))


def masked(text: str, secrets: Collection[str] | None) -> str:
    """`text` (a display or representation) with the default of each `{{ name = default }}`
    placeholder whose parameter is secret replaced by `MASK` (every default when `secrets` is
    None), and a credential in another's masked as the action's schema is shown (`_shown_default`: a
    URL's password, a credential header), so help never shows a credential default in clear;
    placeholders are read as the matcher reads them (`aliases.grammar`)."""
    pieces: list[str] = []
    end = 0
    for m in _FORMAT_PLACEHOLDER.finditer(text):
        group = next((g for g in _DEFAULT_GROUPS if m.group(g) is not None), None)
        if group is None:
            continue
        written = m.group(group)
        shown = MASK if secrets is None or m.group("name") in secrets else _shown_default(m.group("name"), written)
        if shown == written:
            continue
        start, stop = m.span(group)
        pieces += [text[end:start], shown]
        end = stop
    return "".join(pieces) + text[end:]


def closed_parameters(alias: Alias, action: Any) -> set[str]:
    """The parameters of `action` no chat command through `alias` may set: the alias's immutable ones,
    and the runner parameters (cwd, env, timeout…) neither opened by `allow_overrides` nor named in a
    format (`run {{cmd}}` names core.local's `cmd`: typing the format sets it). One rule for what help
    lists and what a form asks (`ChatForms.fields`), as `check_overrides` applies to key=value pairs."""
    runner = action.runner_parameter_names - set(alias.allow_overrides) - alias.format_parameters
    return set(alias.immutable_parameters) | runner


def _shown_default(name: str, written: str) -> str:
    """A format's default for parameter `name` as written, with what `mask_value` masks of a request's
    value masked: a URL's password or token, a credential header of a `headers` object (as JSON)."""
    shown = mask_value(name, written)
    return shown if isinstance(shown, str) else json.dumps(shown)


def parameter_lines(alias: Alias, action: Any, prefix: str = "") -> list[str]:
    """`name (type, required|default …) — description` for each parameter a chat command may set:
    the action's own and the runner parameters the alias opens or a format names, less the immutable
    ones (`closed_parameters`). Defaults and enum values as the pack author wrote them (`false`,
    `null`, lists and objects as JSON, not Python's `False`). A secret says so, and where to give it:
    typed in a channel it runs (masked in replies and the audit), but everyone there has read it; a
    direct message, or the form (`run-form`, which asks for a secret only in private), does not."""
    if action is None:
        return ["  (the action is not loaded)"]
    closed = closed_parameters(alias, action)
    lines = []
    # defaults as the API and the web show them: a secret's, a credential header's, a URL's password masked
    for name, spec in shown_parameters(action.parameters).items():
        if spec.get("immutable") or name in closed:
            continue
        facts = [("secret " if spec.get("secret") else "") + str(spec.get("type", "any"))]
        if spec.get("required"):
            facts.append("required")
        if "default" in spec:
            facts.append(f"default {short(_as_written(spec['default']), 60)}")
        if spec.get("enum"):
            facts.append("one of " + ", ".join(map(_as_written, spec["enum"])))
        if spec.get("secret"):
            facts[-1] += (f"; typed in a channel, everyone there reads it: use a direct message or "
                          f"`{prefix}run-form {alias.ref}`")
        description = f" — {spec['description']}" if spec.get("description") else ""
        lines.append(f"  {name} ({', '.join(facts)}){description}")
    return lines


def _as_written(value: Any) -> str:
    """A default or enum value as a pack author writes it in YAML or JSON: a string as it is, anything
    else as JSON (`false`, `null`, `["a", "b"]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def who_may_run(alias: Alias, auth: Authorizer) -> str:
    """The alias's allow and deny lists in words (admins may run everything)."""
    rules = auth.rules_for(alias)
    if not rules:
        return "everyone"
    parts = []
    allow = rules.get("allow")
    if allow is not None:
        named = _names(allow)
        parts.append(f"only {named}" if named else "nobody")
    else:
        parts.append("everyone")
    deny = _names(rules.get("deny") or {})
    if deny:
        parts.append(f"except {deny}")
    return " ".join(parts) + "; admins always"


def _names(section: dict[str, Any]) -> str:
    kinds = [(kind, section.get(kind) or []) for kind in PERMISSION_KINDS]
    return "; ".join(f"{kind} {', '.join(map(str, names))}" for kind, names in kinds if names)


def packed(blocks: Sequence[str], limit: int) -> list[str]:
    """Blocks joined into as few replies as fit `limit` characters each; a block longer than that
    is cut between lines (a single line longer still is left to the outbox's fitting)."""
    pieces: list[str] = []
    for block in blocks:
        pieces += [block] if len(block) <= limit else block.split("\n")
    replies: list[str] = []
    current = ""
    for block in pieces:
        candidate = f"{current}\n{block}" if current else block
        if current and len(candidate) > limit:
            replies.append(current)
            current = block
        else:
            current = candidate
    if current:
        replies.append(current)
    return replies


def execution_line(execution: dict[str, Any], now: datetime | None = None) -> str:
    """One line of `executions`: `status_line` with who asked for the run (StackStorm's `context.user`)
    and when it started, before its id (`✔ demo.greet succeeded in 2 s, by alice at 11:42 UTC (…)`), so
    a channel in an incident reads who ran what, when. One line an execution whatever the name holds
    (`short`: an API caller's `user` is any text), as IRC sends each line at its connection's pace; no
    parameter nor result, so no secret. The time is UTC, as logs and the API say it, with the date
    when the run started on another (UTC) day than `now`."""
    line = status_line(execution)
    ending = f" ({execution['id']})"
    head = line.removesuffix(ending)
    user = (execution.get("context") or {}).get("user")
    who = f"by {short(str(user), REQUESTER_CHARS)} " if user else ""
    return f"{head}, {who}at {_started_at(execution['start_timestamp'], now or datetime.now(UTC))}{ending}"


def _started_at(stamp: str, now: datetime) -> str:
    """An execution's start (`public`'s ISO 8601 text) as `11:42 UTC`, or `2024-01-01 11:42 UTC` when
    it was not on `now`'s UTC day: an hour and minute alone would pass yesterday's run for today's."""
    started = datetime.fromisoformat(stamp).astimezone(UTC)
    return f"{started:%H:%M} UTC" if started.date() == now.astimezone(UTC).date() else f"{started:%Y-%m-%d %H:%M} UTC"
