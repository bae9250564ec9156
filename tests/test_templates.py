"""Tests for engine.templates: StackStorm filter semantics, sandboxing, datastore lookups and
render_values rules (examples mirror StackStorm's st2common/tests/unit/test_jinja_render_*)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import tracemalloc
import types
from collections.abc import Callable, Iterator, KeysView, Mapping

import jinja2
import pytest
import yaml
from jinja2.sandbox import SandboxedEnvironment

from engine.templates import (
    NONE_MAGIC_VALUE,
    KVNamespace,
    KVValue,
    TemplateRenderError,
    build_environment,
    compiled,
    render_template,
    render_value,
    render_values,
)


def render(text: str, **context: object) -> str:
    return render_template(text, context)


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def test_environment_is_sandboxed_strict_and_cached() -> None:
    env = build_environment()
    assert isinstance(env, SandboxedEnvironment)
    assert env.undefined is jinja2.StrictUndefined
    assert env.trim_blocks and env.lstrip_blocks
    assert build_environment() is env
    assert build_environment(decrypt=lambda s: s) is not env


def test_dot_lookups_on_dicts_read_as_jinja_reads_them() -> None:
    """`d.name` on a plain dict is taken as an item without Jinja's failed getattr first: the same
    value, the same refusal, and a dict's own methods still win over keys of their names."""
    reference = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    data = {"d": {"host": "web1", "items": "a key", "nested": {"port": 22}, "n": None}}
    for text in ("{{ d.host }}", "{{ d.nested.port }}", "{{ d['items'] }}", "{{ d.get('host') }}",
                 "{{ d.items() | list | length }}", "{{ d.n }}", "{{ d.missing | default('dflt') }}"):
        assert render(text, **data) == reference.from_string(text).render(**data), text
    with pytest.raises(TemplateRenderError) as info:
        render("{{ d.missing }}", **data)
    with pytest.raises(jinja2.UndefinedError) as expected:
        reference.from_string("{{ d.missing }}").render(**data)
    assert str(expected.value) in str(info.value)


def test_trim_and_lstrip_blocks() -> None:
    text = "items:\n    {% for i in xs %}\n- {{ i }}\n    {% endfor %}\nend"
    assert render(text, xs=[1, 2]) == "items:\n- 1\n- 2\nend"


def test_in_test() -> None:
    text = "{% if x is in y %}yes{% else %}no{% endif %}"
    assert render(text, x=2, y=[1, 2, 3]) == "yes"
    assert render(text, x=5, y=[1, 2, 3]) == "no"
    assert render(text, x="ell", y="hello") == "yes"


def test_undefined_variable_raises_template_render_error() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render("hello {{ missing }}")
    assert "hello {{ missing }}" in str(info.value)
    assert "'missing' is undefined" in str(info.value)
    assert isinstance(info.value.__cause__, jinja2.exceptions.UndefinedError)
    assert info.value.template == "hello {{ missing }}"


def test_syntax_error_raises_template_render_error() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render("{% if %}")
    assert "{% if %}" in str(info.value)
    assert isinstance(info.value.__cause__, jinja2.exceptions.TemplateSyntaxError)


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ x.__class__.__base__.__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_dunder_access(text: str) -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(text, x=object())
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)


def test_compiled_templates_are_reused() -> None:
    env = build_environment()
    calls = []
    original = env.from_string

    def counting_from_string(source: str, *args: object, **kwargs: object) -> jinja2.Template:
        calls.append(source)
        return original(source, *args, **kwargs)

    text = "{{ a }}-cache-probe-unique"
    env.from_string = counting_from_string  # type: ignore[method-assign]
    try:
        assert render_template(text, {"a": 1}, env) == "1-cache-probe-unique"
        assert render_template(text, {"a": 2}, env) == "2-cache-probe-unique"
    finally:
        del env.from_string
    assert calls == [text]


# ---------------------------------------------------------------------------------------------
# Data filters
# ---------------------------------------------------------------------------------------------

OBJ = {"a": "b", "c": {"d": "e", "f": 1, "g": True}}


def test_to_json_string() -> None:
    assert json.loads(render("{{ k1 | to_json_string }}", k1=OBJ)) == OBJ
    # StackStorm's default separators are (",", ": "): no space after commas, key order kept.
    assert render("{{ k1 | to_json_string }}", k1={"b": 1, "a": [1, 2]}) == '{"b": 1,"a": [1,2]}'
    assert render("{{ k1 | to_json_string(separators=[', ', ': ']) }}", k1=[1, 2]) == "[1, 2]"
    assert render("{{ k1 | to_json_string(sort_keys=True) }}", k1={"b": 1, "a": 2}) == '{"a": 2,"b": 1}'
    assert render("{{ k1 | to_json_string(indent=2) }}", k1={"a": 1}) == '{\n  "a": 1\n}'


def test_to_yaml_string() -> None:
    rendered = render("{{ k1 | to_yaml_string }}", k1=OBJ)
    assert yaml.safe_load(rendered) == OBJ
    assert render("{{ k1 | to_yaml_string }}", k1={"a": [1, 2]}) == "a:\n- 1\n- 2\n"
    assert render("{{ k1 | to_yaml_string }}", k1={"a": "é"}) == "a: é\n"
    assert render("{{ k1 | to_yaml_string(indent=4) }}", k1={"a": {"b": 1}}) == "a:\n    b: 1\n"


def test_from_json_and_yaml_string() -> None:
    assert render("{{ (k1 | from_json_string).c.f }}", k1=json.dumps(OBJ)) == "1"
    assert render("{{ (k1 | from_yaml_string).a }}", k1="a: [1, 2]") == "[1, 2]"


def test_to_complex_and_json_escape() -> None:
    assert render("{{ k1 | to_complex }}", k1=[1, "x"]) == '[1, "x"]'
    assert render("{{ k1 | json_escape }}", k1='foo "bar"\n\tbaz') == 'foo \\"bar\\"\\n\\tbaz'
    assert render("{{ k1 | json_escape }}", k1="\\") == "\\\\"


def test_jsonpath_query() -> None:
    obj = {"people": [{"first": "James", "last": "d"}, {"first": "Jacob", "last": "e"}]}
    assert render("{{ obj | jsonpath_query('people[*].first') }}", obj=obj) == "['James', 'Jacob']"
    assert render("{{ obj | jsonpath_query('people[0].last') }}", obj=obj) == "['d']"
    assert render("{{ obj | jsonpath_query('nothing.here') }}", obj=obj) == "None"
    # jsonpath_ng.ext grammar (filters) is available
    assert render("{{ obj | jsonpath_query('$.people[?(@.last == \"e\")].first') }}", obj=obj) == "['Jacob']"


# ---------------------------------------------------------------------------------------------
# Regex filters
# ---------------------------------------------------------------------------------------------


def test_regex_match() -> None:
    assert render('{{ k1 | regex_match("x") }}', k1="xyz") == "True"
    assert render('{{ k1 | regex_match("y") }}', k1="xyz") == "False"
    semver_like = '{{ k1 | regex_match("^v(\\\\d+\\\\.)?(\\\\d+\\\\.)?(\\\\*|\\\\d+)$") }}'
    assert render(semver_like, k1="v0.10.1") == "True"
    assert render(semver_like, k1="v0.10.x") == "False"
    assert render('{{ k1 | regex_match("X") }}', k1="xyz") == "False"
    assert render('{{ k1 | regex_match("X", ignorecase=True) }}', k1="xyz") == "True"
    assert render('{{ k1 | regex_match("12") }}', k1=123) == "True"


def test_regex_search() -> None:
    assert render('{{ k1 | regex_search("x") }}', k1="xyz") == "True"
    assert render('{{ k1 | regex_search("y") }}', k1="xyz") == "True"
    assert render('{{ k1 | regex_search("q") }}', k1="xyz") == "False"


