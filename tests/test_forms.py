"""`bot.forms`: a parameter schema as form fields, and a submitted form as typed values with one
message per wrong field, in the engine's own words (what `squall run` and the API say)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.forms import KINDS, Field, action_fields, parse, schema_fields, with_defaults
from engine.actions import Action, build_action
from engine.parameters import MASK, ParameterError, resolve
from engine.yamlfile import LineMap

PARAMETERS: dict[str, Any] = {
    "who": {"type": "string", "required": True, "description": "Whom to greet", "position": 1},
    "count": {"type": "integer", "default": 2, "minimum": 1, "position": 0},
    "ratio": {"type": "number"},
    "loud": {"type": "boolean", "default": True},
    "colour": {"type": "string", "enum": ["red", "green"], "default": "green"},
    "size": {"type": "integer", "enum": [1, 2, 3]},
    "token": {"type": "string", "secret": True, "default": "s3cret"},
    "tags": {"type": "array", "items": {"type": "string"}, "default": ["a"]},
    "labels": {"type": "object"},
    "greeting": {"type": "string", "default": "hello {{ who }}"},
    "fixed": {"type": "string", "default": "x", "immutable": True},
}


def make(parameters: dict[str, Any] = PARAMETERS, runner: str = "noop") -> Action:
    return build_action({"name": "act", "runner_type": runner, "parameters": parameters}, LineMap(None),
                        pack="demo", pack_path=Path("/nonexistent/demo"), file="act.yaml")


def fields_by_name(action: Action | None = None) -> dict[str, Field]:
    return {f.name: f for f in action_fields(action or make())}


def engine_error(action: Action, supplied: dict[str, Any]) -> str:
    """What the engine says about a request (the API's and the CLI's message)."""
    with pytest.raises(ParameterError) as caught:
        resolve(action, supplied, {})
    return str(caught.value)


def test_each_kind_and_what_a_field_carries() -> None:
    fields = fields_by_name()
    assert {name: f.kind for name, f in fields.items()} == {
        "who": "string", "count": "integer", "ratio": "number", "loud": "boolean", "colour": "enum",
        "size": "enum", "token": "secret", "tags": "array", "labels": "object", "greeting": "string"}
    assert {f.kind for f in fields.values()} == set(KINDS)  # every kind a surface draws
    assert "fixed" not in fields  # immutable: no request may set it
    who = fields["who"]
    assert who.required and who.description == "Whom to greet" and who.position == 1
    assert who.owner == 'action "demo.act"'
    assert fields["size"].options == [("1", 1), ("2", 2), ("3", 3)]
    assert fields["colour"].choices == ("red", "green")


def test_defaults_fill_the_inputs_except_secrets_and_templates() -> None:
    fields = fields_by_name()
    assert fields["count"].initial == "2" and fields["colour"].initial == "green"
    assert fields["loud"].initial == "true"
    assert fields["tags"].initial == '[\n  "a"\n]'
    assert fields["token"].has_default and fields["token"].initial == ""  # a secret is never shown
    assert fields["greeting"].templated and fields["greeting"].initial == ""  # sent back it would be literal
    assert fields["ratio"].initial == "" and not fields["ratio"].has_default


def test_a_value_shown_in_its_field_is_read_back_as_that_value() -> None:
    """The web's re-run form is the run form filled with an execution's values: each value's text
    (`Field.text_of`), sent back as shown, parses to the value (a ticked box to true; a yes/no's "no" is
    shown chosen, as "false"); a secret and a value not given show nothing."""
    action = make({**PARAMETERS, "sure": {"type": "boolean", "required": True},
                   "ni": {"type": ["integer", "null"]}, "lines": {"type": "string"}})
    fields = fields_by_name(action)
    values = {"who": "ann", "count": 3, "ratio": 2.5, "loud": True, "colour": "red", "size": 2, "sure": False,
              "tags": ["x", "ü"], "labels": {"env": "prod"}, "ni": 7, "lines": "a\nb"}
    shown = {fields[name].input_name: fields[name].text_of(value) for name, value in values.items()}
    assert shown["sure"] == "false" and shown["loud"] == "true" and shown["tags"] == '[\n  "x",\n  "ü"\n]'
    assert parse([fields[name] for name in values], shown).values == values
    assert fields["loud"].text_of(False) == "" and fields["sure"].text_of(True) == "true"  # unticked; yes
    assert fields["token"].text_of("hunter2") == "" and fields["count"].text_of(None) == ""


def test_order_required_first_then_position_then_as_declared() -> None:
    names = [f.name for f in action_fields(make())]
    assert names[0] == "who"  # the one to fill in
    assert names[1] == "count"  # position 0
    assert names[2:] == ["ratio", "loud", "colour", "size", "token", "tags", "labels", "greeting"]
    runner_too = [f.name for f in action_fields(make({"x": {"type": "string"}}, runner="local-shell-cmd"))]
    assert runner_too[0] == "x" and "cmd" in runner_too  # the action's own, then the runner's


def test_a_good_form_gives_typed_values() -> None:
    parsed = parse(action_fields(make()), {
        "who": "ann", "count": "3", "ratio": "2.5", "loud": "true", "colour": "red", "size": "2",
        "token": "hunter2", "tags": '["x", "y"]', "labels": '{"env": "prod"}', "greeting": ""})
    assert parsed.ok, parsed.errors
    assert parsed.values == {"who": "ann", "count": 3, "ratio": 2.5, "loud": True, "colour": "red", "size": 2,
                             "token": "hunter2", "tags": ["x", "y"], "labels": {"env": "prod"}}


def test_empty_optional_fields_are_not_given_and_checkboxes_are_booleans() -> None:
    parsed = parse(action_fields(make()), {"who": "ann", "count": " ", "token": "", "tags": "", "colour": ""})
    assert parsed.ok, parsed.errors
    assert parsed.values == {"who": "ann", "loud": False}  # an unticked checkbox is false, the rest defaults
    values = resolve(make(), parsed.values, {}).values
    assert values["count"] == 2 and values["token"] == "s3cret" and values["tags"] == ["a"]
    assert values["greeting"] == "hello ann"  # the template applies


def test_a_missing_required_field_has_the_engines_message() -> None:
    parsed = parse(action_fields(make()), {"who": ""})
    assert parsed.errors == {"who": engine_error(make(), {})}
    assert parsed.errors["who"] == 'parameter "who" is required by action "demo.act" (Whom to greet)'


@pytest.mark.parametrize(("name", "text"), [
    ("count", "many"), ("count", "0"), ("ratio", "fast"), ("size", "7"), ("colour", "blue"),
    ("labels", '["not", "an", "object"]'), ("tags", "[1, 2]"),
])
def test_bad_values_have_the_engines_messages(name: str, text: str) -> None:
    parsed = parse(action_fields(make()), {"who": "ann", name: text})
    assert list(parsed.errors) == [name]
    # `squall run demo.act who=ann NAME=TEXT` sends the text; the API sends the JSON value
    supplied = json.loads(text) if name in ("labels", "tags") else text
    assert parsed.errors[name] == engine_error(make(), {"who": "ann", name: supplied})
    assert name not in parsed.values


def test_every_wrong_field_is_told_at_once() -> None:
    parsed = parse(action_fields(make()), {"count": "x", "ratio": "y", "who": ""})
    assert set(parsed.errors) == {"who", "count", "ratio"}
    assert parsed.errors["count"] == 'parameter "count": \'x\' is not an integer (expected a whole number such as 5)'


def test_json_fields_say_what_is_wrong_with_the_json() -> None:
    parsed = parse(action_fields(make()), {"who": "ann", "tags": '["a",', "labels": "{nope}"})
    assert parsed.errors["tags"] == ('parameter "tags" is not valid JSON (Expecting value at line 1 column 6): '
                                     'write a JSON array such as ["a", "b"]')
    assert parsed.errors["labels"].startswith('parameter "labels" is not valid JSON (Expecting property name')
    assert parsed.errors["labels"].endswith('write a JSON object such as {"key": "value"}')


def test_a_parameter_of_several_types_is_asked_as_text_and_read_as_json() -> None:
    """`type: [integer, "null"]` is asked as text: `7` is the number; text that fits none of the types is
    refused as the engine refuses it. With `string` among the types the text is the value."""
    action = make({"ni": {"type": ["integer", "null"]}, "sn": {"type": ["string", "integer"]},
                   "nb": {"type": ["number", "boolean"], "secret": True}})
    fields = fields_by_name(action)
    assert (fields["ni"].kind, fields["sn"].kind, fields["nb"].kind) == ("string", "string", "secret")
    parsed = parse(action_fields(action), {"ni": "7", "sn": "7", "nb": "true"})
    assert parsed.ok, parsed.errors
    assert parsed.values == {"ni": 7, "sn": "7", "nb": True}
    wrong = parse(action_fields(action), {"ni": "x", "nb": "[" * 5000 + "]" * 5000})
    assert wrong.errors["ni"] == engine_error(action, {"ni": "x"})
    assert wrong.errors["ni"].startswith("parameter \"ni\" = 'x' breaks the rule type")
    assert wrong.errors["nb"] == f'parameter "nb" = {MASK} breaks the rule type: the value breaks \'type\''


def test_a_secrets_value_is_never_in_its_message() -> None:
    action = make({"pin": {"type": "integer", "secret": True}, "code": {"type": "string", "secret": True,
                                                                        "pattern": "^[0-9]+$"}})
    parsed = parse(action_fields(action), {"pin": "hunter2", "code": "letmein"})
    assert "hunter2" not in parsed.errors["pin"] and MASK in parsed.errors["pin"]
    assert "letmein" not in parsed.errors["code"]
    assert parsed.errors["code"] == engine_error(action, {"code": "letmein"})


def test_an_out_of_range_number_is_refused_as_the_engine_refuses_it() -> None:
    parsed = parse(action_fields(make()), {"who": "ann", "ratio": "1e400"})
    assert parsed.errors["ratio"] == engine_error(make(), {"who": "ann", "ratio": "1e400"})
    assert "not a finite number" in parsed.errors["ratio"]


def test_an_inquiry_schema_as_fields() -> None:
    schema = {"type": "object", "required": ["reason"], "properties": {
        "approved": {"type": "boolean", "description": "Deploy?", "required": True},
        "reason": {"type": "string"}, "when": {"type": "string", "enum": ["now", "later"]}}}
    fields = schema_fields(schema, 'inquiry "abc"')
    assert [(f.name, f.kind, f.required) for f in fields] == [  # a checkbox gives false when unticked
        ("reason", "string", True), ("approved", "boolean", False), ("when", "enum", False)]
    parsed = parse(fields, {"approved": "true", "reason": ""})
    assert parsed.errors == {"reason": 'parameter "reason" is required by inquiry "abc"'}
    assert parse(fields, {"reason": "ok", "when": "later"}).values == {"approved": False, "reason": "ok",
                                                                       "when": "later"}


def test_an_answer_gets_the_defaults_it_left_out() -> None:
    fields = schema_fields({"properties": {"when": {"type": "string", "default": "now"}, "note": {"type": "string"},
                                           "nothing": {"type": "string", "default": None}}}, 'inquiry "abc"')
    parsed = parse(fields, {"when": "", "note": "hi"})
    assert parsed.values == {"note": "hi"}  # the form gives what was filled in...
    assert with_defaults(fields, parsed.values) == {"when": "now", "note": "hi"}  # ...an answer also the defaults
    assert with_defaults(fields, {"when": "later"}) == {"when": "later"}


def test_a_required_boolean_is_a_yes_or_no_to_choose() -> None:
    """A required boolean is asked as an explicit yes/no: the web's choice sends the field empty while
    nothing is chosen, and that is refused with the engine's "is required" message (a checkbox left
    unticked answered "no" for the person). `required` stays false for it, so a chat form's checkbox
    (Slack and Mattermost send nothing when it is unticked) still answers false."""
    schema = {"type": "object", "properties": {
        "approved": {"type": "boolean", "required": True, "description": "Deploy?"},
        "careful": {"type": "boolean", "required": True, "default": False},
        "notify": {"type": "boolean"}}}
    fields = schema_fields(schema, 'inquiry "abc"')
    by_name = {f.name: f for f in fields}
    assert [(f.name, f.yes_no, f.required) for f in fields] == [
        ("approved", True, False), ("careful", True, False), ("notify", False, False)]
    nothing_chosen = parse(fields, {"approved": "", "careful": "", "notify": ""})
    assert nothing_chosen.errors == {"approved": 'parameter "approved" is required by inquiry "abc" (Deploy?)'}
    assert parse(fields, {"approved": "false", "careful": "true"}).values == {
        "approved": False, "careful": True, "notify": False}
    assert parse(fields, {"approved": "", "careful": ""}).errors.keys() == {"approved"}
    assert with_defaults(fields, parse(fields, {"approved": "true", "careful": ""}).values) == {
        "approved": True, "careful": False, "notify": False}  # the default of the one not chosen
    assert parse(fields, {}).values == {"approved": False, "careful": False, "notify": False}  # chat: unticked
    assert by_name["careful"].initial == "" and by_name["approved"].initial == ""


def test_an_empty_boolean_is_not_given_so_its_default_applies() -> None:
    """Chat's `skip` for a boolean sends it empty, as "the default": not false."""
    parsed = parse(action_fields(make()), {"who": "ann", "loud": ""})
    assert parsed.ok, parsed.errors
    assert "loud" not in parsed.values
    assert resolve(make(), parsed.values, {}).values["loud"] is True


