"""Enabling and disabling a rule where it is defined: the `enabled:` line of its pack file.

A rule's state is pack content in Squall (there is no rule table to hold another truth), so turning
one off writes `enabled: false` into its YAML file, changing nothing else: every `squall serve` on the
pack folder picks the change up with its next pack reload, a restart keeps it, and a pack upgrade
that ships `enabled: true` says so in the file it brings. The new text is parsed before it is
written and must differ from the old only in `enabled`, so an unusual layout is refused, never
mangled.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.files import write_atomically

#: A top-level `enabled:` key of a block mapping, its value, and whatever comment follows.
_ENABLED = re.compile(r"^enabled[ \t]*:[ \t]*[^#\n]*?(?P<rest>[ \t]*(#[^\n]*)?)$", re.MULTILINE)


class RuleFileError(Exception):
    """The rule's file cannot be changed as asked; the message says why and what to do instead."""


def set_rule_enabled(file: Path, enabled: bool) -> bool:
    """Write `enabled: true|false` into the rule file `file`; False when it already said so."""
    try:
        text = file.read_text(encoding="utf-8")
        before = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RuleFileError(f"cannot read the rule file {file}: {exc}") from exc
    if not isinstance(before, dict):
        raise RuleFileError(f"{file} does not hold a rule mapping; edit it by hand")
    if before.get("enabled", False) is enabled:
        return False
    value = "true" if enabled else "false"
    found = list(_ENABLED.finditer(text))
    if len(found) > 1:
        raise RuleFileError(f"{file} has more than one top-level 'enabled:' line; set it by hand")
    if found:
        match = found[0]
        changed = f"{text[:match.start()]}enabled: {value}{match.group('rest')}{text[match.end():]}"
    else:
        changed = f"{text}{'' if text.endswith(chr(10)) or not text else chr(10)}enabled: {value}\n"
    try:
        after = yaml.safe_load(changed)
    except yaml.YAMLError:
        after = None
    if after != {**before, "enabled": enabled}:
        raise RuleFileError(f"{file} is not laid out as a plain block mapping with 'enabled:' at the start of "
                            f"a line, so Squall will not rewrite it: set 'enabled: {value}' there by hand")
    try:
        write_atomically(file, changed.encode("utf-8"), mode=file.stat().st_mode & 0o7777)
    except OSError as exc:
        raise RuleFileError(f"cannot write the rule file {file}: {exc}") from exc
    return True