def test_regex_replace() -> None:
    assert render('{{ k1 | regex_replace("x", "y") }}', k1="xyz") == "yyz"
    assert (
        render('{{ k1 | regex_replace("(blue|white|red)", "color") }}', k1="blue socks and red shoes")
        == "color socks and color shoes"
    )
    assert render('{{ k1 | regex_replace("X", "y", ignorecase=True) }}', k1="xyz") == "yyz"


def test_regex_substring() -> None:
    text = "hello this is 127.0.0.1, your home"
    assert render('{{ k1 | regex_substring("(127.0.0.1)") }}', k1=text) == "127.0.0.1"
    assert render('{{ k1 | regex_substring("(\\\\d+)", 1) }}', k1="a1b22c333") == "22"
    assert render('{{ k1 | regex_substring("127.0.0.1") }}', k1=text) == "127.0.0.1"
    with pytest.raises(TemplateRenderError) as info:
        render('{{ k1 | regex_substring("(127.0.0.2)") }}', k1=text)
    assert isinstance(info.value.__cause__, IndexError)


# ---------------------------------------------------------------------------------------------
# Time, none, path filters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (12345, "3h25m45s"),
        (1, "1s"),
        (65, "1m5s"),
        (3605, "1h0m5s"),
        (86400, "1d0h0m0s"),
        (365 * 86400 + 61, "1y0d0h1m1s"),
        (40 * 86400, "40d0h0m0s"),
        (59.6, "1m0s"),
        (0.5, "500000\u03bcs"),
        (0.000001, "1\u03bcs"),
    ],
)
def test_to_human_time_from_seconds(seconds: float, expected: str) -> None:
    assert render("{{ k1 | to_human_time_from_seconds }}", k1=seconds) == expected


def test_to_human_time_from_seconds_rejects_strings() -> None:
    with pytest.raises(TemplateRenderError):
        render("{{ k1 | to_human_time_from_seconds }}", k1="stuff")


def test_use_none() -> None:
    assert NONE_MAGIC_VALUE == "%*****__%NONE%__*****%"
    assert render("{{ k1 | use_none }}", k1=None) == NONE_MAGIC_VALUE
    assert render("{{ k1 | use_none }}", k1="x") == "x"
    assert render("{{ k1 | use_none }}", k1=0) == "0"


def test_basename_and_dirname() -> None:
    assert render("{{ k1 | basename }}", k1="/some/path/to/file.txt") == "file.txt"
    assert render("{{ k1 | dirname }}", k1="/some/path/to/file.txt") == "/some/path/to"
    assert render("{{ k1 | basename }}", k1="/some/path/to/dir/") == ""


# ---------------------------------------------------------------------------------------------
# Version filters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_name", "results"),
    [
        ("version_compare", ["-1", "1", "0"]),
        ("version_more_than", ["False", "True", "False"]),
        ("version_less_than", ["True", "False", "False"]),
        ("version_equal", ["False", "False", "True"]),
    ],
)
def test_version_comparisons(filter_name: str, results: list[str]) -> None:
    text = "{{ version | " + filter_name + "('0.10.0') }}"
    actual = [render(text, version=v) for v in ("0.9.0", "0.10.1", "0.10.0")]
    assert actual == results


@pytest.mark.parametrize(
    ("expr", "version", "expected"),
    [
        (">0.10.0", "0.10.1", "True"),
        (">0.10.0", "0.1.1", "False"),
        ("<0.10.0", "0.1.0", "True"),
        ("<0.10.0", "1.1.0", "False"),
        ("==0.10.0", "0.10.0", "True"),
        ("==0.10.0", "0.10.1", "False"),
        (">=1.0.0", "1.0.0", "True"),
    ],
)
def test_version_match(expr: str, version: str, expected: str) -> None:
    assert render("{{ version | version_match(expr) }}", version=version, expr=expr) == expected


def test_version_bumps_and_strip() -> None:
    assert render("{{ v | version_bump_major }}", v="0.10.1") == "1.0.0"
    assert render("{{ v | version_bump_minor }}", v="0.10.1") == "0.11.0"
    assert render("{{ v | version_bump_patch }}", v="0.10.1") == "0.10.2"
    assert render("{{ v | version_strip_patch }}", v="0.10.1") == "0.10"


def test_version_filter_rejects_invalid_version() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render("{{ v | version_bump_major }}", v="1.2")
    assert isinstance(info.value.__cause__, ValueError)


# ---------------------------------------------------------------------------------------------
# Datastore lookups
# ---------------------------------------------------------------------------------------------


def kv_context(store: dict[str, str]) -> dict[str, object]:
    return {"st2kv": {"system": KVNamespace(store.get)}}


def test_kv_present_missing_and_dotted_keys() -> None:
    store = {"k": "v", "a.b": "nested", "n": "5"}
    ctx = kv_context(store)
    assert render_template("{{ st2kv.system.k }}", ctx) == "v"
    assert render_template("[{{ st2kv.system.missing }}]", ctx) == "[]"
    assert render_template("{{ st2kv.system.a.b }}", ctx) == "nested"
    assert render_template("{{ st2kv.system['a']['b'] }}", ctx) == "nested"
    assert render_template("{{ st2kv.system.k == 'v' }} {{ st2kv.system.k | length }}", ctx) == "True 1"
    assert render_template("{{ st2kv.system.n | int + 1 }}", ctx) == "6"
    assert render_template("{{ st2kv.system.k | upper }}", ctx) == "V"
    assert render_template("{% if st2kv.system.missing %}x{% else %}empty{% endif %}", ctx) == "empty"


def test_kv_lookup_happens_at_access_time() -> None:
    store: dict[str, str] = {}
    ctx = kv_context(store)
    assert render_template("{{ st2kv.system.k }}", ctx) == ""
    store["k"] = "later"
    assert render_template("{{ st2kv.system.k }}", ctx) == "later"


def test_kv_key_named_like_a_str_method_is_a_key_in_templates() -> None:
    ctx = kv_context({"app.title": "Squall", "app": "x"})
    assert render_template("{{ st2kv.system.app.title }}", ctx) == "Squall"


def test_kv_from_json_string() -> None:
    ctx = kv_context({"cfg": json.dumps({"hosts": ["a", "b"], "port": 22})})
    assert render_template("{{ (st2kv.system.cfg | from_json_string).hosts[1] }}", ctx) == "b"
    assert render_template("{{ (st2kv.system.cfg | from_json_string).port + 1 }}", ctx) == "23"


def test_kv_value_in_yaml_and_json_filters() -> None:
    ctx = {**kv_context({"k": "v"})}
    assert render_template("{{ {'x': st2kv.system.k} | to_yaml_string }}", ctx) == "x: v\n"
    assert render_template("{{ {'x': st2kv.system.k} | to_json_string }}", ctx) == '{"x": "v"}'


def test_user_scope_namespace_with_prefixing_getter() -> None:
    store = {"alice:token": "a-secret", "bob:token": "b-secret", "token": "system"}

    def user_getter(user: str):  # type: ignore[no-untyped-def]
        return lambda key: store.get(f"{user}:{key}")

    ctx = {
        "st2kv": {
            "system": KVNamespace(store.get),
            "user": KVNamespace(user_getter("alice"), label="st2kv.user"),
        }
    }
    assert render_template("{{ st2kv.user.token }}/{{ st2kv.system.token }}", ctx) == "a-secret/system"


def test_kv_underscore_attributes_are_not_keys_and_are_blocked() -> None:
    seen: list[str] = []

    def getter(key: str) -> str | None:
        seen.append(key)
        return "v"

    ns = KVNamespace(getter)
    with pytest.raises(AttributeError):
        ns._private  # noqa: B018
    with pytest.raises(AttributeError):
        ns.k._private  # noqa: B018
    assert seen == ["k"]
    with pytest.raises(TemplateRenderError) as info:
        render_template("{{ st2kv.system.k.__class__ }}", {"st2kv": {"system": ns}})
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)