@pytest.mark.parametrize(("spec", "keypad", "bounds"), [
    ({"type": "integer", "minimum": 1, "maximum": 10}, "numeric", "From 1 to 10."),
    ({"type": "integer", "minimum": 0}, "numeric", "At least 0."),
    ({"type": "integer"}, None, ""),  # negatives too: a keypad without a minus sign would refuse them
    ({"type": "integer", "maximum": 5}, None, "At most 5."),
    ({"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}, "decimal", "More than 0 and at most 1."),
    ({"type": "number", "minimum": -1, "maximum": 1, "exclusiveMaximum": True}, None, "At least -1 and less than 1."),
    ({"type": "number", "exclusiveMinimum": 0.5}, None, ""),  # draft 4 (the engine's): needs `minimum`
    ({"type": "string", "minimum": 1}, None, ""),
])
def test_numbers_say_their_keypad_and_range(spec: dict[str, Any], keypad: str | None, bounds: str) -> None:
    """An integer or number field is text (a browser's number input drops a typo and sends nothing);
    a phone's numeric keypad where the schema rules negatives out, and the range the engine checks
    (draft 4, as `check_parameter`: a boolean `exclusiveMinimum` makes `minimum` exclusive) as help."""
    (item,) = schema_fields({"properties": {"n": spec}}, 'inquiry "abc"')
    assert (item.keypad, item.bounds) == (keypad, bounds)


def test_a_string_whose_default_has_line_breaks_is_multi_line() -> None:
    """A text input's value loses its line breaks in the browser (and the stripped text was sent as the
    value): a string whose default holds a line break says so, for a surface to draw a text area."""
    fields = fields_by_name(make({"body": {"type": "string", "default": "Dear team,\nthe deploy is done.\n"},
                                  "cr": {"type": "string", "default": "one\rtwo"},
                                  "line": {"type": "string", "default": "one line"},
                                  "tags": {"type": "array", "default": ["a"]},
                                  "key": {"type": "string", "secret": True, "default": "a\nb"}}))
    assert fields["body"].multiline and fields["cr"].multiline
    assert not fields["line"].multiline and not fields["key"].multiline
    assert not fields["tags"].multiline  # JSON: always a text area of its own
    note = schema_fields({"type": "object", "properties": {"note": {"type": "string", "default": "one\ntwo"}}},
                         "the inquiry")[0]
    assert note.multiline and note.initial == "one\ntwo"


def test_a_string_sent_with_crlf_line_breaks_is_read_with_lf() -> None:
    """Browsers send a text area's line breaks as CR LF: a string is read with LF, so an untouched
    multi-line default comes back as it was written (`set -e` then reads `-e`, not `-e\\r`)."""
    fields = action_fields(make({"body": {"type": "string", "default": "Dear team,\nthe deploy is done.\n"},
                                 "several": {"type": ["string", "null"]},
                                 "tags": {"type": "array"}}))
    parsed = parse(fields, {"body": "Dear team,\r\nthe deploy is done.\r\n", "several": "a\r\nb",
                            "tags": '[\r\n  "a"\r\n]'})
    assert parsed.ok and parsed.values == {"body": "Dear team,\nthe deploy is done.\n", "several": "a\nb",
                                           "tags": ["a"]}
    assert parse(fields, {"body": "\r\n"}).values == {"body": "\n"}  # text, however little, is given
