"""Safe YAML loading that remembers where each key was, so errors can name file and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ContentError:
    """One problem in one pack file: where it is and what is wrong, in words for people."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class ContentInvalid(Exception):
    """A pack file that cannot be loaded; carries the `ContentError`."""

    def __init__(self, error: ContentError) -> None:
        super().__init__(str(error))
        self.error = error


class LineMap:
    """Lines of the mapping keys in one YAML document, addressed by key path."""

    def __init__(self, node: yaml.Node | None) -> None:
        self._node = node

    def line(self, *path: str | int) -> int | None:
        node = self._node
        line = node.start_mark.line + 1 if node is not None else None
        for key in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == key:
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def load_yaml(path: Path, display: str | None = None) -> tuple[Any, LineMap]:
    """Load one YAML file safely; a syntax error becomes `ContentInvalid` with its line."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentInvalid(ContentError(name, None, f"cannot read file: {exc}")) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context_mark = getattr(exc, "context_mark", None)
        if mark is None or (context_mark is not None and mark.index >= len(text)):
            # "unexpected end of stream" (an unclosed quote or bracket) is found past the last
            # line; the construct that was never closed starts at the context mark.
            mark = context_mark
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        raise ContentInvalid(ContentError(name, mark.line + 1 if mark else None, reason)) from exc
    return data, LineMap(node)