def test_kv_value_is_a_str_and_copies() -> None:
    value = KVNamespace({"a.b": "x"}.get).a.b
    assert isinstance(value, KVValue)
    assert isinstance(value, str)
    assert value == "x"
    assert str(value) == "x" and type(str(value)) is str
    clone = copy.deepcopy(value)
    assert clone == "x" and isinstance(clone, KVValue)
    assert clone.c == ""


def test_kv_prefix_starts_below_a_key_path() -> None:
    ns = KVNamespace({"pack.cfg.host": "h"}.get, prefix="pack.cfg")
    assert render_template("{{ ns.host }}", {"ns": ns}) == "h"


# ---------------------------------------------------------------------------------------------
# decrypt_kv
# ---------------------------------------------------------------------------------------------


def fake_decrypt(ciphertext: str) -> str:
    return f"plain({ciphertext})"


def test_decrypt_kv_uses_the_given_callable() -> None:
    env = build_environment(decrypt=fake_decrypt)
    ctx = kv_context({"k": "CIPHER"})
    assert render_template("{{ st2kv.system.k | decrypt_kv }}", ctx, env) == "plain(CIPHER)"
    assert render_template("{{ 'RAW' | decrypt_kv }}", {}, env) == "plain(RAW)"


def test_decrypt_kv_missing_key_names_the_item() -> None:
    env = build_environment(decrypt=fake_decrypt)
    with pytest.raises(TemplateRenderError) as info:
        render_template("{{ st2kv.system.k | decrypt_kv }}", kv_context({}), env)
    assert 'Referenced datastore item "st2kv.system.k" doesn\'t exist or it contains an empty string' in str(
        info.value
    )


def test_decrypt_kv_missing_user_key_names_user_scope() -> None:
    env = build_environment(decrypt=fake_decrypt)
    ctx = {"st2kv": {"user": KVNamespace(lambda key: None, label="st2kv.user")}}
    with pytest.raises(TemplateRenderError, match=r'"st2kv\.user\.a\.b"'):
        render_template("{{ st2kv.user.a.b | decrypt_kv }}", ctx, env)


def test_decrypt_kv_without_decrypt_configured() -> None:
    with pytest.raises(TemplateRenderError, match="not configured"):
        render_template("{{ st2kv.system.k | decrypt_kv }}", kv_context({"k": "CIPHER"}))


# ---------------------------------------------------------------------------------------------
# render_value / render_values
# ---------------------------------------------------------------------------------------------


def test_render_value_keeps_types_of_whole_references() -> None:
    assert render_value({"x": "{{n}}"}, {"n": 5}) == {"x": 5}
    context = {"n": 5, "items": [1, {"a": None}], "flag": True}
    assert render_value(["{{items}}", "{{flag}}", "n={{ n }}"], context) == [[1, {"a": None}], True, "n=5"]
    # Only the exact "{{identifier}}" form keeps the type; spaced forms render as text.
    assert render_value({"x": "{{ n }}"}, {"n": 5}) == {"x": "5"}


def test_render_value_returns_original_object_when_unchanged() -> None:
    plain = {"x": "no template", "y": [1, 2]}
    assert render_value(plain, {}) is plain
    text = "just text"
    assert render_value(text, {}) is text
    for scalar in (5, 1.5, True, None):
        assert render_value(scalar, {"x": 1}) is scalar
    # Rendered, but the output is identical to the input: the original object comes back.
    quine = {"x": "{{ x }}"}
    assert render_value(quine, {"x": "{{ x }}"}) is quine


def test_render_value_plain_string_returns_original_when_render_is_identical() -> None:
    class Marked(str):
        pass

    value = Marked("{{ x }}")
    assert render_value(value, {"x": "{{ x }}"}) is value
    changed = render_value(value, {"x": "other"})
    assert changed == "other" and type(changed) is str


def test_render_value_dict_keys_and_literal_braces() -> None:
    assert render_value({"{{ k }}": "v"}, {"k": "key"}) == {"key": "v"}
    assert render_value({"x": "{{ '{{' }}"}, {}) == {"x": "{{"}


def test_render_value_renders_strings_and_raises_on_errors() -> None:
    assert render_value("hello {{ name }}", {"name": "bob"}) == "hello bob"
    with pytest.raises(TemplateRenderError):
        render_value({"x": "{{ missing }}"}, {})


def test_render_values_adds_context() -> None:
    context = {"a": 1, "b": "two"}
    mapping = {
        "p1": "{{ __context.a }}",
        "p2": "{{ __context['b'] }}-{{ b }}",
        "p3": 7,
        "p4": {"nested": "{{a}}"},
    }
    assert render_values(mapping, context) == {"p1": "1", "p2": "two-two", "p3": 7, "p4": {"nested": 1}}


def test_render_values_real_context_wins_over_dunder_context() -> None:
    assert render_values({"p": "{{ __context }}"}, {"__context": "mine"}) == {"p": "mine"}


def test_render_values_error_names_the_parameter() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render_values({"good": "{{ a }}", "bad": "{{ nope }}"}, {"a": 1})
    assert info.value.key == "bad"
    assert "'bad'" in str(info.value)
    assert isinstance(info.value.__cause__, jinja2.exceptions.UndefinedError)


def test_plain_text_renders_as_jinja_would_render_it() -> None:
    """Text without a brace skips the render; what Jinja changes in such text must still change."""
    assert render_template("pong", {}) == "pong"
    assert render_template("a\r\nb", {}) == "a\nb"
    assert render_template("done\n", {}) == "done"


# ---------------------------------------------------------------------------------------------
# Look-up templates rendered without Jinja's render (`_lookups`, `_looked_up`)
# ---------------------------------------------------------------------------------------------

LOOKUP_CONTEXT = {
    "execution": {"parameters": {"service": "nginx", "host": "web1", "ttl": 30, "none": None, "on": True,
                                 "items": "an item named items", "nested": {"k": [1, "two"]}},
                  "result": ["a", "list"], "status": "succeeded", "text": "a str"},
    "alias": {},
}


@pytest.mark.parametrize("template", [
    "bounced {{ execution.parameters.service }} on {{ execution['parameters'].host }}",
    "{{ execution.parameters.ttl }} {{ execution.parameters.none }} {{ execution.parameters.on }}",
    "{{ execution.parameters.nested }} {{ execution.parameters }}",
    "{{ execution.parameters['items'] }}",  # an item by [...], though dicts have an `items` attribute
    "{{execution.status}}\r\nline two\n",  # line ends normalised, the last newline dropped, as Jinja does
    "{{ execution }}",
    "{{ alias }} and no look-up at all",
])
def test_a_lookup_template_renders_as_jinja_renders_it(template: str) -> None:
    env = build_environment()
    jinja = env.from_string(template)  # made outside the cache: no look-up plan, Jinja's own render
    assert jinja.squall_lookups is None
    assert compiled(env, template).squall_lookups is not None
    assert render_template(template, LOOKUP_CONTEXT) == jinja.render(LOOKUP_CONTEXT)


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ execution.parameters.items }}", "<built-in method items"),  # dict's attribute, as Jinja finds it
    ("{{ execution.result.count }}", "<built-in method count"),  # not a dict: Jinja's attribute look-up
    ("{{ execution.text.upper }}", "<built-in method upper"),
    ("{{ range }}", "<function safe_range"),  # a global, not a variable of the render
])
def test_a_lookup_it_cannot_be_sure_of_goes_to_jinja(template: str, expected: str) -> None:
    env = build_environment()
    assert compiled(env, template).squall_lookups is not None
    rendered = render_template(template, LOOKUP_CONTEXT)
    assert rendered.startswith(expected)
    assert rendered == env.from_string(template).render(LOOKUP_CONTEXT)


@pytest.mark.parametrize("template", ["{{ execution.parameters.missing }}", "{{ nothing.here }}",
                                      "{{ execution.status.missing }}x"])
