"""Tests for engine.parameters.resolve (spec §1.2, §1.3): unknown/immutable checks, Jinja
rendering with dependencies and context nodes, casts by type, schema validation and masking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.actions import Action, build_action
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import Registry, load_registry
from engine.parameters import MASK, MAX_TEMPLATE_NESTING, ParameterError, cast, mask, resolve, validate
from engine.templates import NONE_MAGIC_VALUE, KVNamespace
from engine.yamlfile import LineMap


def make(parameters: dict[str, Any], runner: str = "noop", name: str = "act") -> Action:
    return build_action({"name": name, "runner_type": runner, "parameters": parameters}, LineMap(None),
                        pack="demo", pack_path=Path("/nonexistent/demo"), file="act.yaml")


def values(parameters: dict[str, Any], supplied: dict[str, Any] | None = None,
           context: dict[str, Any] | None = None, render: bool = False) -> dict[str, Any]:
    return resolve(make(parameters), supplied or {}, context or {}, render=render).values


def error(parameters: dict[str, Any], supplied: dict[str, Any] | None = None,
          context: dict[str, Any] | None = None, render: bool = False) -> str:
    with pytest.raises(ParameterError) as caught:
        resolve(make(parameters), supplied or {}, context or {}, render=render)
    return str(caught.value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    loaded = load_registry([], tmp_path_factory.mktemp("configs"), SYSTEM_PACKS_PATH)
    assert loaded.errors == []
    return loaded


# ---------------------------------------------------------------------------------------------
# Defaults and supplied values
# ---------------------------------------------------------------------------------------------


def test_defaults_are_applied_for_action_and_runner_parameters() -> None:
    action = make({"count": {"type": "integer", "default": 3}, "name": {"type": "string"},
                   "flag": {"type": "boolean", "default": False}}, runner="local-shell-cmd")
    result = resolve(action, {"cmd": "true"}, {})
    assert result.values["count"] == 3
    assert result.values["flag"] is False
    assert result.values["name"] is None
    assert result.values["timeout"] == 60          # runner default
    assert result.values["kwarg_op"] == "--"
    assert result.values["sudo_password"] is None  # runner default null
    assert result.values["cmd"] == "true"
    assert set(result.values) == set(action.parameters)


def test_supplied_value_overrides_default_and_none_means_default() -> None:
    params = {"count": {"type": "integer", "default": 3}}
    assert values(params, {"count": 10}) == {"count": 10}
    result = resolve(make(params), {"count": None}, {})
    assert result.values == {"count": 3}
    assert result.live == []


def test_falsy_supplied_values_are_kept() -> None:
    params = {"n": {"type": "integer", "default": 3}, "s": {"type": "string", "default": "x"},
              "b": {"type": "boolean", "default": True}, "a": {"type": "array", "default": [1]}}
    assert values(params, {"n": 0, "s": "", "b": False, "a": []}) == {"n": 0, "s": "", "b": False, "a": []}


# ---------------------------------------------------------------------------------------------
# Dependencies between parameters
# ---------------------------------------------------------------------------------------------


def test_parameter_default_may_refer_to_another_parameter() -> None:
    params = {"a": {"type": "string", "default": "base"}, "b": {"type": "string", "default": "{{a}}-x"}}
    assert values(params)["b"] == "base-x"
    assert values(params, {"a": "given"})["b"] == "given-x"
    # an explicit value for the dependent parameter wins over its template default
    assert values(params, {"a": "given", "b": "mine"})["b"] == "mine"


def test_chain_of_dependencies_renders_in_order() -> None:
    params = {
        "d": {"type": "string", "default": "{{ c }}!"},
        "c": {"type": "string", "default": "{{ b | upper }}"},
        "b": {"type": "string", "default": "{{ a }}-{{ a }}"},
        "a": {"type": "string"},
    }
    assert values(params, {"a": "x"}) == {"a": "x", "b": "x-x", "c": "X-X", "d": "X-X!"}


def test_a_supplied_value_is_data_unless_the_caller_asks_to_render_it() -> None:
    params = {"a": {"type": "integer", "default": 2}, "b": {"type": "string"}, "c": {"type": "string"}}
    assert values(params, {"b": "{{ a * 21 }}"})["b"] == "{{ a * 21 }}"
    assert values(params, {"b": "{{ a * 21 }}"}, render=True)["b"] == "42"
    # Only the names given render; a default that refers to a literal value gets its text as data.
    action = make({**params, "d": {"type": "string", "default": "[{{ b }}]"}})
    resolved = resolve(action, {"b": "{{ a }}", "c": "{{ a }}"}, {}, render={"c"})
    assert (resolved.values["b"], resolved.values["c"], resolved.values["d"]) == ("{{ a }}", "2", "[{{ a }}]")
    assert resolved.templates == {"c": "{{ a }}", "d": "[{{ b }}]"}


def test_a_deeply_nested_template_is_a_parameter_error() -> None:
    assert "nested too deeply" in error({"p": {"type": "string"}}, {"p": "{{" + "(" * 5000 + "}}"}, render=True)


@pytest.mark.parametrize("name", ["BASH_ENV", "ENV", "BASH_FUNC_echo%%", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH",
                                  "PYTHONSTARTUP", "PYTHONWARNINGS", "PYTHONBREAKPOINT", "PYTHONHOME", "PATH"])
def test_env_may_not_set_variables_that_run_other_code(name: str) -> None:
    params = {"env": {"type": "object"}}
    message = error(params, {"env": {name: "/tmp/x"}})
    assert name in message and message.startswith('parameter "env"')


def test_env_may_set_the_python_variables_that_load_no_code() -> None:
    """What a Docker or CI shell exports, and `st2 run -e` sends whole: it was refused for PYTHONUNBUFFERED."""
    harmless = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
                "PYTHONUTF8": "1", "PYTHONHASHSEED": "0", "PYTHONFAULTHANDLER": "1", "PYTHONNOUSERSITE": "1"}
    assert values({"env": {"type": "object"}}, {"env": harmless})["env"] == harmless


def test_env_may_set_what_the_action_default_sets_and_ordinary_variables() -> None:
    params = {"env": {"type": "object", "default": {"PATH": "/opt/bin:/usr/bin"}}}
    assert values(params, {"env": {"PATH": "/opt/bin:/usr/bin", "GREETING": "hi"}})["env"]["GREETING"] == "hi"
    assert "PATH" in error(params, {"env": {"PATH": "/tmp/evil"}})
    assert values(params)["env"] == {"PATH": "/opt/bin:/usr/bin"}  # the default itself is the pack author's


def test_cycle_is_reported() -> None:
    message = error({"a": {"type": "string", "default": "{{ b }}"}, "b": {"type": "string", "default": "{{ a }}"},
                     "c": {"type": "string", "default": "ok"}})
    assert message.startswith("Cyclic dependency found in the following variables: ")
    assert "a" in message and "b" in message and "c" not in message.split(":", 1)[1]


def test_self_reference_is_a_cycle() -> None:
    assert "Cyclic dependency" in error({"a": {"type": "string", "default": "x{{ a }}"}})


def test_undefined_variable_is_dependency_unsatisfied() -> None:
    message = error({"a": {"type": "string", "default": "{{ nope }}"}})
    assert 'Dependency unsatisfied in variable "nope"' in message
    assert '"a"' in message
    # a context node that was not given is just as missing
    assert 'Dependency unsatisfied in variable "st2kv"' in error({"a": {"default": "{{ st2kv.system.k }}"}})


def test_unset_parameter_renders_as_none_like_stackstorm() -> None:
    # StackStorm gives a parameter without default a null value node, so templates see None
    assert values({"a": {"type": "string"}, "b": {"type": "string", "default": "{{ a }}-x"}})["b"] == "None-x"


def test_render_failure_names_the_parameter() -> None:
    message = error({"a": {"type": "string", "default": "{{ 'x' | from_json_string }}"}})
    assert message.startswith('Failed to render parameter "a": ')
    message = error({"a": {"type": "string", "default": "{{ oops "}})
    assert message.startswith('Failed to render parameter "a": ')


def test_jinja_statements_and_loop_variables_are_not_dependencies() -> None:
    params = {"items": {"type": "array", "default": ["a", "b"]},
              "text": {"type": "string", "default": "{% for i in items %}{{ i }};{% endfor %}"}}
    assert values(params)["text"] == "a;b;"


# ---------------------------------------------------------------------------------------------
# Context nodes: st2kv, config_context, action_context
# ---------------------------------------------------------------------------------------------


def kv_context(system: dict[str, str], user: dict[str, str] | None = None, who: str = "alice") -> dict[str, Any]:
    users = user or {}
    return {"st2kv": {"system": KVNamespace(system.get, label="st2kv.system"),
                      "user": KVNamespace(lambda key: users.get(f"{who}:{key}"), label="st2kv.user")}}


def test_st2kv_system_and_user_lookups() -> None:
    params = {"host": {"type": "string", "default": "{{ st2kv.system.k }}"},
              "nested": {"type": "string", "default": "{{ st2kv.system.db.host }}:{{ st2kv.user.token }}"},
              "missing": {"type": "string", "default": "[{{ st2kv.system.nothing }}]"}}
    context = kv_context({"k": "value", "db.host": "db1"}, {"alice:token": "t0k"})
    result = values(params, context=context)
    assert result == {"host": "value", "nested": "db1:t0k", "missing": "[]"}


def test_st2kv_value_is_cast_to_the_declared_type() -> None:
    params = {"port": {"type": "integer", "default": "{{ st2kv.system.port }}"},
              "hosts": {"type": "array", "default": "{{ st2kv.system.hosts }}"}}
    result = values(params, context=kv_context({"port": "5432", "hosts": '["a", "b"]'}))
    assert result == {"port": 5432, "hosts": ["a", "b"]}


def test_config_context_and_action_context() -> None:
    params = {"region": {"type": "string", "default": "{{ config_context.region }}"},
              "who": {"type": "string", "default": "{{ action_context.user }}@{{ action_context.source_channel }}"},
              "retries": {"type": "integer", "default": "{{ config_context.retries }}"}}
    context = {"config_context": {"region": "eu", "retries": 4},
               "action_context": {"user": "bob", "source_channel": "ops"}}
    assert values(params, context=context) == {"region": "eu", "who": "bob@ops", "retries": 4}


def test_missing_key_of_a_context_node_is_a_render_failure() -> None:
    message = error({"x": {"type": "string", "default": "{{ config_context.absent }}"}},
                    context={"config_context": {}})
    assert message.startswith('Failed to render parameter "x"')
    assert "absent" in message


# ---------------------------------------------------------------------------------------------
# Unknown and immutable parameters
# ---------------------------------------------------------------------------------------------


def test_immutable_override_has_stackstorm_message() -> None:
    params = {"x": {"type": "string", "default": "fixed", "immutable": True}, "y": {"type": "string"}}
    assert error(params, {"x": "other"}) == "Override of immutable parameter(s) ['x'] is unsupported."
    two = {**params, "w": {"type": "integer", "default": 1, "immutable": True}}
    assert error(two, {"x": "a", "w": 2, "y": "ok"}) == \
        "Override of immutable parameter(s) ['w', 'x'] is unsupported."
    assert values(params, {"y": "ok"}) == {"x": "fixed", "y": "ok"}


def test_immutable_runner_parameter_cannot_be_overridden(registry: Registry) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(registry.action("core.local"), {"cmd": "id", "sudo": True}, {})
    assert str(caught.value) == "Override of immutable parameter(s) ['sudo'] is unsupported."
    sudo = resolve(registry.action("core.local_sudo"), {"cmd": "id"}, {})
    assert sudo.values["sudo"] is True


def test_immutable_template_default_is_always_rendered(registry: Registry) -> None:
    result = resolve(registry.action("core.echo"), {"message": "hello world"}, {})
    assert result.values["cmd"] == 'echo "hello world"'
    assert sorted(result.live) == ["cmd", "message"]
    assert result.templates == {"cmd": 'echo "{{message}}"'}
    with pytest.raises(ParameterError, match=r"Override of immutable parameter\(s\) \['cmd'\]"):
        resolve(registry.action("core.echo"), {"message": "x", "cmd": "rm -rf /"}, {})


def test_unknown_parameter_is_named_with_nearest_suggestion() -> None:
    params = {"service": {"type": "string"}, "force": {"type": "boolean"}}
    message = error(params, {"servce": "nginx"})
    assert message.startswith('unknown parameter "servce" (did you mean "service"?) for action "demo.act"')
    assert "it accepts: force, service" in message
    message = error(params, {"servce": "x", "zzz": 1})
    assert message.startswith("unknown parameters ")
    assert '"zzz"' in message and '"servce" (did you mean "service"?)' in message


def test_unknown_parameter_is_checked_before_anything_else() -> None:
    # even when a required parameter is also missing, the unknown name is what is reported
    assert "unknown parameter" in error({"need": {"type": "string", "required": True}}, {"nede": "x"})


# ---------------------------------------------------------------------------------------------
# Casts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptype", "text", "expected"),
    [
        ("integer", "42", 42),
        ("integer", " -7 ", -7),
        ("number", "2.5", 2.5),
        ("number", "10", 10),
        ("number", "1e3", 1000.0),
        ("boolean", "true", True),
        ("boolean", "True", True),
        ("boolean", "false", False),
        ("boolean", "FALSE", False),
        ("array", "a, b,c", ["a", "b", "c"]),
        ("array", "single", ["single"]),
        ("array", '["x", 1, {"k": null}]', ["x", 1, {"k": None}]),
        ("array", "['py', 'literal']", ["py", "literal"]),
        ("object", '{"k": [1, 2], "n": null}', {"k": [1, 2], "n": None}),
        ("object", "{'k': True}", {"k": True}),
        ("string", "42", "42"),
        ("null", "null", None),
    ],
)
def test_cast_from_strings(ptype: str, text: str, expected: Any) -> None:
    result = values({"p": {"type": ptype}}, {"p": text})["p"]
    assert result == expected
    assert type(result) is type(expected)


def test_cast_of_templated_defaults() -> None:
    params = {"n": {"type": "integer", "default": 4},
              "double": {"type": "integer", "default": "{{ n * 2 }}"},
              "ratio": {"type": "number", "default": "{{ n / 8 }}"},
              "big": {"type": "boolean", "default": "{{ n > 3 }}"},
              "list": {"type": "array", "default": "{{ [n, n] }}"}}
    assert values(params) == {"n": 4, "double": 8, "ratio": 0.5, "big": True, "list": [4, 4]}


@pytest.mark.parametrize(
    ("ptype", "text", "expected"),
    [
        ("integer", "abc", "an integer"),
        ("integer", "4.5", "an integer"),
        ("number", "fast", "a number"),
        ("boolean", "maybe", "a boolean"),
        ("array", "[1, 2", "an array"),
        ("object", "[1, 2]", "an object"),
        ("object", "not json", "an object"),
        ("object", "{[]: 1}", "an object"),
        ("array", "[{[]: 1}]", "an array"),
    ],
)
def test_bad_cast_names_parameter_and_expected_type(ptype: str, text: str, expected: str) -> None:
    message = error({"param": {"type": ptype}}, {"param": text})
    assert message.startswith(f'parameter "param": {text!r} is not {expected} (expected ')


def test_non_string_values_are_not_cast_but_validated() -> None:
    assert values({"n": {"type": "integer"}}, {"n": 5}) == {"n": 5}
    message = error({"s": {"type": "string"}}, {"s": 5})
    assert 'parameter "s"' in message and "type" in message
    message = error({"n": {"type": "integer"}}, {"n": 2.5})
    assert 'parameter "n"' in message and "is not of type 'integer'" in message


def test_use_none_filter_gives_none_for_every_type() -> None:
    params = {"src": {"type": "string"},
              "s": {"type": "string", "default": "{{ src | use_none }}"},
              "i": {"type": "integer", "default": "{{ src | use_none }}"},
              "o": {"type": "object", "default": "{{ src | use_none }}"}}
    assert values(params) == {"src": None, "s": None, "i": None, "o": None}
    assert cast("x", NONE_MAGIC_VALUE, {"type": "boolean"}) is None
    assert cast("x", NONE_MAGIC_VALUE, {}) is None
    # a value passes through use_none unchanged
    assert values({"src": {"type": "string"}, "i": {"type": "integer", "default": "{{ src | use_none }}"}},
                  {"src": "7"})["i"] == 7


def test_cast_leaves_untyped_and_multi_typed_values_alone() -> None:
    assert cast("x", "5", {}) == "5"
    assert cast("x", "5", {"type": ["string", "integer"]}) == "5"
    assert cast("x", None, {"type": "integer"}) is None
    assert cast("x", [1], {"type": "array"}) == [1]


@pytest.mark.parametrize("ptype", ["object", "array"])
@pytest.mark.parametrize("text", ["None", "null", " None ", "(None)"])
def test_an_array_or_object_that_reads_as_null_is_none_as_stackstorms_cast_object(ptype: str, text: str) -> None:
    """StackStorm casts both with `_cast_object`: `json.loads`, else `ast.literal_eval`, so `null` and
    `None` are None. Squall refused an object (`'None' is not an object`) and made an array `['None']`."""
    assert cast("p", text, {"type": ptype}) is None


@pytest.mark.parametrize("ptype", ["object", "array"])
def test_a_template_rendering_a_null_leaves_an_optional_array_or_object_unset(ptype: str) -> None:
    """The shipped `chatops.notify-errbot` rule's `context: "{{trigger.data.source_context}}"` when
    err-stackstorm sent no source_context: rendered "None", it is unset, as StackStorm's
    `allow_default_none` lets an optional parameter be."""
    trigger = {"trigger": {"data": {"source_context": None}}}
    assert values({"p": {"type": ptype}}, {"p": "{{ trigger.data.source_context }}"}, trigger,
                  render=True) == {"p": None}


@pytest.mark.parametrize("ptype", ["object", "array"])
def test_a_required_array_or_object_rendered_to_null_is_missing(ptype: str) -> None:
    """StackStorm's schema check refuses None for a required parameter with no default (it is not
    nullable there): Squall says the parameter is required, as for one not given."""
    trigger = {"trigger": {"data": {"source_context": None}}}
    message = error({"p": {"type": ptype, "required": True}}, {"p": "{{ trigger.data.source_context }}"}, trigger,
                    render=True)
    assert message.startswith('parameter "p" is required by action "demo.act"'), message


@pytest.mark.parametrize(("text", "expected"), [
    ("None, x", ["None", "x"]),  # a list that holds the word: no null (`_cast_object` refuses it)
    ("nullable", ["nullable"]),
    ("None # ,", None),  # what literal_eval reads as None is None, whatever else it holds
])
def test_only_an_array_text_that_is_null_as_a_whole_is_none(text: str, expected: Any) -> None:
    assert cast("p", text, {"type": "array"}) == expected


def test_an_object_that_is_no_mapping_nor_null_is_still_refused() -> None:
    for text in ("0", "'None'", "[None]", "none"):
        with pytest.raises(ParameterError, match=r'^parameter "p": .* is not an object'):
            cast("p", text, {"type": "object"})


def test_a_list_of_types_is_checked_by_the_schema() -> None:
    """`type: [integer, "null"]` is JSON schema's: such a value is validated, never a crash."""
    params = {"ni": {"type": ["integer", "null"]}, "sn": {"type": ["string", "number"]}}
    assert values(params, {"ni": 7, "sn": 2.5}) == {"ni": 7, "sn": 2.5}
    assert values(params, {"ni": None, "sn": "x"}) == {"ni": None, "sn": "x"}
    message = error(params, {"ni": "x"})
    assert message.startswith("parameter \"ni\" = 'x' breaks the rule type: 'x' is not of type 'integer', 'null'")
    assert error(params, {"ni": True}).startswith('parameter "ni" = True breaks the rule type')
    assert error(params, {"sn": [1]}).startswith('parameter "sn" = [1] breaks the rule type')


