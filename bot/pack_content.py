"""What of the packs' aliases, rules, sensors and policies loads, past the pack loader.

The pack loader (`engine.packs`) only parses these files; `squall serve` builds them afterwards (the
alias index, the rules engine, the sensor container, the policy executor) and only logs the ones that do
not load, such as an alias or a rule naming an action that does not exist, a policy of an unknown
`policy_type`, or a sensor whose module has no such class. `squall pack list`, `squall pack reload`,
`squall pack install` and the web UI's install build them here with the same loaders serve uses
(`check_content`; `pack_problems` adds the loader's own), so a pack author sees each problem where they
look, `pack reload` exits 1 for any, and an install counts only what will run. What loads all the same
but may not mean what it says (`engine.packs.ContentWarning`: a version that is not semver, an alias
format's stray `{{`) is listed with the problems and skips nothing. It lives under `bot` (not `bot.cli`
or `bot.web`) because both use it and neither may import the other; the loaders are imported inside
`check_content`, so a command that never checks content does not pay for them.
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
CHECKED_KINDS = ("aliases", "rules", "sensors", "policies")


@dataclass
class ContentCheck:
    """How many aliases, rules, sensors and policies of each pack loaded, and a problem per file that did not."""

    problems: list[ContentError] = field(default_factory=list)
    loaded: Counter[tuple[str, str]] = field(default_factory=Counter)  # (pack, kind) -> how many

    def counts(self, registry: Registry, pack: str) -> dict[str, int]:
        """`registry.counts(pack)` with aliases, rules, sensors and policies counted as loaded, not as files found."""
        return {**registry.counts(pack), **{kind: self.loaded[pack, kind] for kind in CHECKED_KINDS}}

    def add(self, kind: str, packs: list[str], problems: list[ContentError]) -> None:
        """What one loader built (the pack of each) and its problems."""
        self.loaded.update((pack, kind) for pack in packs)
        self.problems.extend(problems)

    def problems_under(self, folder: Path) -> list[ContentError]:
        """The problems of the files in `folder` (a pack's): each names its file as the loader showed it,
        relative to the working folder where it is under it, so both sides are resolved."""
        folder = folder.resolve()
        return [problem for problem in self.problems if Path(problem.file).resolve().is_relative_to(folder)]


def check_content(registry: Registry) -> ContentCheck:
    """Build every alias, rule, sensor and policy of `registry` as `squall serve` does; what did not load is a
    problem (a rule that waits for a pack not installed yet loads, and goes live when that pack arrives)."""
    from aliases import load_aliases
    from engine.rules import load_rules

    check = ContentCheck()
    warnings: list[ContentError] = []
    aliases, problems = load_aliases(registry, warnings)
    check.add("aliases", [alias.pack for alias in aliases], [*problems, *warnings])
    rules, problems = load_rules(registry)
    check.add("rules", [rule.pack for rule in rules], problems)
    _check_sensors(registry, check)
    _check_policies(registry, check)
    return check


def _check_sensors(registry: Registry, check: ContentCheck) -> None:
    """The sensors serve would start: their files load (`load_sensors`) and their module has the class
    (`startable_sensors`), else serve leaves them out with the same problem."""
    from engine.sensors import load_sensors, startable_sensors

    sensors, problems = load_sensors(registry)
    sensors, unloadable = startable_sensors(sensors)
    check.add("sensors", [sensor.pack for sensor in sensors], [*problems, *unloadable])


def _check_policies(registry: Registry, check: ContentCheck) -> None:
    """The policies as serve's policy executor takes them (`PolicyExecutor.rebuild`): one of an unknown
    `policy_type` or with bad parameters is skipped, one naming no loaded action applies to nothing."""
    from engine.policies import load_policies, unbound_policies

    policies, problems = load_policies(registry)
    packs = [policy.ref.partition(".")[0] for found in policies.values() for policy in found]
    check.add("policies", packs, [*problems, *unbound_policies(policies, registry)])


def pack_problems(registry: Registry) -> list[ContentError]:
    """Every problem of the packs `squall serve` would report: the loader's (`registry.errors`) and those of
    the content built past it (`check_content`), each once. `squall pack list` and `squall pack reload`
    show these; `is_warning` tells those that skipped nothing."""
    return [*registry.errors, *(p for p in check_content(registry).problems if p not in registry.errors)]


def is_warning(problem: ContentError) -> bool:
    """Whether `problem` is about content that loaded all the same (`engine.packs.ContentWarning`)."""
    from engine.packs import ContentWarning

    return isinstance(problem, ContentWarning)