def test_a_lookup_that_finds_nothing_fails_as_jinja_fails(template: str) -> None:
    env = build_environment()
    try:
        env.from_string(template).render(LOOKUP_CONTEXT)
    except jinja2.UndefinedError as exc:
        error = str(exc)  # e.g. "'dict object' has no attribute 'missing'"
    else:
        raise AssertionError(f"{template} renders in Jinja")
    with pytest.raises(TemplateRenderError, match=re.escape(f"UndefinedError: {error}")):
        render_template(template, LOOKUP_CONTEXT)


@pytest.mark.parametrize("template", ["{{ execution.parameters.service | upper }}", "{{ execution.status == 'x' }}",
                                      "{% if execution %}{{ execution.status }}{% endif %}",
                                      "{{ execution.parameters[execution.status] }}", "{{ execution.result[0] }}",
                                      "{{ f() }}", "{{ self }}"])
def test_anything_but_text_and_lookups_is_left_to_jinja(template: str) -> None:
    assert compiled(build_environment(), template).squall_lookups is None


def test_a_lookup_template_renders_without_a_jinja_context(monkeypatch: pytest.MonkeyPatch) -> None:
    template = "bounced {{ execution.parameters.service }} on {{ execution.parameters.host }}"
    env = build_environment()
    compiled(env, template)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered through Jinja's context")

    monkeypatch.setattr(type(compiled(env, template)), "new_context", refuse)
    assert render_template(template, LOOKUP_CONTEXT) == "bounced nginx on web1"
    with pytest.raises(TemplateRenderError, match="rendered through Jinja's context"):
        render_template("{{ execution.parameters.missing }}", LOOKUP_CONTEXT)  # what it cannot render goes there


def test_a_lookup_template_keeps_to_the_output_limit() -> None:
    from engine.config import TemplateLimits
    from engine.templates import TemplateLimitError, configure_limits, current_limits

    before = current_limits()
    configure_limits(TemplateLimits(max_output_chars=200))
    try:
        context = {"a": {"b": "x" * 150}}
        assert render_template("{{ a.b }}", context) == "x" * 150
        for template in ("{{ a.b }}{{ a.b }}", "{{ a.b }}" + "y" * 60, "{{ a }}"):
            with pytest.raises(TemplateLimitError, match="200 characters"):
                render_template(template, {"a": {"b": "x" * 150}} if template != "{{ a }}" else {"a": {"b": "x" * 250}})
    finally:
        configure_limits(before)


def test_an_environment_that_changes_what_a_value_writes_keeps_jinjas_render() -> None:
    """The shell runner's overlay quotes each {{ }} value through `finalize`: a look-up template in it
    must never be written as plain text."""
    from engine.runners.shell_template import render_shell_command

    overlay = build_environment().overlay(finalize=lambda value: f"<{value}>")
    assert compiled(overlay, "{{ a.b }} and {{ a['b'] }}").squall_lookups is None
    assert render_template("{{ a.b }} and {{ a['b'] }}", {"a": {"b": "x"}}, env=overlay) == "<x> and <x>"
    hostile = "web; touch pwned"
    command, variables = render_shell_command("echo {{ trigger.body.host }}", {"trigger": {"body": {"host": hostile}}})
    assert hostile not in command and list(variables.values()) == [hostile]  # a variable's value, never bash text


def test_a_lookup_template_is_given_up_on_the_loop_past_the_brief_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import templates
    from engine.templates import TooLongForTheLoop, briefly

    template = "hello {{ execution.parameters.service }}"
    assert compiled(build_environment(), template).squall_lookups is not None
    assert briefly(render_template, template, LOOKUP_CONTEXT) == "hello nginx"
    monkeypatch.setattr(templates, "BRIEF_SECONDS", 0.0)
    with pytest.raises(TooLongForTheLoop):
        briefly(render_template, template, LOOKUP_CONTEXT)


# ---------------------------------------------------------------------------------------------
# Work one expression does at once: comparisons, big-number division, what a render makes in all
# ---------------------------------------------------------------------------------------------


class _Probe:
    """A list item whose comparisons and hashes are counted: a bomb must be refused before Python
    compares anything, and the count says so without timing the render."""

    calls = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        _Probe.calls += 1
        return isinstance(other, _Probe) and other.value == self.value

    def __lt__(self, other: _Probe) -> bool:
        _Probe.calls += 1
        return self.value < other.value

    def __hash__(self) -> int:
        _Probe.calls += 1
        return self.value


def _refused(template: str, context: dict[str, object] | None = None) -> str:
    """The reason a render was refused for a size or work limit (never for the time limit)."""
    from engine.templates import TemplateLimitError

    with pytest.raises(TemplateLimitError) as caught:
        render_template(template, context or {})
    assert "templates.max_output_chars" in caught.value.reason, caught.value.reason
    assert "templates.max_seconds" not in caught.value.reason
    return caught.value.reason


def _peak_bytes(render_it: Callable[[], object]) -> int:
    """What `render_it` allocated at most, by tracemalloc (what a refused bomb made before it stopped)."""
    tracemalloc.start()
    try:
        render_it()
    except TemplateRenderError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@contextlib.contextmanager
def _limits(max_output_chars: int) -> Iterator[None]:
    from engine.config import TemplateLimits
    from engine.templates import configure_limits, current_limits

    before = current_limits()
    configure_limits(TemplateLimits(max_output_chars=max_output_chars))
    try:
        yield
    finally:
        configure_limits(before)


def test_in_over_a_huge_list_is_refused_before_it_compares() -> None:
    """`([0]*999999 + [1]) in [[0]*1000000]*n` held the GIL in one C comparison for 10 s past every
    deadline; each list passed the size checks, which measured only lengths."""
    bomb = "{{ ([0]*999999 + [1]) in [[0]*1000000]*trigger.body.n }}"
    reason = _refused(bomb, {"trigger": {"body": {"n": 15000}}})
    assert "comparing with in" in reason and "1048576" in reason
    _Probe.calls = 0
    needle = [_Probe(0)] * 999 + [_Probe(1)]
    assert "comparing with not in" in _refused("{{ needle not in [row] * 3000 }}",
                                              {"needle": needle, "row": [_Probe(0)] * 1000})
    assert "comparing with in" in _refused("{{ needle in {} }}", {"needle": (_Probe(0),) * 1100000})  # the hash
    assert _Probe.calls == 0
    # an iterator is gone through as Python goes through it, up to the first match, so its items are
    # compared as they come: refused once that passes the limit, never more than the limit's worth
    assert "comparing with in" in _refused("{{ needle in rows|select }}", {"needle": needle,
                                                                           "rows": [[_Probe(0)] * 1000] * 3000})
    assert _Probe.calls <= 1048576


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_equality_and_order_of_two_huge_values_are_refused_before_they_compare(op: str) -> None:
    _Probe.calls = 0
    context = {"left": [[_Probe(0)] * 1000] * 1100, "right": [[_Probe(0)] * 1000] * 1100}
    assert f"comparing with {op}" in _refused(f"{{{{ left {op} right }}}}", context)
    chained = f"{{{{ 0 < 1 < 2 and left[:1] == left[:1] and (left {op} right {op} left) }}}}"
    assert f"comparing with {op}" in _refused(chained, context)
    test = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[op]
    assert "1048576" in _refused(f"{{{{ left is {test}(right) }}}}", context)  # Jinja's tests compare too
    assert "1048576" in _refused(f"{{{{ [left]|select('{test}', right)|list }}}}", context)
    assert _Probe.calls == 0


def test_big_integer_floor_division_and_remainder_are_refused() -> None:
    """`(3**1500000) // (7**400000)` took 1.8 s in one C call: `//` was not checked, `%` only for text."""
    for template in ("{{ ((3**1500000) // (7**400000)) > 1 }}", "{{ ((3**1500000) % (7**400000)) > 1 }}",
                     "{{ (3**1500000) is divisibleby(7**400000) }}"):
        with pytest.raises(TemplateRenderError) as caught:
            render_template(template, {})
        reason = str(caught.value)
        assert "4300 digits" in reason and "digit" in reason, reason
    # a small divisor, or a small quotient, is quick whatever the size: not refused
    assert render_template("{{ (3**100000) // 3 == 3**99999 }} {{ (3**100000) % (3**99999 + 1) > 0 }}", {}) \
        == "True True"
    assert render_template("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7.5 // 2 }} {{ 10 is divisibleby 5 }}", {}) \
        == "3 -4 1 3.0 True"