# ---------------------------------------------------------------------------------------------
# Complex values keep types
# ---------------------------------------------------------------------------------------------


def test_dict_default_keeps_integer_type_of_referenced_parameter() -> None:
    params = {"count": {"type": "integer", "default": 5},
              "payload": {"type": "object", "default": {"n": "{{count}}", "label": "n={{ count }}",
                                                        "fixed": True}}}
    result = values(params)
    assert result["payload"] == {"n": 5, "label": "n=5", "fixed": True}
    assert type(result["payload"]["n"]) is int
    assert values(params, {"count": 9})["payload"]["n"] == 9


def test_list_default_keeps_types_of_referenced_parameters() -> None:
    params = {"hosts": {"type": "array", "default": ["a", "b"]},
              "opts": {"type": "object", "default": {"k": 1}},
              "all": {"type": "array", "default": ["{{hosts}}", "{{opts}}", "{{ hosts | length }}"]}}
    assert values(params)["all"] == [["a", "b"], {"k": 1}, "2"]


# ---------------------------------------------------------------------------------------------
# Schema validation
# ---------------------------------------------------------------------------------------------


def test_enum_violation_names_parameter_and_rule() -> None:
    message = error({"mode": {"type": "string", "enum": ["soft", "hard"]}}, {"mode": "medium"})
    assert message.startswith('parameter "mode"')
    assert "enum" in message and "'medium' is not one of ['soft', 'hard']" in message


