"""Forms from parameter schemas, for every place that asks people for values: the web UI's run and
answer forms (`bot/web/`), and chat forms (Slack modals, Mattermost dialogs; issue 20).

Platform-neutral, no markup: `action_fields` and `schema_fields` turn a schema into `Field`s that a
surface draws as it likes, and `parse` turns what a form sent back (text per field, which is what
every form platform sends) into typed values and one message per field that is wrong. The text is
converted and checked by the engine's own functions (`engine.parameters.cast`, `check_storable`,
`check_parameter`), so a form says about a value exactly what `squall run` and the API say about
it. The service a form submits to checks the whole request again; `parse` only lets a form show
every field's problem at once, beside the field.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.actions import Action
from engine.parameters import ParameterError, cast, check_parameter, check_storable, mask_value

#: What a field asks for: a surface picks its input by the kind.
KINDS = ("string", "integer", "number", "boolean", "enum", "secret", "array", "object")
#: Types that are their own kind; every other type (none, several, null) is asked for as text. Text
#: for several types without `string` among them (`[integer, "null"]`) is read as JSON (`_several`).
_TYPED_KINDS = ("integer", "number", "boolean", "array", "object")
_JSON_EXAMPLES = {"array": 'a JSON array such as ["a", "b"]', "object": 'a JSON object such as {"key": "value"}'}

#: How much of a wrong value a field's message quotes: as much as the chat shows of a value it echoes
#: (`short`, 60 characters for a parameter's value), then an ellipsis.
QUOTED_CHARS = 60
#: The most parts of a JSON value (items, keys, values) `quoted_shortly` looks for in a message.
MAX_QUOTED_PARTS = 200


#: The parameter an engine message is about, when it names one (`parameter "env": ...`).
_NAMED = re.compile(r'parameter "([^"]+)"')


def parameter_named(message: str) -> str | None:
    """The parameter an engine message starts with naming (`parameter "count" is required ...`), so a
    form shows the message beside that field; None when it names none."""
    found = _NAMED.match(message)
    return found.group(1) if found else None


#: Form fields the web UI's pages send besides the parameters (the CSRF token: `bot/web/session.py`).
PAGE_FIELDS = frozenset({"csrf_token"})


@dataclass(frozen=True)
class Field:
    """One value a form asks for.

    `required` means the person must fill it in: the schema requires it and there is no default to
    fall back on (a required parameter with a default is satisfied by the default). A boolean is never
    `required`, as chat forms draw it as a checkbox, which gives false unticked (Slack's required
    checkbox could not be left unticked); a required boolean is `yes_no` instead, for a surface that
    asks it as an explicit choice."""

    name: str
    kind: str
    required: bool
    description: str
    position: int | None
    #: Whose parameter this is, as the engine's "is required by ..." message names it.
    owner: str
    #: The parameter's schema: what `parse` casts and checks the value by.
    spec: Mapping[str, Any]
    choices: tuple[Any, ...] = ()
    has_default: bool = False
    default: Any = None

    @property
    def input_name(self) -> str:
        """The form input's name: the parameter's, unless a form field of the page's own has it (the
        CSRF token, `csrf_token`), which would hide it: then `p.` before it."""
        return f"p.{self.name}" if self.name in PAGE_FIELDS or self.name.startswith("p.") else self.name

    @property
    def templated(self) -> bool:
        """A default that is a Jinja template (`{{ st2kv.system.x }}`), rendered when the action runs.
        A form must not fill it in: sent back, it would be taken as the literal text (values from
        people are data). Not one holding a credential (`https://ann:pw@{{ host }}/`): a surface shows a
        template's text as help, and such a default is shown nowhere (`concealed`)."""
        return (isinstance(self.default, str) and ("{{" in self.default or "{%" in self.default)
                and not self.concealed)

    @property
    def concealed(self) -> bool:
        """A default that holds a credential: a secret's, or one the schema is shown with masked
        (`engine.parameters.shown_parameters`: a credential header of `headers`, a `cookies` value, a URL's
        password or token). A form neither fills it in nor shows it: a run form's page and a chat modal are
        read by whoever runs the action, who is shown the credential nowhere else. Left empty, the field is
        not given and the engine applies the default. Not an enum's: its choices are the form's options,
        and nothing chosen would send the first of them instead of the default."""
        if not self.has_default or self.default is None or self.kind == "enum":
            return False
        return self.kind == "secret" or mask_value(self.name, self.default) != self.default

    @property
    def initial(self) -> str:
        """The text the input starts with: the default, except one holding a credential (`concealed`) and a
        template (left empty, so the default applies: an empty field is not given, `parse`)."""
        if not self.has_default or self.default is None or self.concealed or self.templated:
            return ""
        if self.kind == "boolean":
            return "true" if self.default is True else ""
        return self.text_of(self.default)

    def text_of(self, value: Any) -> str:
        """The text this field's input shows for `value`, which `parse` reads back as `value`: the web's re-run
        form is the run form filled with an execution's values (`bot/web/executions.py`). JSON for an array or
        object, "true" for a ticked box, "true" or "false" for a yes/no (`yes_no`: a box could not show "no"
        apart from nothing chosen), nothing for a secret (shown nowhere) or None (not given)."""
        if value is None or self.kind == "secret":
            return ""
        if self.kind in ("array", "object"):
            return json.dumps(value, indent=2, ensure_ascii=False)
        if self.kind == "boolean":
            return "true" if value is True else "false" if value is False and self.yes_no else ""
        return _text(value)

    @property
    def multiline(self) -> bool:
        """A string whose text to start with (`initial`) holds a line break: a surface draws it as a text
        area, since a browser strips the line breaks from a text input's value, and the text run together
        would be sent as the value."""
        return self.kind == "string" and ("\n" in self.initial or "\r" in self.initial)

    @property
    def yes_no(self) -> bool:
        """A boolean the schema requires (an approval's `approved`): the web asks it as a choice of yes
        or no with nothing chosen unless there is a default, since an unticked checkbox, sent with Enter
        from another field, would answer "no" for the person. Nothing chosen is sent empty, which is
        not given (`parse`): the engine's "is required" message when there is no default."""
        return self.kind == "boolean" and bool(self.spec.get("required"))

    @property
    def keypad(self) -> str | None:
        """The `inputmode` of an integer's or number's text input: a phone's numeric (or decimal) keypad
        when the schema rules negatives out, else None (those keypads may have no minus sign)."""
        low = self.spec.get("minimum")
        if self.kind not in ("integer", "number") or not _is_number(low) or low < 0:
            return None
        return "numeric" if self.kind == "integer" else "decimal"

    @property
    def bounds(self) -> str:
        """The range the engine checks an integer or number against, as help ("From 1 to 10."), or "".
        Draft 4, as `engine.parameters.check_parameter` reads it: a boolean `exclusiveMinimum` (or
        `exclusiveMaximum`) makes `minimum` (`maximum`) exclusive, and means nothing alone."""
        if self.kind not in ("integer", "number"):
            return ""
        low, high = self.spec.get("minimum"), self.spec.get("maximum")
        below = self.spec.get("exclusiveMinimum") is True
        above = self.spec.get("exclusiveMaximum") is True
        if _is_number(low) and _is_number(high) and not below and not above:
            return f"From {_text(low)} to {_text(high)}."
        parts = [f"{'more than' if below else 'at least'} {_text(low)}" if _is_number(low) else "",
                 f"{'less than' if above else 'at most'} {_text(high)}" if _is_number(high) else ""]
        said = " and ".join(part for part in parts if part)
        return f"{said[:1].upper()}{said[1:]}." if said else ""

    @property
    def options(self) -> list[tuple[str, Any]]:
        """An enum's choices as (the text a form sends, the value)."""
        return [(_text(choice), choice) for choice in self.choices]


