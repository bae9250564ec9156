"""What of the packs' aliases, rules and sensors loads, past the pack loader.

The pack loader (`engine.packs`) only parses these files; `squall serve` builds them afterwards (the
alias index, the rules engine, the sensor container) and only logs the ones that do not load, such as
an alias or a rule naming an action that does not exist. `squall pack list`, `squall pack install` and
the web UI's install build them the same way here, so a pack author sees each problem where they look,
and an install counts only what will run. It lives under `bot` (not `bot.cli` or `bot.web`) because
both use it and neither may import the other; the loaders are imported inside `check_content`, so a
command that never checks content does not pay for them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.packs import Registry
    from engine.yamlfile import ContentError

#: The kinds built past the pack loader, as `Registry.counts` names them.
CHECKED_KINDS = ("aliases", "rules", "sensors")


@dataclass
class ContentCheck:
    """How many aliases, rules and sensors of each pack loaded, and a problem per file that did not."""

    problems: list[ContentError] = field(default_factory=list)
    loaded: Counter[tuple[str, str]] = field(default_factory=Counter)  # (pack, kind) -> how many

    def counts(self, registry: Registry, pack: str) -> dict[str, int]:
        """`registry.counts(pack)` with aliases, rules and sensors counted as loaded, not as files found."""
        return {**registry.counts(pack), **{kind: self.loaded[pack, kind] for kind in CHECKED_KINDS}}

    def problems_under(self, folder: Path) -> list[ContentError]:
        """The problems of the files in `folder` (a pack's): each names its file as the loader showed it,
        relative to the working folder where it is under it, so both sides are resolved."""
        folder = folder.resolve()
        return [problem for problem in self.problems if Path(problem.file).resolve().is_relative_to(folder)]


def check_content(registry: Registry) -> ContentCheck:
    """Build every alias, rule and sensor of `registry` as `squall serve` does; what did not load is a problem
    (a rule that waits for a pack not installed yet loads, and goes live when that pack arrives)."""
    from aliases import load_aliases
    from engine.rules import load_rules
    from engine.sensors import load_sensors

    check = ContentCheck()
    for kind, load in (("aliases", load_aliases), ("rules", load_rules), ("sensors", load_sensors)):
        built, problems = load(registry)
        check.loaded.update((item.pack, kind) for item in built)
        check.problems.extend(problems)
    return check