def test_minimum_violation_names_parameter_and_rule() -> None:
    message = error({"n": {"type": "integer", "minimum": 1, "maximum": 10}}, {"n": "0"})
    assert message.startswith('parameter "n" = 0 breaks the rule minimum')
    assert "less than the minimum of 1" in message
    assert "maximum" in error({"n": {"type": "integer", "minimum": 1, "maximum": 10}}, {"n": 11})


def test_default_values_are_validated_too() -> None:
    message = error({"mode": {"type": "string", "enum": ["a", "b"], "default": "{{ 'c' }}"}})
    assert 'parameter "mode"' in message and "enum" in message


def test_nested_violation_names_the_path() -> None:
    params = {"opts": {"type": "object", "properties": {"port": {"type": "integer", "maximum": 65535}}}}
    message = error(params, {"opts": {"port": 70000}})
    assert message.startswith("parameter \"opts\"['port']")
    assert "maximum" in message


def test_nested_required_properties_in_stackstorm_style_are_enforced() -> None:
    # StackStorm's schemas mark `required: true` on each property (draft-3 style), at any depth.
    params = {"opts": {"type": "object", "properties": {
        "host": {"type": "string", "required": True},
        "port": {"type": "integer", "required": False},
        "tls": {"type": "object", "properties": {"cert": {"type": "string", "required": True}}},
    }}}
    message = error(params, {"opts": {"port": 1}})
    assert 'parameter "opts"' in message and "'host' is a required property" in message
    message = error(params, {"opts": {"host": "h", "tls": {}}})
    assert "parameter \"opts\"['tls']" in message and "'cert' is a required property" in message
    assert values(params, {"opts": {"host": "h", "tls": {"cert": "c"}}})["opts"]["host"] == "h"