@dataclass
class Parsed:
    """What a submitted form holds: typed values of the fields given, and a message per wrong field."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _text(value: Any) -> str:
    """A value as a form field's text (booleans and null as JSON writes them)."""
    return value if isinstance(value, str) else json.dumps(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(spec: Mapping[str, Any]) -> str:
    if spec.get("secret"):
        return "secret"
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return "enum"
    kind = spec.get("type")
    return kind if kind in _TYPED_KINDS else "string"


def _field(name: str, spec: Mapping[str, Any], owner: str) -> Field:
    position = spec.get("position")
    kind = _kind(spec)
    required = bool(spec.get("required")) and "default" not in spec and kind != "boolean"
    return Field(name=name, kind=kind, required=required, description=str(spec.get("description") or ""),
                 position=position if isinstance(position, int) and not isinstance(position, bool) else None,
                 owner=owner, spec=spec, choices=tuple(spec["enum"]) if kind == "enum" else (),
                 has_default="default" in spec, default=spec.get("default"))


def _ordered(fields: Iterable[Field]) -> list[Field]:
    """Fields to fill in first, then by position (as the parameters are passed), else as declared."""
    return sorted(fields, key=lambda f: (not f.required, f.position is None, f.position or 0))


def action_fields(action: Action) -> list[Field]:
    """The fields of `action`'s run form: every parameter (the runner's included) but the immutable
    ones, which no request may set; the action's own parameters before the runner's."""
    owner = f'action "{action.ref}"'
    names = [*action.declared, *(n for n in action.parameters if n not in action.declared)]
    specs = ((name, action.parameters[name]) for name in names if name in action.parameters)
    return _ordered(_field(name, spec, owner) for name, spec in specs if not spec.get("immutable"))


def schema_fields(schema: Mapping[str, Any], owner: str) -> list[Field]:
    """The fields of an object schema's properties (an inquiry's response schema). A property is
    required by its own `required: true` (StackStorm's draft-3 style) or the object's `required` list."""
    listed = schema.get("required") if isinstance(schema.get("required"), list) else []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    return _ordered(_field(name, {**spec, "required": True} if name in listed else spec, owner)
                    for name, spec in properties.items() if isinstance(spec, dict) and not spec.get("immutable"))


def _json(item: Field, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise ParameterError(f'parameter "{item.name}" is not valid JSON ({problem}{where}): write '
                             f"{_JSON_EXAMPLES[item.kind]}") from None


def _several(text: str) -> Any:
    """The value of a field whose parameter has several types, none of them `string` (`[integer, "null"]`):
    the text as JSON (`7`, `null`), as an array's or object's is read. Text that is no JSON stays text, so
    the schema check refuses it naming the parameter (`cast` does not choose between several types)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def lf_lines(text: str) -> str:
    """Text from a browser's text area with its line breaks as LF: browsers send each as CR LF (HTML's
    form submission), which a shell reads as part of the line (`set -e` as `-e\\r`, refused)."""
    return text.replace("\r\n", "\n")


def _value(item: Field, submitted: Mapping[str, str]) -> Any:
    """The typed value of one field, None when not given; raises `ParameterError` in the engine's words."""
    if item.kind == "boolean" and item.input_name not in submitted:
        return False  # a checkbox: sent when ticked, absent when not
    text = submitted.get(item.input_name, "")
    if item.kind == "string":
        text = lf_lines(text)
    if text == "" or (item.kind not in ("string", "secret") and not text.strip()):
        return None  # not given: the default applies
    if item.kind in ("array", "object"):
        return _json(item, text)
    if item.kind == "enum":
        for shown, choice in item.options:
            if shown == text:
                return choice
    kinds = item.spec.get("type")
    if isinstance(kinds, list) and "string" not in kinds:
        return _several(text)
    return cast(item.name, text, item.spec)


def parse(fields: Iterable[Field], submitted: Mapping[str, str]) -> Parsed:
    """Typed values of the fields a form filled in, and a message for each field that is wrong.

    An empty field is not given (its default applies, or the engine's "is required" message when it
    has none): a yes/no with nothing chosen (`Field.yes_no`) and chat's `skip` too. An unticked checkbox,
    absent from what was sent, is false. Values are cast and checked as the engine checks a
    request's (`squall run` sends text too), array and object fields are JSON."""
    parsed = Parsed()
    for item in fields:
        try:
            value = _value(item, submitted)
            if value is not None:
                check_storable(item.name, value, item.spec)
            if value is not None or not item.has_default:
                check_parameter(item.owner, item.name, item.spec, value)
        except ParameterError as exc:
            parsed.errors[item.name] = str(exc)
            continue
        if value is not None:
            parsed.values[item.name] = value
    return parsed


def checked(fields: list[Field], submitted: Mapping[str, str]) -> Parsed:
    """`parse` of a form, each field's message quoting its value cut short (`quoted_shortly`): the web's run,
    re-run and inquiry answer forms, and chat's forms and questions, whose replies a value of thousands of
    characters would fill."""
    parsed = parse(fields, submitted)
    sent = {f.name: submitted.get(f.input_name, "") for f in fields if f.kind != "secret"}
    parsed.errors = {name: quoted_shortly(message, [sent.get(name, "")]) for name, message in parsed.errors.items()}
    return parsed


def quoted_shortly(message: str, texts: Iterable[str]) -> str:
    """`message` with each long value it quotes cut to its first `QUOTED_CHARS` characters and an ellipsis.

    The engine's messages and jsonschema's quote a wrong value whole, as Python writes it (`repr`): the text
    a field sent, or a part of its JSON (an item, a key); a value of 10,000 characters filled the page beside
    its field, twice. `texts` are what the form's fields sent (never a secret's: the engine quotes none).
    Only those values are cut, longest first, so nothing else a message says is (a pattern, a description)."""
    if len(message) <= QUOTED_CHARS:
        return message  # too short to quote a long value
    quoted: set[str] = set()
    for text in texts:
        for value in (text, lf_lines(text), *_parts(text)):
            try:
                quoted.add(repr(value))
            except RecursionError:  # nested as deep as json.loads reads: no message quotes it whole
                continue
    for whole in sorted((q for q in quoted if len(q) > QUOTED_CHARS), key=len, reverse=True):
        if whole in message:
            message = message.replace(whole, _cut(whole))
    return message


def _cut(quoted: str) -> str:
    """A quoted value cut short, as the chat cuts one (`_short`); a string keeps its closing quote."""
    if len(quoted) > 1 and quoted[0] in "'\"" and quoted[-1] == quoted[0]:
        inner = quoted[1:-1]
        return quoted if len(inner) <= QUOTED_CHARS else f"{quoted[0]}{short(inner, QUOTED_CHARS)}{quoted[0]}"
    return short(quoted, QUOTED_CHARS)


def short(text: str, limit: int = 80) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis: for echoing what someone typed or sent
    back to them (a form's wrong value, and the chat's replies: `bot.chat` imports it from here)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parts(text: str) -> Iterator[Any]:
    """The value a field's text is as JSON (an array's, an object's, a number's) and its parts, at most
    `MAX_QUOTED_PARTS`; nothing for text that is no JSON."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    waiting = deque([value])
    for _ in range(MAX_QUOTED_PARTS):
        if not waiting:
            return
        item = waiting.popleft()
        yield item
        if isinstance(item, dict):
            waiting.extend(part for pair in item.items() for part in pair)
        elif isinstance(item, list):
            waiting.extend(item)


def with_defaults(fields: Iterable[Field], values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each field's default where none was given: for an answer (an inquiry's response),
    which nothing else fills in. An action's defaults are the engine's to apply (they may be templates)."""
    return {**{f.name: f.default for f in fields if f.has_default and f.default is not None}, **values}
