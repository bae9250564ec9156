"""JSON request bodies, decoded the one way every route takes them: stricter than `json.loads`, which
accepts NaN and Infinity (which Squall cannot store or answer) and breaks on deep nesting."""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

#: JSON bodies may nest objects and arrays this many levels deep (`{"a": [1]}` is 2); deeper ones get 400.
#: Real payloads stay far below it (a Slack event with rich-text blocks is about 8), and without a limit
#: a webhook body of a thousand `[` broke the parser (RecursionError, HTTP 500).
MAX_JSON_DEPTH = 64


class JsonBodyError(ValueError):
    """Well-formed text that Squall still refuses as JSON: NaN or Infinity, a float out of range, or
    nesting deeper than `MAX_JSON_DEPTH`. The message says what was wrong and what would be right."""


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_DEPTH_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def _refuse_constant(name: str) -> Any:
    raise JsonBodyError(f"The JSON body holds {name}; JSON has no NaN, Infinity or -Infinity: send a finite number, "
                        "a string or null instead.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise JsonBodyError(f"The JSON body holds the number {shown}, which is out of range for a float "
                            "(at most about 1.8e308): send it as a string instead.")
    return value


def _depth(raw: bytes) -> int:
    """How deep the objects and arrays of valid JSON `raw` nest (strings dropped first: their brackets
    do not count); linear, at C speed."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: not worth measuring
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def decode_json(raw: bytes | str) -> Any:
    """`raw` as JSON, the way every route of the API takes it: NaN, Infinity, -Infinity and floats out of
    range, and objects or arrays nested deeper than `MAX_JSON_DEPTH`, raise `JsonBodyError`; text that is
    not JSON raises `ValueError` (`UnicodeDecodeError` for bytes that are not UTF-8)."""
    too_deep = (f"The JSON body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep; "
                f"the limit is {MAX_JSON_DEPTH} levels: send a flatter document.")
    if isinstance(raw, bytes):  # as json.loads reads bytes: UTF-8, or UTF-16/32 by their zero bytes
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding, "surrogatepass")
        utf8 = raw if encoding == "utf-8" else text.encode("utf-8", "surrogatepass")
    else:
        text, utf8 = raw, raw.encode("utf-8", "surrogatepass")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonBodyError(too_deep) from None
    depth = _depth(utf8)
    if depth > MAX_JSON_DEPTH:
        raise JsonBodyError(f"The JSON body nests objects and arrays {depth} levels deep; the limit is "
                            f"{MAX_JSON_DEPTH} levels: send a flatter document.")
    if _SURROGATE.search(text):  # \ud83d\ude00 pairs are fine; a lone half cannot be stored or answered
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonBodyError("The JSON body holds a lone UTF-16 surrogate (such as \\ud800 without its pair, "
                                "or its bytes ED A0 80): send valid Unicode text.") from None
    return value


#: What `checked_json` gives for a body that is not JSON (form data, empty, other text): the route decides.
NOT_JSON = object()


def checked_json(body: bytes, content_type: str) -> Any:
    """The body decoded as JSON under `decode_json`'s rules, or `NOT_JSON`; raises `JsonBodyError`.

    Form and multipart bodies are not JSON. Any other body that parses as JSON is held to
    `decode_json`'s rules (a webhook takes JSON whatever its Content-Type says); text that is not JSON
    at all is left to the route, which says what it expected."""
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data") or not body.strip():
        return NOT_JSON
    try:
        return decode_json(body)
    except JsonBodyError:
        raise
    except ValueError:
        return NOT_JSON