def test_required_in_array_items_is_enforced() -> None:
    params = {"users": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string", "required": True}}}}}
    message = error(params, {"users": [{"name": "a"}, {"age": 3}]})
    assert "parameter \"users\"[1]" in message and "'name' is a required property" in message


def test_required_parameter_missing() -> None:
    params = {"service": {"type": "string", "required": True, "description": "Service to restart."}}
    assert error(params) == 'parameter "service" is required by action "demo.act" (Service to restart.)'
    assert error(params, {"service": None}).startswith('parameter "service" is required')
    assert values(params, {"service": "nginx"}) == {"service": "nginx"}


def test_required_with_null_default_is_satisfied_by_it() -> None:
    # StackStorm fills defaults in before it checks `required` (allow_default_none): the action gets it unset
    assert values({"x": {"type": "string", "required": True, "default": None}}) == {"x": None}
    assert error({"x": {"type": "string", "required": True}}).startswith('parameter "x" is required')
    # a null default on an optional parameter is fine
    assert values({"x": {"type": "string", "default": None}}) == {"x": None}


def test_http_url_is_required_for_core_http(registry: Registry) -> None:
    with pytest.raises(ParameterError, match=r'parameter "url" is required by action "core\.http"'):
        resolve(registry.action("core.http"), {}, {})
    result = resolve(registry.action("core.http"), {"url": "https://x", "timeout": "5"}, {})
    assert result.values["timeout"] == 5
    assert result.values["verify_ssl_cert"] is True


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


SECRET = "hunter2-SeCrEt"


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "string", "secret": True, "enum": ["a", "b"]},
        {"type": "string", "secret": True, "maxLength": 3},
        {"type": "string", "secret": True, "pattern": "^[0-9]+$"},
        {"type": "integer", "secret": True},
        {"type": "object", "secret": True},
        {"type": "array", "secret": True, "items": {"type": "integer"}},
    ],
)
def test_secret_value_never_appears_in_error_messages(spec: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(make({"token": spec}), {"token": SECRET}, {})
    message = str(caught.value)
    assert "hunter2" not in message
    assert 'parameter "token"' in message
    assert caught.value.__cause__ is None or "hunter2" not in str(caught.value.__cause__)


def test_secret_validation_error_still_names_the_rule() -> None:
    message = error({"token": {"type": "string", "secret": True, "minLength": 20}}, {"token": SECRET})
    assert message.startswith(f'parameter "token" = {MASK} breaks the rule minLength')


@pytest.mark.parametrize(
    "value",
    [f"pa{{{{ss-{SECRET}", f"{{{{ 1 // 0 }}}}{SECRET}", f"{{{{ '{SECRET}' | from_json_string }}}}",
     f"{{{{ {SECRET} {SECRET} }}}}", "{{ hunter2 }}"],
)
def test_secret_template_failure_does_not_show_the_value(value: str) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(make({"password": {"type": "string", "secret": True}}), {"password": value}, {}, render=True)
    message = str(caught.value)
    assert message.startswith(('Failed to render parameter "password"', "Dependency unsatisfied"))
    assert 'parameter "password"' in message
    assert "hunter2" not in message
    assert caught.value.__cause__ is None or "hunter2" not in str(caught.value.__cause__)


def test_non_secret_template_failure_shows_the_template() -> None:
    assert "{{ 1 // 0 }}" in error({"p": {"type": "string"}}, {"p": "{{ 1 // 0 }}"}, render=True)


def test_mask_replaces_secret_values_only() -> None:
    original = {"user": "bob", "password": SECRET, "token": None, "n": 0}
    masked = mask(original, {"password", "token", "absent"})
    assert masked == {"user": "bob", "password": MASK, "token": None, "n": 0}
    assert original["password"] == SECRET  # the input is not modified
    assert MASK == "********"
    assert mask({"password": ""}, {"password"}) == {"password": MASK}


def test_secret_names_of_core_actions(registry: Registry) -> None:
    assert registry.action("core.http").secret_names == {"password"}
    result = resolve(registry.action("core.local"), {"cmd": "id"}, {})
    assert mask(result.values, registry.action("core.local").secret_names)["sudo_password"] is None


# ---------------------------------------------------------------------------------------------
# Live parameters and templates
# ---------------------------------------------------------------------------------------------


def test_live_lists_supplied_and_templated_default_params_only() -> None:
    action = make({
        "a": {"type": "string", "default": "plain"},
        "b": {"type": "string", "default": "{{ a }}-b"},
        "c": {"type": "integer", "default": 1},
        "d": {"type": "string"},
        "e": {"type": "object", "default": {"k": "{{ a }}"}},
        "f": {"type": "string"},
    }, runner="local-shell-cmd")
    result = resolve(action, {"d": "given", "cmd": "true", "f": None}, {})
    assert sorted(result.live) == ["b", "cmd", "d", "e"]
    assert result.templates == {"b": "{{ a }}-b", "e": '{"k": "{{ a }}"}'}
    assert result.values["e"] == {"k": "plain"}
    assert "timeout" not in result.live


def test_resolve_does_not_modify_the_action_or_the_input() -> None:
    action = make({"payload": {"type": "object", "default": {"n": "{{count}}"}},
                   "count": {"type": "integer", "default": 2}})
    supplied = {"count": "3"}
    resolve(action, supplied, {})
    assert action.parameters["payload"]["default"] == {"n": "{{count}}"}
    assert supplied == {"count": "3"}


def test_validate_directly() -> None:
    action = make({"n": {"type": "integer", "required": True, "position": 0, "immutable": False,
                         "secret": False, "title": "N"}})
    validate(action, {"n": 3})
    with pytest.raises(ParameterError, match="required"):
        validate(action, {})


@pytest.mark.parametrize(("spec", "value", "ok"), [
    ({"type": "string"}, "web1", True),
    ({"type": "integer"}, 3, True),
    ({"type": "integer"}, True, False),          # a bool is no integer, as in JSON schema
    ({"type": "number"}, False, False),
    ({"type": "number"}, 2.5, True),
    ({"type": "boolean"}, 1, False),
    ({"type": "string", "minLength": 3}, "ab", False),  # more than a type: jsonschema checks it
    ({"type": "string", "enum": ["a", "b"]}, "c", False),
    ({"type": "array", "items": {"type": "integer"}}, [1, "x"], False),
    ({"type": "object"}, {"any": 1}, True),
])
def test_plain_types_are_checked_without_jsonschema_and_the_rest_with_it(spec: dict, value: Any, ok: bool) -> None:
    """The fast path for parameters that ask only a type, and the validator built once per spec,
    decide as jsonschema does (twice: the second call takes the cached validator)."""
    from engine.parameters import check_parameter

    for _ in range(2):
        if ok:
            check_parameter('action "demo.x"', "p", spec, value)
        else:
            with pytest.raises(ParameterError, match='parameter "p"'):
                check_parameter('action "demo.x"', "p", spec, value)


def test_nesting_is_refused_before_jinja_parses_it_and_ordinary_nesting_renders() -> None:
    # Past MAX_TEMPLATE_NESTING the template never reaches Jinja's recursive parser, whose RecursionError
    # at the interpreter's limit also escaped from the generators it unwound (one CI run in many failed so).
    deep = "{{ " + "(" * (MAX_TEMPLATE_NESTING + 1) + "1" + ")" * (MAX_TEMPLATE_NESTING + 1) + " }}"
    assert "nested too deeply" in error({"p": {"type": "string"}}, {"p": deep}, render=True)
    ordinary = "{{ " + "(" * 20 + "1 + 1" + ")" * 20 + " }}"
    assert values({"p": {"type": "string"}}, {"p": ordinary}, render=True)["p"] == "2"


def test_a_nested_error_shows_the_value_of_the_element_it_is_about() -> None:
    """`tags=["a", 2]` against `items: {type: string}`: the error names element 1 and its own value,
    not the whole array as element 1's value; a secret's element stays masked, and a credential of
    a `headers` object is shown masked as everywhere else."""
    message = error({"tags": {"type": "array", "items": {"type": "string"}}}, {"tags": ["a", 2]})
    assert message.startswith('parameter "tags"[1] = 2 breaks the rule type'), message
    nested = error({"hosts": {"type": "object", "additionalProperties": {"type": "integer"}}},
                   {"hosts": {"web1": 1, "web2": "many"}})
    assert nested.startswith("parameter \"hosts\"['web2'] = 'many' breaks the rule type"), nested
    secret = error({"keys": {"type": "array", "secret": True, "items": {"type": "string"}}}, {"keys": ["a", SECRET, 3]})
    assert secret.startswith(f'parameter "keys"[2] = {MASK} breaks'), secret
    assert "hunter2" not in secret
    headers = error({"headers": {"type": "object", "additionalProperties": {"type": "string"}}},
                    {"headers": {"Authorization": "Bearer s3cr3t-t0ken-value", "X-Count": 3}})
    assert headers.startswith("parameter \"headers\"['X-Count'] = 3 breaks the rule type"), headers
    assert "s3cr3t-t0ken-value" not in headers