@pytest.mark.parametrize("template", [
    "{{ (['x' * 1000000] * 20)|sort|length }}",
    "{{ (['x' * 1000000] * 20)|unique|list|length }}",
    "{{ (['x' * 1000000] * 20)|max }}",
    "{{ (['x' * 1000000] * 20)|min|length }}",
    "{{ ((['x' * 1000000] * 20)|map('string'))|sort(case_sensitive=true)|length }}",
    "{{ ([{'k': 'x' * 1000000}] * 20)|groupby('k')|length }}",
])
def test_filters_that_compare_items_weigh_their_input_first(template: str) -> None:
    """sort, unique, min and max lowercase and compare every item in C: twenty references to one
    long string passed a length check and became twenty copies compared in one call."""
    reason = _refused(template)
    assert "filter" in reason and "1048576" in reason
    assert _peak_bytes(lambda: render_template(template, {})) < 4 * 1024 * 1024


def test_what_one_render_makes_in_all_is_bounded() -> None:
    """Each list `map('list')` made passed its own size check, and nothing counted them: a million of
    them was gigabytes until MemoryError."""
    bomb = "{{ ([[0]*1000000]*1000000)|map('list')|list|length }}"
    reason = _refused(bomb)
    assert "in all" in reason and "8388608" in reason
    assert _peak_bytes(lambda: render_template(bomb, {})) < 200 * 1024 * 1024
    kept = ("{% set ns = namespace(l=[]) %}{% for i in range(100) %}{{ ns.l.append(s ~ i) or '' }}{% endfor %}"
            "{{ ns.l|length }}")
    assert "in all" in _refused(kept, {"s": "x" * 1000000})
    with _limits(2048):
        for template in ("{{ ([[0]*2000]*2000)|map('list')|list|length }}",
                         "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}{{ ns.l.append(l[1:]) or '' }}"
                         "{% endfor %}{{ ns.l|length }}",
                         "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}{{ ns.l.append(l + [i]) or '' }}"
                         "{% endfor %}{{ ns.l|length }}"):
            with pytest.raises(TemplateRenderError, match="16384 characters or list items") as caught:
                render_template(template, {"l": [0] * 2000})
            assert "in all" in str(caught.value)
            assert _peak_bytes(lambda t=template: render_template(t, {"l": [0] * 2000})) < 1024 * 1024
        assert render_template("{{ (([0]*2000)|list|length) + (([1]*2000)|list|length) }}", {}) == "4000"


ORDINARY_COMPARISONS = [
    "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 3 > 2 >= 2 == 2 != 1 }} {{ 2 < 1 < missing }} {{ (1 < 2) < 3 }}",
    "{{ 'a' in 'abc' }} {{ 'z' not in 'abc' }} {{ 2 in [1, 2] }} {{ 3 not in (1, 2) }} {{ 'k' in {'k': 1} }}",
    "{{ [1, 2] == [1, 2] }} {{ (1, 2) < (1, 3) }} {{ {'a': 1} != {'a': 2} }} {{ [1] in [[1], [2]] }} {{ x == y }}",
    "{% if x is defined and x > 1 %}big{% endif %} {{ y if y == 'b' else 'c' }} {{ 'error' in text }}",
    "{{ [1, 2, 3]|select('equalto', 2)|list }} {{ [1, 2, 3]|reject('lt', 2)|list }} {{ 2 is in [1, 2] }}"
    "{{ [{'a': 1}, {'a': 2}]|selectattr('a', 'ge', 2)|list }} {{ 4 is divisibleby 2 }} {{ 'b' is gt('a') }}",
    "{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'a']|sort }} {{ [1, 2, 2, 3]|unique|list }} {{ [4, 9, 1]|max }}"
    "{{ ['b', 'A']|min }} {{ {'b': 1, 'a': 2}|dictsort }} {{ [{'k': 2}, {'k': 1}]|sort(attribute='k') }}",
    "{{ [{'k': 'a', 'v': 1}, {'k': 'a', 'v': 2}]|groupby('k') }} {{ xs|map('int')|list == [1, 2] }}"
    "{{ 1 in xs|map('int') }} {{ xs|map('int')|max }} {{ lines|sort|first }} {{ 7 % 3 }}-{{ 9 // 2 }}",
    "{% for x in xs if x > '1' %}{{ x }}{% endfor %}{% macro m(a=1 < 2 < 3) %}{{ a }}{% endmacro %}{{ m() }}"
    "{% set ns = namespace(n=0) %}{% for i in range(200) if i is odd and i > 100 %}{% set ns.n = ns.n + i %}"
    "{% endfor %}{{ ns.n }}",
]


@pytest.mark.parametrize("template", ORDINARY_COMPARISONS)
def test_ordinary_comparisons_and_sorts_render_as_jinja_renders_them(template: str) -> None:
    context = {"x": 2, "y": "b", "xs": ["1", "2"], "text": "ok\n" * 400000 + "error", "lines": ["b", "a"] * 1000}
    reference = SandboxedEnvironment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    assert render_template(template, context) == reference.from_string(template).render(context)


def test_undefined_values_in_comparisons_fail_as_jinja_fails() -> None:
    reference = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    for template in ("{{ missing == 1 }}", "{{ 1 in missing }}", "{{ 1 < 2 < missing }}", "{{ missing|sort }}"):
        with pytest.raises(jinja2.UndefinedError) as expected:
            reference.from_string(template).render()
        with pytest.raises(TemplateRenderError, match=re.escape(str(expected.value))):
            render_template(template, {})


def test_stackstorm_filters_and_comparisons_on_big_context_values_are_unchanged() -> None:
    """What a payload or a result already holds is compared in C as before: only values a template
    multiplies past the limit are refused."""
    context = {"stdout": "line\n" * 1000000 + "error", "ids": list(range(500000)),
               "rows": [{"n": i} for i in range(3000)]}
    template = ("{{ 'error' in stdout }} {{ 499999 in ids }} {{ ids == ids }} {{ rows|sort(attribute='n')|first }}"
                "{{ '1.2.3'|version_more_than('1.2.0') }} {{ 'abc'|regex_match('a') }} {{ {'a': [1]}|to_json_string }}"
                " {{ ids|max }} {{ (rows|map(attribute='n')|list)[:3] == [0, 1, 2] }}")
    assert render_template(template, context) == 'True True True {\'n\': 0}True True {"a": [1]} 499999 True'


def test_methods_and_lookups_that_compare_or_hash_are_weighed_as_in_is() -> None:
    """`list.index`, `list.count` and `loop.changed` compare as `in` and `==` do, and a tuple key is
    hashed whole: the same bombs by another name."""
    _Probe.calls = 0
    needle = [_Probe(0)] * 999 + [_Probe(1)]
    context = {"needle": needle, "row": [_Probe(0)] * 1000, "key": (_Probe(0),) * 1100000, "d": {}}
    for template in ("{{ ([row] * 3000).index(needle) }}", "{{ ([row] * 3000).count(needle) }}",
                     "{{ d.get(key) }}", "{{ d[key] is defined }}", "{{ {}.setdefault(key) }}",
                     "{% for i in range(3) %}{{ loop.changed([row] * 3000) }}{% endfor %}"):
        assert "1048576" in _refused(template, context), template
    assert _Probe.calls == 0
    ordinary = ("{{ [1, 2, 3].index(2) }} {{ [1, 2, 2].count(2) }} {{ {'a': 1}.get('a') }} {{ d[(1, 2)] }}"
                "{% for x in [1, 1, 2] %}{{ loop.changed(x) }}{% endfor %}")
    assert render_template(ordinary, {"d": {(1, 2): "t"}}) == "1 2 1 tTrueFalseTrue"


