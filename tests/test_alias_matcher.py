"""Alias loading and matching: the index agrees with a brute-force scan, tie-break, ambiguity, help."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aliases import (
    Alias,
    AliasFormat,
    AliasMatcher,
    AliasParseError,
    AmbiguousCommand,
    NoMatch,
    cast_alias_parameters,
    extract_parameters,
    inject_immutable,
    load_aliases,
)
from aliases.grammar import TOO_COMPLEX, compile_format
from aliases.matcher import CommandTooComplex
from bot.app import load_packs
from engine.config import Config
from engine.parameters import ParameterError
from tests.conftest import write


def alias(name: str, *formats: str | AliasFormat, pack: str = "p", enabled: bool = True, **extra: Any) -> Alias:
    return Alias(name=name, pack=pack, action_ref="core.noop", description=extra.pop("description", f"{name} it"),
                 enabled=enabled,
                 formats=[f if isinstance(f, AliasFormat) else AliasFormat(f, [f]) for f in formats], **extra)


# -- reference: StackStorm's linear scan plus Squall's tie-break, written out plainly ------------

def brute_force(aliases: list[Alias], text: str) -> tuple[Any, ...]:
    found = []
    for a in sorted(aliases, key=lambda a: (a.pack, a.name)):
        if not a.enabled:
            continue
        seen: set[str] = set()
        for fmt in a.formats:
            if fmt.match_multiple:
                continue
            for rep in fmt.representations:
                if rep in seen:
                    continue
                seen.add(rep)
                try:
                    params = extract_parameters(rep, text)
                except AliasParseError:
                    continue
                found.append((compile_format(rep).score, a, rep, params))
    if not found:
        return ("none",)
    best = max(f[0] for f in found)
    top: list[tuple[Any, ...]] = []
    for score, a, rep, params in found:
        if score == best and not any(t[1] is a and t[3] == params for t in top):
            top.append((score, a, rep, params))
    if len(top) > 1:
        return ("ambiguous", sorted((t[1].ref, t[2]) for t in top))
    return ("match", top[0][1].ref, top[0][2], top[0][3])


def outcome(matcher: AliasMatcher, text: str) -> tuple[Any, ...]:
    try:
        found = matcher.match(text)
    except NoMatch:
        return ("none",)
    except AmbiguousCommand as exc:
        return ("ambiguous", sorted((c.alias.ref, c.representation) for c in exc.candidates))
    return ("match", found.alias.ref, found.representation, found.parameters)


WORDS = ["run", "runway", "deploy", "restart", "status", "ping", "get", "set", "scale", "Run"]
JOINERS = ["on", "to", "in", "for", "with"]
VALUES = ["web", "db1", "5", "0.5", '"two words"', "'x y'", "prod", "a,b", "{\"k\": 1}", "on", "to", "-a", "k=v",
          "runs", "run5", "deploys", "ru", "run-x"]
# Leading pieces that are easy to index wrongly: shared prefixes, quantifiers, alternations, anchors.
LEADS = ["ru(n|nway)", "runs?", "run|^ping", "run?", "(?:run|deploy)s?", "(run|ping)", r"^\s*run", "run-", "[a-z]+",
         "(?i)run", "run|ping", "{{w}} is my captain", "(?:please )?run the {{x}}"]


def random_format(rng: random.Random, index: int) -> str:
    lead = rng.random()
    if lead < 0.6:
        parts = [rng.choice(WORDS)]
    elif lead < 0.7:
        parts = [f"{{{{lead{index}}}}}"]
    else:
        parts = [rng.choice(LEADS)]
    for n in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(rng.choice(JOINERS))
        elif kind < 0.6:
            parts.append(f"{{{{p{n}}}}}")
        elif kind < 0.75:
            parts.append(f"{{{{p{n}={rng.choice(['x', 'staging', ''])}}}}}")
        elif kind < 0.85:
            parts.append(f"{{{{p{n}:d}}}}")
        else:
            parts.append(f"( {rng.choice(JOINERS)})?")
    text = parts[0]
    for part in parts[1:]:
        text += rng.choice([" ", " ", " ", "", "-"]) + part
    return text.replace(" ( ", "( ")


def random_aliases(rng: random.Random, count: int) -> list[Alias]:
    aliases = []
    for i in range(count):
        formats: list[str | AliasFormat] = [random_format(rng, i)]
        if rng.random() < 0.3:
            formats.append(AliasFormat(None, [random_format(rng, i) for _ in range(2)]))
        aliases.append(alias(f"a{i}", *formats, pack=rng.choice(["p", "q"]), enabled=rng.random() > 0.1))
    return aliases


def random_message(rng: random.Random) -> str:
    words = [rng.choice(WORDS + JOINERS + VALUES) for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.2:
        words.append(f"{rng.choice(['p0', 'p1', 'x'])}={rng.choice(VALUES)}")
    text = words[0] if words else ""
    for word in words[1:]:
        text += rng.choice([" ", " ", " ", "", "-", "\n"]) + word
    return (" " * rng.randint(0, 2)) + text


def test_index_agrees_with_brute_force_on_random_alias_sets() -> None:
    rng = random.Random(20240605)
    checked = matched = ambiguous = 0
    for _ in range(40):
        aliases = random_aliases(rng, rng.randint(5, 40))
        matcher = AliasMatcher(aliases)
        assert not matcher.errors
        for _ in range(150):
            text = random_message(rng)
            expected = brute_force(aliases, text)
            assert outcome(matcher, text) == expected, text
            checked += 1
            matched += expected[0] == "match"
            ambiguous += expected[0] == "ambiguous"
    # the generator must exercise all three outcomes
    assert matched > 200 and ambiguous > 20 and checked - matched - ambiguous > 200


FIXED = random_aliases(random.Random(7), 60)
FIXED_MATCHER = AliasMatcher(FIXED)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS + JOINERS + VALUES) | st.text(max_size=6), max_size=6).map(" ".join))
def test_index_agrees_with_brute_force_on_arbitrary_text(text: str) -> None:
    assert outcome(FIXED_MATCHER, text) == brute_force(FIXED, text)


def test_index_stats() -> None:
    matcher = AliasMatcher([alias("a", "aws restart pod {{name}}"), alias("b", "{{who}} is my captain"),
                            alias("c", "(?i)hello"), alias("d", DUPLICATE)])
    assert matcher.stats() == {"representations": 4, "by_first_words": 1, "by_required_word": 1, "always_tried": 1,
                               "match_multiple": 1}


def test_linear_match_lists_every_fitting_format() -> None:
    matcher = AliasMatcher([alias("a", "run {{cmd}}"), alias("b", "run {{cmd}} on {{hosts}}"), alias("c", "ping")])
    assert sorted(m.alias.name for m in matcher.linear_match("run x on y")) == ["a", "b"]


# -- tie-break and ambiguity ---------------------------------------------------------------------

def test_most_literal_text_wins() -> None:
    # StackStorm: "matched more than 1 pattern" (st2#4511, st2#3770)
    matcher = AliasMatcher([alias("run", "run {{cmd}}"), alias("run_on", "run {{cmd}} on {{hosts}}")])
    found = matcher.match("run date on localhost")
    assert (found.alias.ref, found.parameters) == ("p.run_on", {"cmd": "date", "hosts": "localhost"})
    assert matcher.match("run date").alias.ref == "p.run"


def test_fewer_placeholders_win_on_equal_literal_text() -> None:
    matcher = AliasMatcher([alias("status_all", "status {{what=all}}"), alias("status", "status")])
    assert matcher.match("status").alias.ref == "p.status"
    assert matcher.match("status web").alias.ref == "p.status_all"


def test_true_tie_is_ambiguous_with_candidates() -> None:
    matcher = AliasMatcher([alias("restart", "restart {{service}}", pack="ops"),
                            alias("restart", "restart {{name}}", pack="web")])
    with pytest.raises(AmbiguousCommand) as caught:
        matcher.match("restart nginx")
    assert [c.alias.ref for c in caught.value.candidates] == ["ops.restart", "web.restart"]
    assert [c.parameters for c in caught.value.candidates] == [{"service": "nginx"}, {"name": "nginx"}]
    assert "ops.restart" in str(caught.value) and "web.restart" in str(caught.value)


def test_two_formats_of_one_alias() -> None:
    same = alias("ping", "ping {{host}}", AliasFormat("ping <host>", ["ping {{host}}", "(ping) {{host}}"]))
    assert AliasMatcher([same]).match("ping h1").parameters == {"host": "h1"}
    # different parameters from two equally specific formats of one alias: a real ambiguity
    split = alias("copy", "copy {{src}} {{dst}}", "copy {{dst}} {{src}}")
    with pytest.raises(AmbiguousCommand):
        AliasMatcher([split]).match("copy a b")


def test_case_sensitive_like_stackstorm() -> None:
    matcher = AliasMatcher([alias("ping", "ping {{host}}")])
    with pytest.raises(NoMatch) as caught:
        matcher.match("PING host1")
    assert caught.value.suggestions == ["ping {{host}}"]


# -- suggestions, disabled aliases, display-only formats ---------------------------------------

def test_no_match_suggests_formats() -> None:
    matcher = AliasMatcher([
        alias("restart", "restart {{service}} on {{host}}"), alias("deploy", AliasFormat("deploy <app> to <env>", [
            "deploy {{app}} to {{env=staging}}"])), alias("status", "status"),
    ])
    with pytest.raises(NoMatch) as caught:
        matcher.match("restrat nginx on web1")
    assert caught.value.suggestions[0] == "restart {{service}} on {{host}}"
    assert "did you mean" in str(caught.value)
    with pytest.raises(NoMatch) as caught:
        matcher.match("deploy web")  # right word, missing ` to`
    assert caught.value.suggestions == ["deploy <app> to <env>"]
    with pytest.raises(NoMatch) as caught:
        matcher.match("zzzz qqqq")
    assert caught.value.suggestions == []
    with pytest.raises(NoMatch):
        matcher.match("")
    start = time.perf_counter()
    for text in ("x" * 100_000, "restart " + "no " * 30_000, "status " * 20_000 + " a=1"):
        with pytest.raises(NoMatch):
            matcher.match(text)
    assert time.perf_counter() - start < 5


def test_disabled_aliases_never_match_nor_show() -> None:
    matcher = AliasMatcher([alias("off", "reboot {{host}}", enabled=False), alias("on", "uptime")])
    with pytest.raises(NoMatch) as caught:
        matcher.match("reboot web1")
    assert caught.value.suggestions == []
    assert [h["ref"] for h in matcher.help()] == ["p.on"]


def test_display_only_formats_are_help_not_matching() -> None:
    matcher = AliasMatcher([alias("docs", AliasFormat("docs <topic>", []), "docs-search {{q}}")])
    with pytest.raises(NoMatch):
        matcher.match("docs <topic>")
    assert [h["display"] for h in matcher.help()] == ["docs <topic>", "docs-search {{q}}"]


def test_representation_only_formats_match_but_are_not_in_help() -> None:
    matcher = AliasMatcher([alias("hidden", AliasFormat(None, ["secret {{x}}"]))])
    assert matcher.match("secret 1").display is None
    assert matcher.help() == []


# -- match_multiple ------------------------------------------------------------------------------

DUPLICATE = AliasFormat("duplicate of <issue>", [r"(?:\b|^)duplicate of (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)(?:\b|$)"],
                        match_multiple=True)


def test_match_multiple_is_a_second_pass() -> None:
    matcher = AliasMatcher([alias("dup", DUPLICATE), alias("close", "close {{issue}} as {{why}}")])
    found = matcher.match_all("this is a duplicate of ABC-1 and duplicate of XY-22")
    assert [(m.alias.ref, m.parameters) for m in found] == [("p.dup", {"issue_key": "ABC-1"}),
                                                            ("p.dup", {"issue_key": "XY-22"})]
    assert matcher.match("duplicate of ABC-1").parameters == {"issue_key": "ABC-1"}
    # a single-pass match wins even when the multiple format also fits
    assert matcher.match_all("close ABC-1 as duplicate of XY-22")[0].alias.ref == "p.close"
    assert len(matcher.match_all("close ABC-1 as duplicate of XY-22")) == 1
    with pytest.raises(AmbiguousCommand):
        AliasMatcher([alias("d1", DUPLICATE), alias("d2", DUPLICATE)]).match_all("duplicate of AB-1")


def test_match_tries_each_format_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # `match` ran the first pass again (through `match_all`) when nothing fitted: twice the regex work.
    passes: list[str] = []
    first_pass = AliasMatcher._first_pass
    monkeypatch.setattr(AliasMatcher, "_first_pass",
                        lambda self, prepared: passes.append(prepared.text) or first_pass(self, prepared))
    matcher = AliasMatcher([alias("scale", "scale {{a}} {{b}} to {{n:d}}"), alias("dup", DUPLICATE)])
    with pytest.raises(NoMatch):
        matcher.match("scale a b to c")
    assert passes == ["scale a b to c"]
    assert matcher.match("duplicate of AB-1 and duplicate of CD-2").parameters == {"issue_key": "AB-1"}
    assert len(passes) == 2
    assert [m.parameters for m in matcher.match_all("duplicate of AB-1 and duplicate of CD-2")] == [
        {"issue_key": "AB-1"}, {"issue_key": "CD-2"}]
    assert len(passes) == 3


def test_a_command_past_its_budget_is_refused_with_the_reply() -> None:
    # Fits the pre-check (ends in a number, holds ` to `), so only the regex can tell, trying every
    # split of 13,000 words: stopped at the message's budget, and refused (a `NoMatch` to callers that
    # know only that: the API answers 400 with its text).
    fmt = "scale {{a}} {{b}} to {{word:d}}"
    matcher = AliasMatcher([alias("scale", fmt), alias("ping", "ping {{host}}"), alias("dup", DUPLICATE)])
    command = "scale " + "to " * 13_000 + "5 5"
    for match in (matcher.match, matcher.match_all, matcher.linear_match):
        with pytest.raises(CommandTooComplex) as caught:
            match(command)
        assert str(caught.value) == TOO_COMPLEX
        assert isinstance(caught.value, NoMatch) and caught.value.suggestions == []
        assert caught.value.command == command
    with pytest.raises(AliasParseError, match="too long or too repetitive"):
        matcher.match_format("p.scale", fmt, command)
    assert matcher.match("ping web1").parameters == {"host": "web1"}  # each message has a budget of its own
    assert matcher.match("scale " + "to " * 13_000 + "5").parameters["word"] == 5


def test_match_format_named_by_the_client() -> None:
    matcher = AliasMatcher([alias("ping", "ping {{host}}", "p {{host}}")])
    assert matcher.match_format("p.ping", "p {{host}}", "p h1")[0].parameters == {"host": "h1"}
    with pytest.raises(AliasParseError, match="is not available on the alias"):
        matcher.match_format("p.ping", "pong {{host}}", "pong h1")
    with pytest.raises(AliasParseError):
        matcher.match_format("p.ping", "p {{host}}", "q h1")


# -- help ----------------------------------------------------------------------------------------

def test_help_filter_sort_and_permissions() -> None:
    matcher = AliasMatcher([
        alias("zeta", "zeta {{x}}", pack="b", description="Last one"),
        alias("alpha", "alpha", AliasFormat("alpha <n>", ["alpha {{n}}"]), pack="b"),
        alias("deploy", "deploy {{app}}", pack="a", description="Ship an app"),
    ])
    assert [(h["pack"], h["display"]) for h in matcher.help()] == [
        ("a", "deploy {{app}}"), ("b", "alpha"), ("b", "alpha <n>"), ("b", "zeta {{x}}")]
    assert set(matcher.help()[0]) == {"pack", "display", "description", "ref"}
    assert [h["display"] for h in matcher.help("ALPHA")] == ["alpha", "alpha <n>"]
    assert [h["display"] for h in matcher.help("^z")] == ["zeta {{x}}"]
    assert [h["ref"] for h in matcher.help("ship")] == ["a.deploy"]  # descriptions are searched too
    assert matcher.help("(") == []  # not a regex: searched literally, no crash
    assert [h["ref"] for h in matcher.help(allowed=lambda a: a.pack == "a")] == ["a.deploy"]
    assert [h["ref"] for h in matcher.help(pack="b")] == ["b.alpha", "b.alpha", "b.zeta"]


# -- loading from packs --------------------------------------------------------------------------

def make_pack(home: Path, aliases: dict[str, str]) -> None:
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\nversion: 0.1.0\n")
    write(pack / "actions" / "deploy.yaml", """
        name: deploy
        runner_type: noop
        parameters:
          app: {type: string}
          env: {type: string}
          hosts: {type: array}
          count: {type: integer}
          sudo: {type: boolean, default: false}
    """)
    for name, text in aliases.items():
        write(pack / "aliases" / f"{name}.yaml", text)


def demo_aliases(config: Config) -> tuple[list[Alias], list[str]]:
    aliases, errors = load_aliases(load_packs(config))
    return [a for a in aliases if a.pack == "demo"], [str(e) for e in errors if "/demo/" in e.file]


def test_load_aliases_reads_the_whole_schema(home: Path, config: Config) -> None:
    make_pack(home, {"deploy": """
        name: deploy
        pack: demo
        action_ref: demo.deploy
        description: Deploy an app.
        formats:
          - "deploy {{app}} to {{env=staging}}"
          - display: "ship <app>"
            representation: "ship {{app}}"
          - display: "ship many"
          - representation: ["(?:\\\\b|^)ship (?P<app>[a-z]+)(?:\\\\b|$)"]
            match_multiple: true
        ack: {enabled: true, format: "on it {{ execution.id }}", append_url: false}
        result: {format: "done", extra: {slack: {color: good}}}
        extra: {security: {twofactor: x}}
        immutable_parameters: {sudo: "{{ false }}"}
        permissions:
          allow: {users: [ann], groups: [ops], channels: ["#ops"]}
          deny: {users: [bob]}
        confirm: {ttl: 30}
    """, "off": """
        name: "off"
        action_ref: demo.deploy
        enabled: false
        formats: ["off"]
    """})
    aliases, errors = demo_aliases(config)
    assert errors == []
    deploy, off = aliases
    assert deploy.ref == "demo.deploy" and deploy.action_ref == "demo.deploy"
    assert [(f.display, f.representations, f.match_multiple) for f in deploy.formats] == [
        ("deploy {{app}} to {{env=staging}}", ["deploy {{app}} to {{env=staging}}"], False),
        ("ship <app>", ["ship {{app}}"], False),
        ("ship many", [], False),
        (None, [r"(?:\b|^)ship (?P<app>[a-z]+)(?:\b|$)"], True),
    ]
    assert deploy.permissions["deny"] == {"users": ["bob"]}
    assert deploy.confirm == {"ttl": 30}
    assert deploy.ack["format"].startswith("on it") and deploy.result["extra"]["slack"]["color"] == "good"
    assert deploy.metadata_file.endswith("aliases/deploy.yaml")
    assert off.enabled is False and off.confirm is False
    assert deploy.summary()["formats"][1] == {"display": "ship <app>", "representation": ["ship {{app}}"],
                                              "match_multiple": False}


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("name: x\naction_ref: demo.deploy\nfromats: [x]\n", 3,
     "unknown alias attribute 'fromats' (did you mean 'formats'?)"),
    ("action_ref: demo.deploy\nformats: [x]\n", 1, "'name' is required"),
    ("name: off\naction_ref: demo.deploy\nformats: [x]\n", 1, "YAML reads off/no as false: quote it"),
    ("name: x\nformats: [x]\n", 1, "'action_ref' is required"),
    ("name: x\naction_ref: demo.deploy\n", 1, "'formats' is required"),
    ("name: x\naction_ref: demo.deploi\nformats: [x]\n", 2,
     'action "demo.deploi" not found; did you mean demo.deploy?'),
    ("name: x\naction_ref: demo.deploy\nformats:\n  - ok\n  - display: d\n    representation: ['bad (']\n", 6,
     'Format string "bad (" is not valid'),
    ("name: x\naction_ref: demo.deploy\nformats: ['x {{a-b}}']\n", 3, "must be an identifier"),
    ("name: x\naction_ref: demo.deploy\nformats: [{display: d, representaton: r}]\n", 3,
     "unknown format attribute 'representaton' (did you mean 'representation'?)"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\nenabled: maybe\n", 4, "'enabled' must be true or false"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\npermissions: {allow: {user: [a]}}\n", 4,
     "unknown permissions.allow list 'user' (did you mean 'users'?)"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\npermissions: {allow: {users: a}}\n", 4, "must be a list"),
    # A YAML number never equals a user's name (`007` is 7): a deny list of them denied nobody.
    ("name: x\naction_ref: demo.deploy\nformats: [x]\npermissions: {deny: {users: [12345]}}\n", 4,
     "'permissions.deny.users' must be a list of names, such as [root], not [12345] (quote a name that looks "
     "like a number)"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\nconfirm: {ttl: -1}\n", 4, "'confirm.ttl' must be"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\nconfirm: yes please\n", 4, "'confirm' must be"),
    ("name: x\naction_ref: demo.deploy\nformats: [x]\nack: {fromat: x}\n", 4, "unknown ack attribute 'fromat'"),
    ("name: x\npack: other\naction_ref: demo.deploy\nformats: [x]\n", 2, "does not match the pack folder"),
    ("- just\n- a list\n", 1, "an alias file must be a mapping"),
])
def test_load_errors_name_file_line_and_reason(home: Path, config: Config, text: str, line: int, reason: str) -> None:
    make_pack(home, {"good": "name: good\naction_ref: demo.deploy\nformats: ['good']\n", "bad": text})
    aliases, errors = demo_aliases(config)
    assert [a.name for a in aliases] == ["good"]
    assert len(errors) == 1
    assert errors[0].startswith(f"packs/demo/aliases/bad.yaml:{line}: ") or errors[0].startswith(
        f"{home}/packs/demo/aliases/bad.yaml:{line}: "), errors[0]
    assert reason in errors[0]


def test_duplicate_alias_names(home: Path, config: Config) -> None:
    make_pack(home, {"a": "name: same\naction_ref: demo.deploy\nformats: ['a']\n",
                     "b": "name: same\naction_ref: demo.deploy\nformats: ['b']\n"})
    aliases, errors = demo_aliases(config)
    assert [a.formats[0].display for a in aliases] == ["a"]
    assert len(errors) == 1 and "alias 'demo.same' is already defined" in errors[0]


def test_loaded_aliases_match_end_to_end(home: Path, config: Config) -> None:
    make_pack(home, {"deploy": """
        name: deploy
        action_ref: demo.deploy
        formats: ["deploy {{app}} to {{hosts}} x{{count:d}}"]
        immutable_parameters: {sudo: "{{ sudo_default }}"}
    """})
    registry = load_packs(config)
    aliases, _ = load_aliases(registry)
    found = AliasMatcher(aliases).match("deploy web to h1, h2 ,h3 x3")
    action = registry.actions["demo.deploy"]
    params = cast_alias_parameters(action, found.parameters)
    assert params == {"app": "web", "hosts": ["h1", "h2", "h3"], "count": 3}
    assert inject_immutable(found.alias, params, {"sudo_default": "true"})["sudo"] == "true"
    with pytest.raises(ParameterError, match="Immutable arguments cannot be overriden: sudo"):
        inject_immutable(found.alias, {**params, "sudo": "false"}, {})


def test_cast_alias_parameters() -> None:
    from engine.actions import Action

    action = Action(name="a", pack="p", runner_type="noop", entry_point="", description="", enabled=True,
                    parameters={"hosts": {"type": "array"}, "n": {"type": "integer"}, "on": {"type": "boolean"},
                                "data": {"type": "object"}, "s": {"type": "string"}},
                    declared={}, notify={}, tags=[], output_schema=None, metadata_file="", pack_path=Path("."))
    assert cast_alias_parameters(action, {"hosts": "a, b,c ", "n": "5", "on": "yes", "data": '{"k": 1}', "s": " x ",
                                          "extra": "kept"}) == {
        "hosts": ["a", "b", "c"], "n": 5, "on": True, "data": {"k": 1}, "s": " x ", "extra": "kept"}
    assert cast_alias_parameters(action, {"hosts": '["a", "b"]', "n": 7}) == {"hosts": ["a", "b"], "n": 7}
    with pytest.raises(ParameterError, match='parameter "n"'):
        cast_alias_parameters(action, {"n": "five"})


def test_inject_immutable_renders_jinja() -> None:
    a = alias("x", "x", immutable_parameters={"env": "dev", "who": "{{ user }}", "n": 3})
    assert inject_immutable(a, {"p": 1}, {"user": "ann"}) == {"p": 1, "env": "dev", "who": "ann", "n": 3}
    assert inject_immutable(alias("y", "y"), {"p": 1}, {}) == {"p": 1}
    with pytest.raises(ParameterError, match="Immutable arguments cannot be overriden: env,n"):
        inject_immutable(a, {"env": "prod", "n": 1}, {"user": "ann"})
    with pytest.raises(ParameterError, match="immutable_parameters"):
        inject_immutable(alias("z", "z", immutable_parameters={"v": "{{ missing.attr }}"}), {}, {})


KV_TOKEN = "TOPSECRET-kv-token-42"


def _kv_pack(home: Path) -> None:
    """An alias whose immutable parameters read the datastore, as StackStorm packs write them: a plain
    system key, the requester's own key, and an encrypted key through `decrypt_kv` into a parameter
    that is not `secret` (what the engine's reveal tracking alone must keep out of sight)."""
    pack = home / "packs" / "kv"
    write(pack / "pack.yaml", "ref: kv\nname: kv\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "say.yaml", """
        name: say
        runner_type: local-shell-cmd
        parameters:
          message: {type: string, required: true}
          target: {type: string}
          team: {type: string}
          token: {type: string}
          cmd:
            immutable: true
            default: 'echo "{{message}} to {{target}} for {{team}}"; printf %s "{{token}}" | sha256sum | cut -c1-64'
    """)
    write(pack / "aliases" / "say.yaml", """
        name: say
        action_ref: kv.say
        formats: ['say {{message}}']
        immutable_parameters:
          target: "{{ st2kv.system.target }}"
          team: "{{ st2kv.user.team }}"
          token: "{{ st2kv.system.token | decrypt_kv }}"
        ack: {format: "saying to {{ execution.parameters.target }} with {{ execution.parameters.token }}"}
        result: {format: "{{ execution.result.stdout }}"}
    """)


def test_immutable_parameters_reading_the_datastore_are_left_to_the_engine() -> None:
    """Without the datastore here, a template that reads it (`st2kv`, `decrypt_kv`) is passed on as
    written, for the engine to render like a format's default; the others render here as before."""
    from aliases.model import datastore_immutables

    a = alias("kv", "kv", immutable_parameters={"who": "{{ user }}", "t": "{{ st2kv.system.t }}",
                                                "s": {"k": "{{ st2kv.user.s | decrypt_kv }}"}, "n": 3})
    assert datastore_immutables(a) == {"t", "s"}
    assert inject_immutable(a, {"p": 1}, {"user": "ann"}) == {
        "p": 1, "who": "ann", "t": "{{ st2kv.system.t }}", "s": {"k": "{{ st2kv.user.s | decrypt_kv }}"}, "n": 3}
    with pytest.raises(ParameterError, match="Immutable arguments cannot be overriden: t"):
        inject_immutable(a, {"t": "{{ st2kv.system.other }}"}, {"user": "ann"})


async def test_an_alias_with_immutable_st2kv_parameters_runs_with_the_values_masked(home: Path) -> None:
    import hashlib
    import json

    from adapters.loopback import LoopbackAdapter
    from bot.app import Squall
    from engine.config import load_config

    _kv_pack(home)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        assert squall.registry.errors == []
        await squall.db(squall.datastore.set, "target", "prod-cluster")
        await squall.db(squall.datastore.set, "team", "blue", scope="user", user="alice")
        await squall.db(squall.datastore.set, "token", KV_TOKEN, encrypt=True)
        await loopback.say("!say hi", user="alice", channel="#ops")
        digest = hashlib.sha256(KV_TOKEN.encode()).hexdigest()
        await loopback.wait_for(lambda posted: any(digest in p.text for p in posted))  # the action had the token
        [record] = await squall.executions.list(action="kv.say")
        assert record["status"] == "succeeded", record
        assert record["parameters"]["target"] == "prod-cluster" and record["parameters"]["token"] == "********"
        assert "hi to prod-cluster for blue" in record["result"]["stdout"]
        ack = next(p for p in loopback.posted if p.reply.text.startswith("saying"))
        assert ack.reply.text == "saying to prod-cluster with ********"
        # a person may not set it, whatever they type
        await loopback.say("!say hi token=mine", user="alice", channel="#ops")
        await loopback.wait_for(lambda posted: any("Immutable arguments cannot be overriden: token" in p.text
                                                   for p in posted))
        audit = await squall.db(squall.store.audit_list, 100)
        shown = json.dumps([[p.reply.text, *p.edits] for p in loopback.posted]) + json.dumps(audit, default=str)
        shown += json.dumps(await squall.executions.list(action="kv.say"), default=str)
        assert KV_TOKEN not in shown and any(row["event"] == "chat.execution" for row in audit)
    finally:
        await squall.chat.stop()
        await squall.close()
