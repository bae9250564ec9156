"""`st2common.util.jsonify`: StackStorm's JSON helpers (objects with `__json__` serialize through it)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

__all__ = ["get_json_type_for_python_value", "json_decode", "json_encode", "json_loads", "load_file", "try_loads"]


def _default(obj: Any) -> Any:
    if callable(getattr(obj, "__json__", None)):
        return obj.__json__()
    if isinstance(obj, (bytes, bytearray)):  # StackStorm's orjson default decodes bytes
        return bytes(obj).decode("utf-8")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_encode(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text of `obj`; `__json__()` methods, bytes (UTF-8) and sets are accepted."""
    return json.dumps(obj, default=_default, indent=indent, sort_keys=sort_keys)


def json_decode(data: str | bytes) -> Any:
    """The value of JSON text."""
    return json.loads(data)


def load_file(path: str) -> Any:
    """The value of a JSON file."""
    with open(path) as handle:
        return json.load(handle)


def json_loads(obj: dict[str, Any] | None, keys: list[str] | None = None) -> dict[str, Any] | None:
    """Decode the JSON text held under `keys` (all keys by default); values that do not decode stay."""
    if not obj:
        return None
    for key in keys or list(obj):
        with contextlib.suppress(TypeError, ValueError):
            obj[key] = json.loads(obj[key])
    return obj


def try_loads(s: Any) -> Any:
    """The decoded value of JSON text, or `s` unchanged when it is not a string or not JSON."""
    try:
        return json.loads(s) if s and isinstance(s, str) else s
    except ValueError:
        return s


def get_json_type_for_python_value(value: Any) -> str:
    """The JSON schema type name of a Python value (StackStorm uses it when casting parameters)."""
    for kinds, name in (((str,), "string"), ((bool,), "boolean"), ((int,), "integer"), ((float,), "number"),
                        ((dict,), "object"), ((list, tuple), "array"), ((type(None),), "null")):
        if isinstance(value, kinds):
            return name
    raise ValueError(f"Unknown type: {type(value)}")