@pytest.mark.parametrize("template", [
    "{{ (1).to_bytes(200000000, 'big')|length }}",
    "{{ (1).to_bytes(length=200000000)|length }}",
    "{{ 'x'.encode().ljust(200000000)|length }}",
    "{{ 'x'.encode().zfill(200000000)|length }}",
])
def test_bytes_a_number_or_text_makes_are_measured_before_they_are_made(template: str) -> None:
    """`to_bytes` and the bytes widths were measured after the fact, once the bytes existed."""
    assert "1048576 characters" in _refused(template)
    assert _peak_bytes(lambda: render_template(template, {})) < 4 * 1024 * 1024


def test_text_built_line_by_line_counts_only_what_each_step_adds() -> None:
    """`ns.out = ns.out ~ line` counted the whole text at each step toward what a render makes in all:
    40 KB of lines cost 8 MB and were refused; a copy kept besides its source is still counted whole."""
    built = ("{% set ns = namespace(out='', rows=[]) %}{% for line in lines %}{% set ns.out = ns.out ~ '> ' ~ line"
             " ~ '\\n' %}{% set ns.rows = ns.rows + [line] %}{% endfor %}{{ ns.out|length }} {{ ns.rows|length }}")
    lines = ["x" * 39] * 3000
    assert render_template(built, {"lines": lines}) == "126000 3000"
    kept = ("{% set ns = namespace(out='', t=()) %}{% for i in range(20) %}{% set ns.t = (ns.t, ns.out) %}"
            "{% set ns.out = ns.out ~ s %}{% endfor %}{{ ns.out|length }}")
    assert "in all" in _refused(kept, {"s": "x" * 50000})


def test_filters_that_compare_by_an_attribute_weigh_only_that_attribute() -> None:
    """sort, sum, max, unique and groupby by an attribute, and dictsort by key, weighed whole rows: an
    API's 1,300 rows with a long field each were refused though only a short name is compared."""
    pods = [{"name": f"pod-{i:05d}", "ns": ("kube", "web")[i % 2], "n": i % 7, "spec": "s" * 800} for i in range(1300)]
    template = ("{{ (pods|sort(attribute='name,ns')|first).name }} {{ pods|sum(attribute='n') }}"
                " {{ (pods|max(attribute='n')).name }} {{ pods|unique(attribute='ns')|map(attribute='ns')|join(',') }}"
                " {% for ns, group in pods|groupby('ns') %}{{ ns }}={{ group|length }} {% endfor %}"
                "{{ (big|dictsort|first)[0] }}")
    assert render_template(template, {"pods": pods, "big": {"body": "x" * 1100000, "a": 1}}) \
        == "pod-00000 3895 pod-00006 kube,web kube=650 web=650 a"
    assert "dictsort filter" in _refused("{{ big|dictsort(by='value') }}", {"big": {"a": ["x" * 600000] * 2}})
    assert "sort filter" in _refused("{{ rows|sort(attribute='k') }}", {"rows": [{"k": "x" * 600000}] * 2})


def test_comparing_tests_and_dictsort_fail_as_jinja_fails() -> None:
    """A comparing test without its argument leaked the sandbox's wrapper in its error, and dictsort
    of what has no `.items` said 'not iterable' about a list it made."""
    reference = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    context = {"l": [3, 1, 2], "n": None, "i": 4}
    for template in ("{{ i is eq }}", "{{ i is lt }}", "{{ l|select('eq')|list }}", "{{ n|dictsort }}",
                     "{{ i|dictsort }}", "{{ l|map('int')|dictsort }}"):
        with pytest.raises((TypeError, AttributeError)) as expected:
            reference.from_string(template).render(context)
        with pytest.raises(TemplateRenderError, match=re.escape(str(expected.value))):
            render_template(template, context)


#: `in` over an iterator, then what is left of it: Python goes through it only up to the first match,
#: so `1 in g` then `2 in g` finds both, and the items after the match are still there.
ITERATOR_CONTAINMENT = [
    "{% set g = [1, 2, 3]|map('int') %}{{ 1 in g }} {{ 2 in g }} {{ g|list }}",
    "{% set g = [1, 2, 3]|map('int') %}{{ 2 in g }} {{ 1 in g }} {{ g|list }}",
    "{% set g = [1, 2, 3]|select %}{{ 1 in g }} {{ 3 in g }} {{ 3 in g }}",
    "{% set g = [1, 2, 3]|reject('eq', 9) %}{{ 5 in g }} {{ g|list }}",
    "{% set g = [{'a': 1}, {'a': 2}, {'a': 0}]|selectattr('a') %}{{ {'a': 1} in g }} {{ g|list }}",
    "{% set g = [{'a': 0}, {'a': 1}, {'a': None}]|rejectattr('a') %}{{ {'a': 0} in g }} {{ g|list }}",
    "{% set g = [1, 2, 3, 4]|map('int') %}{{ 1 is in g }} {{ 3 not in g }} {{ g|list }}",
    "{% set g = [[1], [2], [3]]|map('list') %}{{ [2] in g }} {{ g|list }}",
    "{% set g = ['a', 'b']|map('upper') %}{{ 'A' in g }} {{ g|first }}",
    "{% set g = [1, 2, 3]|map('int') %}{{ [2, 3, 4]|select('in', g)|list }}",
    "{{ 1 in it }} {{ 2 in it }} {{ it|list }}",
    "{{ 2 in gen }} {{ gen|list }} {{ 1 in gen }}",
    "{{ 2 in range(5) }} {{ 'b' in 'abc' }} {{ 'a' in d }} {{ 3 in [1, 2, 3] }} {{ 1 in d.values() }}"
    " {{ 'a' in d.keys() }} {{ ('a', 1) in d.items() }} {{ 'z' not in d }}",
]


@pytest.mark.parametrize("template", ITERATOR_CONTAINMENT)
def test_in_an_iterator_uses_it_up_only_to_the_match_as_jinja_does(template: str) -> None:
    """The check before `in` took an iterator's items into a list to weigh them, using it all up:
    `{{ 1 in g }} {{ 2 in g }}` gave `True False` where Jinja gives `True True`."""
    reference = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def context() -> dict[str, object]:
        return {"it": iter([1, 2, 3]), "gen": (i for i in [1, 2, 3]), "d": {"a": 1}}

    assert render_template(template, context()) == reference.from_string(template).render(context())


def test_in_a_huge_iterator_is_refused_within_the_limit_and_a_match_found_early_is_not() -> None:
    """An iterator's items are weighed one at a time before each is compared, as a list's are: a
    search that would go through more than the limit stops there, however long the iterator is; one
    that finds its item first is answered, as Python answers it (it was refused for the length)."""
    _Probe.calls = 0
    context = {"needle": [_Probe(0)] * 99 + [_Probe(1)], "rows": [[_Probe(0)] * 100] * 3000}
    with _limits(2048):
        reason = _refused("{{ needle in rows|select }}", context)
        assert "comparing with in" in reason and "2048" in reason
        assert _Probe.calls <= 2048  # at most the limit's worth compared before the refusal
        assert "comparing with not in" in _refused("{{ -1 not in range(100000)|map('int') }}")
        assert render_template("{{ 5 in g }} {{ g|first }}", {"g": iter(range(100000))}) == "True 6"
        assert render_template("{{ 5 in range(100000)|map('int') }}", {}) == "True"


