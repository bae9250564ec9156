"""Bounded work per request, and auth as documented (the durability issue, items 5 and 6).

Templates render off the event loop within `templates.max_output_chars` and `templates.max_seconds`;
values the execution record cannot hold get 400 before anything is stored; the id-prefix lookup is a
bounded range query; `/openapi.json`, `/docs` and `/redoc` follow `api.public_docs`; webhook signatures
carry a timestamp checked against a window, the old scheme still accepted, with `Deprecation`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.app import Squall
from bot.headers import INSTANCE_HEADER
from bot.http import create_api, sign_webhook
from engine.config import ConfigError, load_config
from engine.parameters import ParameterError
from engine.templates import (
    TemplateLimitError,
    TemplateLimits,
    TemplateRenderError,
    build_environment,
    configure_limits,
    current_limits,
    render_template,
    undeclared_variables,
)
from tests.conftest import write

KEY = "bounded-key"
SECRET = "s3cr3t"
LIMIT_KEY = "templates.max_output_chars"
TIME_KEY = "templates.max_seconds"


@pytest.fixture(autouse=True)
def default_limits() -> Iterator[None]:
    """Limits are process-wide (the config sets them): every test starts and ends with the defaults."""
    configure_limits(TemplateLimits())
    yield
    configure_limits(TemplateLimits())


def _home(home: Path, api_extra: str = "") -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        templates:
          max_seconds: 1
        api:
          keys: [{KEY}]
          webhooks:
            signed: {{secret: {SECRET}}}
            short: {{secret: {SECRET}, tolerance: 10}}
            strict: {{secret: {SECRET}, legacy_signature: false}}
          {api_extra}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    actions = {
        "huge": {"text": {"type": "string", "default": "{{ 'x' * 20000000 }}"}},
        "hugesecret": {"token": {"type": "string", "secret": True, "default": "{{ 'x' * 20000000 }}"}},
        "where": {"text": {"type": "string", "default": "{{ 'x' | where }}"}},
        "plain": {"text": {"type": "string", "default": "no template"}},
        "slow": {"text": {"type": "string", "default": "{{ 'x' | started }}{% for i in range(100000) %}"
                                                        "{% for j in range(100000) %}{% endfor %}{% endfor %}"}},
        "num": {"n": {"type": "integer"}, "x": {"type": "number"}, "o": {"type": "object"}, "s": {"type": "string"}},
    }
    for name, parameters in actions.items():
        write(pack / "actions" / f"{name}.yaml", json.dumps({"name": name, "runner_type": "noop",
                                                             "parameters": parameters}))
    for hook in ("signed", "short", "strict"):
        write(pack / "rules" / f"on_{hook}.yaml", f"""
            name: on_{hook}
            pack: demo
            enabled: true
            trigger: {{type: core.st2.webhook, parameters: {{url: "{hook}"}}}}
            action: {{ref: demo.num}}
        """)
    return home / "config.yml"


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await Squall.start(load_config(_home(home)))
    assert current_limits().max_seconds == 1  # the service applies its config's limits
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


def _client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://squall", headers=headers)


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_api(squall), **{"St2-Api-Key": KEY}) as c:
        yield c


@pytest.fixture
async def anon(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_api(squall)) as c:
        yield c


async def _stored(squall: Squall) -> int:
    return len(await squall.db(squall.store.list_executions, limit=1000))


def _fault(answer: httpx.Response) -> str:
    return str(answer.json()["faultstring"])


# -- templates render off the loop, within the limits --------------------------------------------------

async def test_a_huge_default_fails_naming_the_limit(squall: Squall, client: httpx.AsyncClient) -> None:
    with pytest.raises(ParameterError, match=LIMIT_KEY) as caught:
        await squall.executions.request("demo.huge")
    assert 'parameter "text"' in str(caught.value) and "1048576 characters" in str(caught.value)
    answer = await client.post("/api/v1/executions", json={"action": "demo.huge"})
    assert answer.status_code == 400 and LIMIT_KEY in _fault(answer)
    # a secret's template is never quoted, but the limit is still named
    with pytest.raises(ParameterError, match=LIMIT_KEY) as secret:
        await squall.executions.request("demo.hugesecret")
    assert "'x' * 20000000" not in str(secret.value)
    assert await _stored(squall) == 0


async def test_templates_render_on_a_render_thread_and_plain_requests_do_not(squall: Squall) -> None:
    threads: list[str] = []
    squall.executions.jinja.filters["where"] = lambda value: threads.append(threading.current_thread().name) or value
    done = await squall.executions.request("demo.where")
    assert threads and threads[0].startswith("squall-render")
    assert threading.current_thread().name not in threads  # not the loop's thread
    assert done["parameters"] == {"text": "x"}
    # nothing to render: no hop (the same path as before, on the database's side)
    plain = await squall.executions.request("demo.plain", {"text": "{{ 'x' | where }}"})
    assert plain["parameters"] == {"text": "{{ 'x' | where }}"} and len(threads) == 1


async def test_healthz_answers_while_a_slow_template_renders(squall: Squall, client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def mark(value: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        return value

    squall.executions.jinja.filters["started"] = mark
    rendering = asyncio.ensure_future(client.post("/api/v1/executions", json={"action": "demo.slow"}))
    await asyncio.wait_for(started.wait(), 30)
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert not rendering.done()  # /healthz answered while the template was still rendering
    answer = await rendering
    assert answer.status_code == 400, answer.text
    assert TIME_KEY in _fault(answer) and "longer than 1 s" in _fault(answer)
    assert await _stored(squall) == 0


def test_a_slow_template_stops_at_the_time_limit() -> None:
    configure_limits(TemplateLimits(max_seconds=0.2))
    nested = "{% set xs = range(100000)|list %}{% for i in xs %}{% for j in xs %}{% endfor %}{% endfor %}"
    for template in (nested, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"):
        with pytest.raises(TemplateLimitError, match=TIME_KEY) as caught:
            render_template(template, {})
        assert "0.2 s" in caught.value.reason


_S = "{% set s = 'x' * 1000000 %}"
TOO_BIG = [
    "{{ 'x' * 20000000 }}",
    "{{ 2 ** 100000000 }}",
    "{% set ns = namespace(x=2) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    _S + "{% set a = s ~ s %}{{ a }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    _S + "{% set a = [s, s, s, s] %}{% set b = [a, a, a, a] %}{{ b }}",
    _S + "{{ [s, s]|join }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ ('a\n' * 100000)|indent(1000) }}",
    "{{ '%1000000000d'|format(1) }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ ('x' * 100000)|replace('x', 'y' * 1000) }}",
    "{{ ('x' * 100000)|regex_replace('x', 'y' * 100) }}",
    "{{ range(100000)|join('y' * 100) }}",
    "{% set l = [1] %}{% for i in range(40) %}{{ l.extend(l) }}{% endfor %}",
    _S + "{% macro m() %}{% for i in range(10) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
    _S + "{% set x %}{% for i in range(10) %}{{ s }}{% endfor %}{% endset %}{{ x|length }}",
    _S + "{% for i in range(10) %}{{ s }}{% endfor %}",
    "{{ lipsum(1000000) }}",
    "{{ ('x' * 1000)|list|tojson(indent=1000000) }}",
    "{{ ([['x' * 1000]] * 2000)|sum(start=[])|join }}",
    "{{ ('x' * 100000)|wordwrap(1, wrapstring='y' * 1000) }}",
    # a YAML document of aliases: tiny in memory, a terabyte as text
    "{{ 'a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]'"
    "|from_yaml_string }}",
]


@pytest.mark.parametrize("template", TOO_BIG)
def test_templates_that_would_make_too_much_are_refused_before_they_do(template: str) -> None:
    with pytest.raises(TemplateLimitError, match=LIMIT_KEY) as caught:
        render_template(template, {})
    assert "1048576 characters" in caught.value.reason


def test_ordinary_templates_are_unchanged() -> None:
    cases = {
        "{{ 'ab' * 3 }}-{{ 2 ** 10 }}-{{ 7 % 3 }}-{{ 'a' + 'b' }}-{{ [1, 2] + [3] }}": "ababab-1024-1-ab-[1, 2, 3]",
        "{{ '%05d'|format(42) }} {{ '{:>4}'.format(7) }} {{ '%s=%s' % ('k', 'v') }}": "00042    7 k=v",
        "{{ [[1, 2], [3]]|sum(start=[0]) }} {{ [1, 2, 3]|sum }} {{ range(3)|join(',') }}": "[0, 1, 2, 3] 6 0,1,2",
        "{{ (([[1]] * 100000)|sum(start=[]))|length }}": "100000",  # linear: sum() alone took 30 s here
        "{% for x in items %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}": "1a,2b",
        "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}": "10",
        "{{ 'a-b'|replace('-', '+') }} {{ 'x'|center(5) }}| {{ 'abc'|regex_replace('b', '[\\\\g<0>]') }}":
            "a+b   x  | a[b]c",
        "{{ {'k': [1, 2]}|tojson }} {{ items|length }} {{ 'x' ~ 1 ~ [2] }}": '{"k": [1, 2]} 2 x1[2]',
    }
    for template, expected in cases.items():
        assert render_template(template, {"items": ["a", "b"]}) == expected, template
    # limits are configurable: a smaller one refuses what the default allows
    configure_limits(TemplateLimits(max_output_chars=2048))
    with pytest.raises(TemplateLimitError, match="2048 characters"):
        render_template("{{ 'x' * 4096 }}", {})
    assert render_template("{{ 'x' * 2000 }}", {}) == "x" * 2000


def _limit_reason(template: str, context: dict[str, Any]) -> str:
    """The reason a render was refused for a limit."""
    with pytest.raises(TemplateLimitError) as caught:
        render_template(template, context)
    return caught.value.reason


def test_from_yaml_string_reads_within_the_limits() -> None:
    """`from_yaml_string` built what it read in Python, from any text, where no deadline reached:
    20,000 keys 2**61 - 1 apart (one hash value) held a render 3.9 s, a sexagesimal number of 100,000
    parts 4.5 s, 1.4 MB of rows 12 s. Its keys are weighed as `dict()`'s, its text, its aliases and its
    numbers are held to the limits, and the deadline reaches each node it reads."""
    modulus = sys.hash_info.modulus
    shared = "\n".join(f"{k * modulus + 1}: {k}" for k in range(1, 200))
    for doc in (shared, "!!set {" + ", ".join(str(k * modulus) for k in range(1, 200)) + "}",
                f"rows:\n- {{{', '.join(f'{k * modulus}: x' for k in range(1, 200))}}}"):
        reason = _limit_reason("{{ (doc|from_yaml_string)|length }}", {"doc": doc})
        assert "the keys given to from_yaml_string" in reason and "more than 64 different ones" in reason, reason
    reason = _limit_reason("{{ doc|from_yaml_string }}", {"doc": "x: 1" + ":1" * 3000})
    assert "sexagesimal number of 3001 parts" in reason and "at most 2150" in reason, reason
    reason = _limit_reason("{{ (doc|from_yaml_string)|length }}", {"doc": "a: &a [1, *a]"})
    assert "an alias inside the node its anchor names" in reason, reason

    configure_limits(TemplateLimits(max_output_chars=4096))
    reason = _limit_reason("{{ (doc|from_yaml_string)|length }}", {"doc": "- x\n" * 1100})
    assert "is 4400 characters long" in reason and f"4096 characters, the limit set by {LIMIT_KEY}" in reason
    laughs = ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]")
    reason = _limit_reason("{{ (doc|from_yaml_string)|length }}", {"doc": laughs})
    assert "aliases" in reason and f"more than 4096 characters or list items, the limit set by {LIMIT_KEY}" in reason

    # the deadline stops the reading: the error at the end of the text is never reached
    configure_limits(TemplateLimits(max_seconds=0.01))
    reason = _limit_reason("{{ (doc|from_yaml_string)|length }}", {"doc": "- x\n" * 200000 + "- [unclosed\n"})
    assert TIME_KEY in reason and "0.01 s" in reason


def test_from_yaml_string_reads_ordinary_documents_as_before() -> None:
    config = """
        defaults: &defaults
          retries: 3
          timeout: 1.5
        hosts:
          web1:
            <<: *defaults
            port: 8080
          web2: {<<: *defaults, timeout: 2.5}
        ids: [1, 0x10, 1:30, 2305843009213693952, 4611686018427387903, 0.5, 1.0e+3]
        7: seven
        2.5: two and a half
        tags: !!set {a, b}
        when: 2024-01-02
        same: [*defaults, *defaults]
    """.replace("\n        ", "\n")
    expected = yaml.safe_load(config)
    assert expected["hosts"]["web2"] == {"retries": 3, "timeout": 2.5} and expected["ids"][2] == 90
    assert render_template("{{ (doc|from_yaml_string) == expected }}", {"doc": config, "expected": expected}) == "True"
    assert render_template("{{ (doc|from_yaml_string).hosts.web1.port }}", {"doc": config}) == "8080"
    # keys 2**61 - 1 apart, but few enough that sharing a hash value cannot cost much
    few = "\n".join(f"{k * sys.hash_info.modulus}: {k}" for k in range(1, 60))
    assert render_template("{{ (doc|from_yaml_string)|length }}", {"doc": few}) == "59"
    # JSON's keys are text, hashed with the process's key: nothing for them to share
    keys = json.dumps({str(k * sys.hash_info.modulus): k for k in range(1, 2000)})
    assert render_template("{{ (doc|from_json_string)|length }}", {"doc": keys}) == "1999"


def test_the_config_sets_and_checks_the_limits(home: Path) -> None:
    write(home / "config.yml", "templates: {max_output_chars: 4096, max_seconds: 0.5}\n")
    config = load_config(home / "config.yml")
    assert config.template_limits == TemplateLimits(max_output_chars=4096, max_seconds=0.5)
    for bad, key in (("{max_seconds: 0}", "templates.max_seconds"), ("{max_seconds: yes}", "templates.max_seconds"),
                     ("{max_output_chars: 10}", "templates.max_output_chars"),
                     ("{max_output_chars: 1.5}", "templates.max_output_chars"),
                     ("{max_chars: 10}", "templates.max_chars")):
        write(home / "config.yml", f"templates: {bad}\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(home / "config.yml")
    write(home / "config.yml", "database: {url: 'sqlite:///data/s.db'}\n")
    assert load_config(home / "config.yml").template_limits == TemplateLimits()


# -- bad values get 400 before anything is stored ----------------------------------------------------

def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return root


async def test_bad_values_are_refused_before_anything_is_stored(squall: Squall, client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    bodies = [
        (json.dumps({"action": "demo.num", "parameters": {"o": _deep(900)}}), "902 levels deep; the limit is 64"),
        ('{"action": "demo.num", "parameters": {"s": "\\ud800"}}', "lone UTF-16 surrogate"),
        (b'{"action": "demo.num", "parameters": {"s": "\xed\xa0\x80"}}', "lone UTF-16 surrogate"),
        ('{"action": "demo.num", "parameters": {"n": 1e400}}', "out of range for a float"),
        ('{"action": "demo.num", "parameters": {"n": 1000000000000000000000000000000}}', "out of range"),
        ('{"action": "demo.num", "parameters": {"x": "1e400"}}', "not a finite number"),
        ('{"action": "demo.num", "parameters": {"x": "nan"}}', "not a finite number"),
        ('{"action": "demo.num", "parameters": {"o": {"k": [1, -100000000000000000000]}}}', "[1] = "),
        ('{"action": "demo.num", "parameters": {"n": "99999999999999999999"}}', "64 bits"),
    ]
    for body, expected in bodies:
        raw = body if isinstance(body, bytes) else body.encode()
        answer = await client.post("/api/v1/executions", content=raw, headers=headers)
        assert answer.status_code == 400, (body[:80], answer.text)
        assert expected in _fault(answer), (body[:80], _fault(answer))
    assert await _stored(squall) == 0
    # the same rules hold for callers inside the service (rules, workflows, the CLI)
    for parameters, expected in (({"o": _deep(900)}, "more than 100 levels deep"), ({"s": "a\ud800"}, "surrogate"),
                                 ({"x": float("inf")}, "not a finite number"), ({"n": 2 ** 64}, "out of range"),
                                 ({"n": 10 ** 5000}, "a 16610-bit number")):
        with pytest.raises(ParameterError, match=expected):
            await squall.executions.request("demo.num", parameters)
    assert await _stored(squall) == 0
    fine = await client.post("/api/v1/executions", json={"action": "demo.num", "parameters": {
        "n": 2 ** 63 - 1, "x": 1.5e308, "o": {"k": -(2 ** 63)}, "s": "\U0001f600"}})
    assert fine.status_code == 201, fine.text
    assert fine.json()["parameters"]["n"] == 2 ** 63 - 1


async def test_id_prefixes_are_a_bounded_range(squall: Squall, client: httpx.AsyncClient) -> None:
    record = await squall.executions.request("demo.plain")
    ident = record["id"]
    assert (await squall.executions.get(ident[:6].upper()))["id"] == ident
    assert await squall.db(squall.store.find_executions, ident[:6]) == [ident]
    for pattern in ("%", "_", ident[:4] + "%", ident[:4] + "_", "g", "", "a" * 40):
        assert await squall.db(squall.store.find_executions, pattern) == []
    answer = await client.get("/api/v1/executions/" + ident[:5] + "%25")
    assert answer.status_code == 404 and "not an execution id" in _fault(answer)


# -- the API's description and webhook signatures ----------------------------------------------------

async def test_docs_answer_without_a_key_by_default(anon: httpx.AsyncClient) -> None:
    for path in ("/openapi.json", "/docs", "/redoc", "/healthz"):
        assert (await anon.get(path)).status_code == 200, path
    assert (await anon.get("/api/v1/actions")).status_code == 401


async def test_public_docs_false_needs_a_key_for_the_description(home: Path) -> None:
    squall = await Squall.start(load_config(_home(home, "public_docs: false")))
    try:
        app = create_api(squall)
        async with _client(app) as anon, _client(app, **{"St2-Api-Key": KEY}) as client:
            assert (await anon.get("/openapi.json")).status_code == 401
            described = await client.get("/openapi.json")
            assert described.status_code == 200 and "/api/v1/executions" in described.json()["paths"]
            for path in ("/docs", "/redoc"):  # pages a browser loads without a key: not served
                assert (await anon.get(path)).status_code == 404
                assert (await client.get(path)).status_code == 404
            assert (await anon.get("/healthz")).status_code == 200
    finally:
        await squall.close()
    write(home / "config.yml", (home / "config.yml").read_text().replace("public_docs: false", "public_docs: 'no'"))
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        with pytest.raises(ConfigError, match=r"api\.public_docs"):
            create_api(squall)
    finally:
        await squall.close()


def _legacy(body: bytes) -> dict[str, str]:
    return {"X-Squall-Signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


async def test_webhook_signatures_carry_a_timestamp(squall: Squall, anon: httpx.AsyncClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"event": "push"}).encode()
    json_type = {"Content-Type": "application/json"}
    fresh = sign_webhook(SECRET, body)
    ok = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **fresh})
    assert ok.status_code == 202, ok.text
    assert "Deprecation" not in ok.headers
    stored = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    assert stored[0]["payload"]["body"] == {"event": "push"}
    assert "x-squall-signature" not in stored[0]["payload"]["headers_lower"]

    stale = sign_webhook(SECRET, body, time.time() - 301)
    answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **stale})
    assert answer.status_code == 401 and "s old" in _fault(answer) and "api.webhooks.signed.tolerance" in _fault(answer)
    ahead = sign_webhook(SECRET, body, time.time() + 301)
    answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **ahead})
    assert answer.status_code == 401 and "in the future" in _fault(answer)
    # the captured fresh request, replayed once the window has passed
    later = time.time() + 301
    monkeypatch.setattr("bot.http.webhook_signatures.time.time", lambda: later)
    answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **fresh})
    assert answer.status_code == 401 and "s old" in _fault(answer)
    monkeypatch.undo()

    tampered = await anon.post("/api/v1/webhooks/signed", content=body + b" ", headers={**json_type, **fresh})
    assert tampered.status_code == 401 and "does not match" in _fault(tampered)
    moved = {**fresh, "X-Squall-Timestamp": str(int(fresh["X-Squall-Timestamp"]) + 1)}
    answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **moved})
    assert answer.status_code == 401 and "does not match" in _fault(answer)  # the timestamp is signed too
    no_stamp = {"X-Squall-Signature": fresh["X-Squall-Signature"]}
    answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **no_stamp})
    assert answer.status_code == 401 and "X-Squall-Timestamp is missing" in _fault(answer)
    for stamp in ("soon", "-5", "1" * 40):
        answer = await anon.post("/api/v1/webhooks/signed", content=body,
                                 headers={**json_type, **fresh, "X-Squall-Timestamp": stamp})
        assert answer.status_code == 401 and "whole seconds since 1970" in _fault(answer)
    unsigned = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, "St2-Api-Key": KEY})
    assert unsigned.status_code == 401 and "X-Squall-Timestamp" in _fault(unsigned)

    # a hook's own window
    answer = await anon.post("/api/v1/webhooks/short", content=body,
                             headers={**json_type, **sign_webhook(SECRET, body, time.time() - 20)})
    assert answer.status_code == 401 and "accepted for 10 s" in _fault(answer)
    answer = await anon.post("/api/v1/webhooks/short", content=body,
                             headers={**json_type, **sign_webhook(SECRET, body)})
    assert answer.status_code == 202


async def test_a_signed_request_sent_again_fires_nothing(squall: Squall, anon: httpx.AsyncClient,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Within its window a captured request passes the signature check, but the delivery it names was
    accepted already: 200 with the first instance, nothing stored or run again. Signed anew (another
    timestamp), or for another hook, it is another delivery."""
    body = json.dumps({"event": "deploy"}).encode()
    json_type = {"Content-Type": "application/json"}
    signed = {**json_type, **sign_webhook(SECRET, body)}
    first = await anon.post("/api/v1/webhooks/signed", content=body, headers=signed)
    assert first.status_code == 202 and "X-Squall-Duplicate" not in first.headers
    instance = first.headers[INSTANCE_HEADER]
    await squall.rules.settle()
    with caplog.at_level(logging.WARNING, logger="bot.http.webhooks"):
        for _ in range(2):
            again = await anon.post("/api/v1/webhooks/signed", content=body, headers=signed)
            assert again.status_code == 200 and again.headers["X-Squall-Duplicate"] == "true"
            assert again.headers[INSTANCE_HEADER] == instance and again.json() == {"event": "deploy"}
    assert [r for r in caplog.records if instance in r.getMessage() and "came again" in r.getMessage()]
    await squall.rules.settle()
    stored = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    assert [i["id"] for i in stored] == [instance]
    assert len(await squall.executions.list(action="demo.num")) == 1

    resigned = {**json_type, **sign_webhook(SECRET, body, time.time() + 1)}
    assert (await anon.post("/api/v1/webhooks/signed", content=body, headers=resigned)).status_code == 202
    other_hook = await anon.post("/api/v1/webhooks/strict", content=body, headers=signed)  # same secret
    assert other_hook.status_code == 202 and other_hook.headers[INSTANCE_HEADER] != instance
    await squall.rules.settle()
    assert len(await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")) == 3
    # not signed with a secret (an API key instead): each request is its own delivery, as before
    keyed = {**json_type, "St2-Api-Key": KEY}
    st2_body = json.dumps({"trigger": "core.st2.webhook", "payload": {"a": 1}}).encode()
    answers = [await anon.post("/api/v1/webhooks/st2", content=st2_body, headers=keyed) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].headers[INSTANCE_HEADER] != answers[1].headers[INSTANCE_HEADER]


async def test_the_old_signature_is_accepted_with_a_deprecation(squall: Squall, anon: httpx.AsyncClient,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"event": "push"}'
    json_type = {"Content-Type": "application/json"}
    with caplog.at_level(logging.WARNING, logger="bot.http.webhook_signatures"):
        for _ in range(2):
            answer = await anon.post("/api/v1/webhooks/signed", content=body, headers={**json_type, **_legacy(body)})
            assert answer.status_code == 202 and answer.headers["Deprecation"] == "true"
    warnings = [r for r in caplog.records if "deprecated sha256= scheme" in r.getMessage()]
    assert len(warnings) == 1 and "signed" in warnings[0].getMessage()  # once per hook
    wrong = await anon.post("/api/v1/webhooks/signed", content=body + b" ", headers={**json_type, **_legacy(body)})
    assert wrong.status_code == 401 and "does not match" in _fault(wrong)
    # a hook may refuse it already
    answer = await anon.post("/api/v1/webhooks/strict", content=body, headers={**json_type, **_legacy(body)})
    assert answer.status_code == 401 and "api.webhooks.strict.legacy_signature" in _fault(answer)
    answer = await anon.post("/api/v1/webhooks/strict", content=body,
                             headers={**json_type, **sign_webhook(SECRET, body)})
    assert answer.status_code == 202


async def test_a_bad_tolerance_is_a_config_error(home: Path) -> None:
    config = _home(home)
    config.write_text(config.read_text().replace("tolerance: 10", "tolerance: -1"))
    squall = await Squall.start(load_config(config))
    try:
        with pytest.raises(ConfigError, match=r"api\.webhooks\.short\.tolerance"):
            create_api(squall)
    finally:
        await squall.close()


def test_expressions_keep_to_the_limits_too() -> None:
    """Orquesta's Jinja expressions compile to callables (`compile_expression`), not renders."""
    env = build_environment()
    assert env.compile_expression("'ab' * 2")() == "abab"
    with pytest.raises(TemplateLimitError, match=LIMIT_KEY):
        env.compile_expression("'x' * 20000000")()
    configure_limits(TemplateLimits(max_seconds=0.2))
    with pytest.raises(TemplateLimitError, match=TIME_KEY):
        env.compile_expression("range(100000)" + "|map('string')" * 20 + "|list|length")()
    assert undeclared_variables(env, "{{ a ~ 'x' * 20000000 }}{% for i in b %}{{ c }}{% endfor %}") == {"a", "b", "c"}


def test_render_errors_are_still_render_errors() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_template("{{ nope }}", {})
    assert not isinstance(caught.value, TemplateLimitError)
