"""Enabling and disabling pack content where it is defined: the `enabled:` line of its metadata file.

A rule's, an action's and a sensor's state is pack content in Squall (there is no table to hold another
truth), so turning one off writes `enabled: false` into its YAML file, changing nothing else: every
`squall serve` on the pack folder picks the change up with its next pack reload, a restart keeps it, and a
pack upgrade that ships `enabled: true` says so in the file it brings. The new text is parsed before it is
written and must differ from the old only in `enabled`, so an unusual layout is refused, never mangled.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.files import write_atomically

#: A top-level `enabled:` key of a block mapping, its value, and whatever comment follows.
_ENABLED = re.compile(r"^enabled[ \t]*:[ \t]*[^#\n]*?(?P<rest>[ \t]*(#[^\n]*)?)$", re.MULTILINE)


#: A top-level `enabled:` line whole, its line end included: what `without_enabled` takes out.
_ENABLED_LINE = re.compile(r"^enabled[ \t]*:[^\n]*(?:\n|\Z)", re.MULTILINE)


def without_enabled(text: str) -> str:
    """A metadata file's text as it would read had `set_enabled` never written it: its top-level
    `enabled:` lines and its final line ends left out. A pack's content hash reads action metadata so
    (`Pack.content_hash`): `st2 action disable` on one serve node must not make the workers refuse
    every execution of the pack requested from that node, and an action's state is serve's to check
    (a disabled action's requests are refused before a worker sees them)."""
    return _ENABLED_LINE.sub("", text).rstrip("\n")


class ContentFileError(Exception):
    """The content's file cannot be changed as asked; the message says why and what to do instead."""


def set_enabled(file: Path, enabled: bool, default: bool) -> bool:
    """Write `enabled: true|false` into the metadata file `file`; False when it already said so. `default`
    is what a file without `enabled:` means (False for a rule, True for an action or a sensor, as their
    loaders read it), so asking for that state of such a file leaves it untouched."""
    try:
        text = file.read_text(encoding="utf-8")
        before = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ContentFileError(f"cannot read the file {file}: {exc}") from exc
    if not isinstance(before, dict):
        raise ContentFileError(f"{file} does not hold a mapping; edit it by hand")
    if before.get("enabled", default) is enabled:
        return False
    value = "true" if enabled else "false"
    found = list(_ENABLED.finditer(text))
    if len(found) > 1:
        raise ContentFileError(f"{file} has more than one top-level 'enabled:' line; set it by hand")
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
        raise ContentFileError(f"{file} is not laid out as a plain block mapping with 'enabled:' at the start of "
                               f"a line, so Squall will not rewrite it: set 'enabled: {value}' there by hand")
    try:
        write_atomically(file, changed.encode("utf-8"), mode=file.stat().st_mode & 0o7777)
    except OSError as exc:
        raise ContentFileError(f"cannot write the file {file}: {exc}") from exc
    return True