@pytest.mark.parametrize("template", [
    "{{ {huge: 1}|length }}",
    "{{ {'a': 1, huge: 2}|length }}",
    "{{ ({huge: 1}|dictsort)|length }}",
    "{{ dict([(huge, 1)])|length }}",
    "{{ dict([('a', 1), [huge, 2]], b=3)|length }}",
    "{{ {}.fromkeys([huge])|length }}",
    "{{ dict.fromkeys([huge], 0)|length }}",
    "{% set d = {} %}{{ d.update([(huge, 1)]) }}",
    "{{ huge in {} }}",
    "{{ [huge]|unique|list|length }}",
    "{{ [[huge]]|groupby(0)|length }}",
])
def test_a_huge_key_is_weighed_before_it_is_hashed(template: str) -> None:
    """A tuple's hash goes through all it holds, every time, in one C call: a dict literal, `dict()`,
    `fromkeys` and `update` hashed a key the template had multiplied (`(t,)*1000000`) unchecked, for
    hours past every deadline, where `in`, `d[key]` and `unique` weighed it first."""
    _Probe.calls = 0
    assert "1048576" in _refused(template, {"huge": (_Probe(0),) * 1100000})
    assert _Probe.calls == 0
    built = "{% set t = (0,) * 1000000 %}{% set u = (t,) * 30 %}" + template.replace("huge", "u")
    assert "1048576" in _refused(built)


def test_ordinary_dicts_and_keys_build_as_jinja_builds_them() -> None:
    """Text, number and short tuple keys are hashed at once, and a dict given to `dict()` keeps the
    hashes it has: however big a payload's dict, it is copied as before."""
    reference = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = ("{{ {'a': 1, (1, 2): 3, 4: 5, x: 6} }} {{ dict([('a', 1), ('b', 2)], c=3) }} {{ dict(a=1) }}"
                " {{ {}.fromkeys(['a', (1, 2)]) }} {{ dict.fromkeys('ab', 0) }} {{ (1, 2) in {(1, 2): 0} }}"
                " {% set d = {} %}{{ d.update([('k', 1)]) }}{{ d.update({'j': 2}) }}{{ d }} {{ dict(d) }}"
                " {{ dict(big)|length }} {{ {'k': big}|length }}")
    context = {"x": "y", "big": {str(i): "v" * 100 for i in range(20000)}}
    assert render_template(template, context) == reference.from_string(template).render(context)


# ---------------------------------------------------------------------------------------------
# Keys that share one hash value: each is compared with all the others, in one C call
# ---------------------------------------------------------------------------------------------

#: CPython's modulus for hashing numbers: whole numbers that differ by a multiple of it share a hash value.
_HASH_MODULUS = 2**61 - 1


def _colliding_pairs(count: int) -> list[tuple[int, int]]:
    """`count` pairs of whole numbers below 2**61 - 1 that share one hash value: CPython's tuple hash
    (xxHash's round, unkeyed) can be solved for its second item given the first."""
    mask = 2**64 - 1
    prime_1, prime_2, prime_5 = 11400714785074694791, 14029467366897019727, 2870177450012600261

    def after(lane: int, acc: int) -> int:
        acc = (acc + lane * prime_2) & mask
        return (((acc << 31) | (acc >> 33)) & mask) * prime_1 & mask

    target, inverse = after(0, prime_5), pow(prime_2, -1, 2**64)
    pairs: list[tuple[int, int]] = []
    first = 0
    while len(pairs) < count:
        lane = (target - after(first, prime_5)) * inverse & mask
        second = lane if lane < _HASH_MODULUS else lane - 2**64 if 2**64 - lane < _HASH_MODULUS else -1
        if second != -1:
            pairs.append((first, second))
        first += 1
    assert len({hash(pair) for pair in pairs}) == 1
    return pairs


def _shared(template: str, context: dict[str, object]) -> str:
    """The reason a render was refused for keys that share one hash value (never for the time limit)."""
    from engine.templates import TemplateLimitError

    with pytest.raises(TemplateLimitError) as caught:
        render_template(template, context)
    reason = caught.value.reason
    assert "share one hash value" in reason and "templates.max_seconds" not in reason, reason
    return reason


SHARED_HASH_BOMBS = [
    "{{ keys|unique|list|length }}",
    f"{{{{ range(0, {_HASH_MODULUS * 2000}, {_HASH_MODULUS})|unique|list|length }}}}",
    "{{ rows|unique(attribute='id')|list|length }}",
    "{{ dict.fromkeys(keys)|length }}",
    "{{ {}.fromkeys(keys, 0)|length }}",
    f"{{{{ dict.fromkeys(range(0, {_HASH_MODULUS * 2000}, {_HASH_MODULUS}))|length }}}}",
    "{{ dict(pairs)|length }}",
    "{% set d = {'a': 1} %}{{ d.update(pairs) }}{{ d|length }}",
    "{{ pairs|map('first')|unique|list|length }}",
    "{{ dict(backwards|map('reverse')|list)|length }}",
    "{{ dict(ranges)|length }}",
    "{{ ('!!set {}'|from_yaml_string).union(keys)|length }}",
    "{% set s = '!!set {}'|from_yaml_string %}{{ s.update([], keys) }}{{ s|length }}",
    "{{ ('!!set {}'|from_yaml_string).union(*chunks)|length }}",
]


@pytest.mark.parametrize("template", SHARED_HASH_BOMBS)
def test_keys_that_share_one_hash_value_are_refused_before_they_are_hashed(template: str) -> None:
    """Whole numbers that differ by a multiple of 2**61 - 1 share one hash value, so a dict or set
    compares each with all those before it: 30,000 of them from a webhook's body held the GIL for
    14.5 s in `|unique` (a loop no deadline reaches) and 5.7 s in `dict.fromkeys`, one C call. Pairs
    of any kind (iterators, ranges) and a set's methods hash theirs alike (all its arguments together)."""
    keys = [i * _HASH_MODULUS for i in range(2000)]
    context = {"keys": keys, "rows": [{"id": key} for key in keys], "pairs": [[key, 1] for key in keys],
               "backwards": [[1, key] for key in keys], "ranges": [range(key, key + 2) for key in keys],
               "chunks": [keys[i:i + 40] for i in range(0, 2000, 40)]}
    assert "more than 64 different ones" in _shared(template, context)


@pytest.mark.parametrize("keys", [
    [float(2 ** (61 * j)) for j in range(1, 17)] + [1 + i * _HASH_MODULUS for i in range(1, 60)],
    _colliding_pairs(2000),
    [frozenset({1, i * _HASH_MODULUS}) for i in range(1, 2000)],
    [*[f"k{i}" for i in range(100)], 0.5, None, *[1 + i * _HASH_MODULUS for i in range(1, 70)], 2.0**61],
])
def test_floats_and_tuples_that_share_one_hash_value_are_counted_too(keys: list[object]) -> None:
    """Big floats share hash values with whole numbers; a tuple's or frozenset's hash mixes its items'
    hash values without a key, so pairs even of numbers below 2**61 - 1 can be built to share one."""
    assert len({hash(key) for key in keys if not isinstance(key, str | float | None)}) <= 2
    assert "more than 64 different ones" in _shared("{{ keys|unique|list|length }}", {"keys": keys})
    assert "more than 64 different ones" in _shared("{{ dict.fromkeys(keys)|length }}", {"keys": keys})


def _floats_sharing(value: int) -> list[float]:
    """The floats below 2**61 whose hash value is `value`: CPython hashes m * 2**e (m odd) to m's 61 bits
    rotated left by e mod 61, so each rotation of `value` that is odd and below 2**53 is a mantissa,
    at every exponent of its class mod 61 (floats 2**61 times apart share every hash value)."""
    floats: list[float] = []
    for turn in range(61):
        mantissa = (value >> turn | value << (61 - turn)) & _HASH_MODULUS
        if mantissa & 1 and mantissa < 2**53:
            floats += [math.ldexp(mantissa, e) for e in range(turn - 61 * 18, 61 - mantissa.bit_length(), 61)
                       if e >= -1074]
    return floats


def _hash_values_of_many_floats(count: int) -> list[int]:
    """`count` hash values that about a hundred floats below 2**61 share each: six bits at least 9 apart
    around the 61, so each of them, turned to bit 0, leaves a mantissa below 2**53."""
    values = {sum(1 << ((shift + 9 * i + (extra if i == 5 else 0)) % 61) for i in range(6))
              for shift in range(61) for extra in range(7)}
    return sorted(values)[:count]


