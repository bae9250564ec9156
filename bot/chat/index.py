"""The alias index of this process: every alias of the loaded packs, and the matcher over them.

One per process, shared by everything that turns command text into an action (the dispatcher,
`chatops.post_result`, the HTTP `aliasexecution` route, the web UI's forms), so they never
disagree about what a command means. A pack reload rebuilds it in place (`rebuild`); holders
keep the same object.
"""

from __future__ import annotations

import logging

from aliases import Alias, AliasMatcher, load_aliases
from engine.packs import Registry
from engine.yamlfile import ContentError

log = logging.getLogger(__name__)


class AliasIndex:
    def __init__(self, registry: Registry) -> None:
        self.matcher = AliasMatcher([])
        self.aliases: dict[str, Alias] = {}
        self.rebuild(registry)

    def rebuild(self, registry: Registry) -> None:
        """Index the registry's aliases; a bad alias file is logged and skipped, one that loads but may not
        mean what it says (a stray `{{`) logged."""
        warnings: list[ContentError] = []
        aliases, errors = load_aliases(registry, warnings)
        for error in errors:
            log.warning("alias skipped: %s", error)
        for warning in warnings:
            log.warning("alias warning: %s", warning)
        self.matcher = AliasMatcher(aliases)
        self.aliases = {alias.ref: alias for alias in aliases}