def test_small_floats_that_share_one_hash_value_are_counted_too() -> None:
    """Floats below 2**61 share hash values too (~106 different ones a value, not whole numbers): a
    million of them held `|unique` for 2.9 s and `dict.fromkeys` for 2.6 s, one loop and one C call no
    deadline reaches. Among many keys, floats and the numbers that may share their hash values are
    weighed as big whole numbers are; a few floats cannot be made to cost much, and are not."""
    values = _hash_values_of_many_floats(200)
    keys = [x for value in values for x in _floats_sharing(value)]
    assert len(keys) > 200 * 100 and len(set(keys)) == len(keys) and max(keys) < 2.0**61
    assert {hash(x) for x in keys} == set(values)
    for template in ("{{ keys|unique|list|length }}", "{{ dict.fromkeys(keys)|length }}",
                     "{{ keys|map('string')|map('float')|unique|list|length }}"):
        assert "more than 64 different ones" in _shared(template, {"keys": keys})
    # a whole number repeated among a few floats of its hash value is compared with each of them
    repeated = [*_floats_sharing(values[0])[:40], *[values[0]] * 40000]
    assert "more than 1048576 comparisons" in _shared("{{ keys|unique|list|length }}", {"keys": repeated})

    reference = jinja2.Environment()
    template = "{{ keys|unique|list|length }} {{ dict.fromkeys(keys)|length }} {{ keys|unique|list == keys[:n] }}"
    one_value = _floats_sharing(values[0])  # ~106 floats alone: ~5,600 comparisons
    ordinary = [i / 8 + 0.1 for i in range(20000)] + [0.5, 1e300, 2.5, 2, -0.0, 0.0]
    for keys, count in ((one_value, len(one_value)), (ordinary + ordinary, len(ordinary) - 1)):
        context = {"keys": keys, "n": count}
        assert render_template(template, context) == reference.from_string(template).render(context)
    assert render_template("{{ [0.5, 1.5, 0.5, 2 ** -61, 1, 1.0]|unique|list }}", {}) == f"[0.5, 1.5, {2**-61}, 1]"


def test_keys_that_share_hash_values_are_bounded_in_number_and_in_all() -> None:
    """At most 64 different keys may share one hash value, and the comparisons among all that share
    one are held to the limit (repeats of a key count: each is looked up among the others)."""
    reference = jinja2.Environment()
    both = "{{ keys|unique|list|length }} {{ dict.fromkeys(keys)|length }}"
    shared = [i * _HASH_MODULUS for i in range(2, 66)]  # from 2**61 on (`2**61 - 1` itself shares with 0 only)
    assert render_template(both, {"keys": shared * 3}) == reference.from_string(both).render(keys=shared * 3)
    many = [bucket + i * _HASH_MODULUS for bucket in range(300) for i in range(10)]  # 300 values, 10 keys each
    assert render_template(both, {"keys": many}) == "3000 3000"
    for template in ("{{ keys|unique|list|length }}", "{{ dict.fromkeys(keys)|length }}"):
        assert "more than 64 different ones" in _shared(template, {"keys": [*shared, 66 * _HASH_MODULUS]})
        with _limits(16384):
            for keys in (many, shared * 50):
                reason = _shared(template, {"keys": keys})
                assert "more than 16384 comparisons" in reason and "templates.max_output_chars" in reason


def test_ordinary_keys_hash_as_jinja_hashes_them() -> None:
    """Text, small numbers and big numbers that do not share hash values (ids, timestamps, a key
    repeated) are hashed as before, with the results Jinja gives."""
    reference = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = ("{{ ints|unique|list|length }} {{ texts|unique|list|length }} {{ range(100000)|unique|list|length }}"
                " {{ big|unique|list|length }} {{ (same|unique|list)[0] == same[0] }} {{ same|unique|list|length }}"
                " {{ dict.fromkeys(big)|length }} {{ dict(big|map('string')|batch(2)|list)|length }}"
                " {{ [1, 1.0, True, 2.5, -1, -2, (1, 2), (1, 2), 'A', 'a']|unique|list }}"
                " {{ dict([((1, 2), 'a'), (2 ** 61, 'b'), (2.0 ** 61, 'c')]) }}"
                " {{ {}.fromkeys([2 ** 64, -(2 ** 64)]) }}"
                " {{ pairs|unique|list|length }} {{ ([1, 2], [3, 4])|map('first')|unique|list }}"
                " {{ dict([[1, 2]|reverse, 'ab', range(3, 5), {'k': 1, 'v': 2}]) }}"
                " {{ dict(pairs) == dict(pairs|map('list')) }} {{ dict.fromkeys(big|map('string'))|length }}"
                " {{ {}.fromkeys(range(2 ** 62, 2 ** 62 + 1000))|length }} {{ mixed|unique|list }}"
                " {{ dict.fromkeys(mixed) }} {{ floats|unique|list|length }} {{ snowflakes|unique|list|length }}"
                " {{ letters.union(['b'], 'cd', {'e': 1}, texts[:9])|sort }}")
    context = {"ints": list(range(100000)) * 2, "texts": [f"k{i}" for i in range(50000)] * 2,
               "big": [(i * 7919) << 40 for i in range(20000)], "same": [2**64 + 5] * 5000,
               "pairs": [(i, i + 1) for i in range(5000)], "floats": [i / 4 for i in range(-5000, 5000)] + [1e300],
               "mixed": [1, "a", 2.5, None, 2**64, 2.0**64, -(2**64), float("inf"), (1, 2)] * 20,
               "snowflakes": [1_300_000_000_000_000_000 + (i << 22) for i in range(20000)] * 2, "letters": {"a"}}
    assert render_template(template, context) == reference.from_string(template).render(context)


class _Settings(Mapping[str, object]):
    """A mapping that is not a dict (a client's config object, `MappingProxyType`): `dict()` and
    `dict.update` read it through `keys()`, then each item; counted, to compare with Python."""

    def __init__(self, items: dict[str, object]) -> None:
        self._items = items
        self.keys_read = 0

    def __getitem__(self, key: str) -> object:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> KeysView[str]:
        self.keys_read += 1
        return super().keys()


def test_update_and_dict_read_a_mapping_through_its_keys_as_python_does() -> None:
    """`d.update(m)` with a mapping that is not a dict gave `{'a': 'b'}` for `{'ab': 1}`: the size
    check took `m` into a list of its keys first, and `update` took each two-letter key for a pair."""
    reference = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = ("{% set d = {'x': 0} %}{{ d.update(m) }}{{ d }} {% set e = {} %}{{ e.update(m, z=3) }}{{ e }}"
                " {{ dict(m) }} {{ dict(m, y=2) }} {% set f = {} %}{{ f.update(proxy) }}{{ f }} {{ dict(proxy) }}")

    def context() -> dict[str, object]:
        return {"m": _Settings({"ab": 1, "cd": [2]}), "proxy": types.MappingProxyType({"ab": 1})}

    ours, theirs = context(), context()
    assert render_template(template, ours) == reference.from_string(template).render(theirs)
    assert ours["m"].keys_read == theirs["m"].keys_read == 4  # type: ignore[attr-defined]
    with _limits(100):
        wide = _Settings({f"k{i}": i for i in range(101)})
        assert "what dict.update is given" in _refused("{% set d = {} %}{{ d.update(m) }}", {"m": wide})
        assert "what dict() is given" in _refused("{{ dict(m)|length }}", {"m": wide})
        half = _Settings({f"k{i}": i for i in range(60)})
        assert "the dict a template grows" in _refused("{{ dict.fromkeys(range(50)).update(m) }}", {"m": half})


def test_a_mapping_whose_keys_share_one_hash_value_is_refused_before_they_are_hashed() -> None:
    shared = _Settings({i * _HASH_MODULUS: i for i in range(2000)})  # type: ignore[dict-item]
    assert "more than 64 different ones" in _shared("{% set d = {} %}{{ d.update(m) }}", {"m": shared})
    assert "more than 64 different ones" in _shared("{{ dict(m)|length }}", {"m": shared})
