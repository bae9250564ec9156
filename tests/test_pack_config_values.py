"""Pack config values as Python actions get them (spec §9.2): secrets kept out of every output,
dynamic values (`{{ st2kv.system.x }}`, `{{ st2kv.user.x }}`, `decrypt_kv`) rendered per run.

StackStorm's `ContentPackConfigLoader` renders each config string that holds `{{` or `{%` for the
execution's user when the run starts, and decrypts values whose schema says `secret: true`. Its
Python wrapper configures the action's own logger only, so a library's DEBUG lines (urllib3 writing
a request line, query string and its `api_key` included) never reach an execution's stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.pack_config import config_facts, render_dynamic_config
from engine.parameters import MASK, ParameterError
from tests.conftest import write

PACK = "cfgvalues"
API_KEY = "S3cr3tK3y-do-not-leak"
NESTED_PASSWORD = "nested-Pa55word-do-not-leak"
LISTED_TOKEN = "listed-T0ken-do-not-leak"
KV_TOKEN = "kv-Tok3n-encrypted-secret"
KV_PASSWORD = "kv-Pa55-decrypt-kv-secret"


@pytest.fixture
def home(home: Path) -> Path:
    """A pack whose config holds secrets (top level, nested, in a list) and dynamic values."""
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"name: {PACK}\ndescription: config values\nversion: 0.1.0\nauthor: tests\n")
    write(pack / "config.schema.yaml", """
        api_key: {type: string, secret: true, required: true}
        auth:
          type: object
          properties:
            user: {type: string}
            password: {type: string, secret: true}
        tokens:
          type: array
          items: {type: string, secret: true}
        token:
          type: string
          secret: true
          default: "{{ st2kv.system.cfg_token }}"
        region: {type: string}
        api:
          type: object
          properties:
            password: {type: string}
            url: {type: string}
        hosts: {type: array, items: {type: string}}
        mine: {type: string}
        plain: {type: string, secret: true}
        literal: {type: string}
        empty: {type: string}
        count: {type: integer}
    """)
    write(home / "configs" / f"{PACK}.yaml", f"""
        api_key: "{API_KEY}"
        auth: {{user: bob, password: "{NESTED_PASSWORD}"}}
        tokens: ["{LISTED_TOKEN}"]
        region: "{{{{ st2kv.system.cfg_region }}}}"
        api:
          password: "{{{{ st2kv.system.cfg_password | decrypt_kv }}}}"
          url: "https://{{{{ st2kv.system.cfg_host }}}}/v1"
        hosts: ["{{{{ st2kv.system.cfg_host }}}}", static.example]
        mine: "{{{{ st2kv.user.cfg_mine }}}}"
        plain: "{{{{ st2kv.system.cfg_plain }}}}"
        literal: "{{ not a template }}"
        empty: "{{{{ st2kv.system.cfg_never_set }}}}"
        count: 3
    """)
    write(pack / "actions" / "logs.py", """
        import logging

        from st2common.runners.base_action import Action

        LIBRARY = logging.getLogger("urllib3.connectionpool")


        class Logs(Action):
            def run(self):
                LIBRARY.debug('http://127.0.0.1:80 "GET /status?api_key=%s HTTP/1.1" 200 0', self.config["api_key"])
                LIBRARY.info("library info line")
                LIBRARY.warning("library warning line")
                self.logger.debug("debug via self.logger")
                self.logger.info("info via self.logger, key %s", self.config["api_key"])
                print("password", self.config["auth"]["password"], "token", self.config["tokens"][0])
                return {"key": self.config["api_key"], "password": self.config["auth"]["password"],
                        "token": self.config["tokens"][0]}
    """)
    write(pack / "actions" / "logs.yaml", "name: logs\nrunner_type: python-script\nentry_point: logs.py\n")
    write(pack / "actions" / "show.py", f"""
        from st2common.runners.base_action import Action


        class Show(Action):
            def run(self):
                config = dict(self.config)
                return {{
                    "token_ok": config["token"] == "{KV_TOKEN}",
                    "plain_ok": config["plain"] == "plain-kv-value",
                    "password_ok": config["api"]["password"] == "{KV_PASSWORD}",
                    "token": config["token"],
                    "api": config["api"],
                    **{{key: config[key] for key in ("region", "hosts", "mine", "plain", "literal", "empty",
                                                      "count")}},
                }}
    """)
    write(pack / "actions" / "show.yaml", "name: show\nrunner_type: python-script\nentry_point: show.py\n")
    return home


async def _run(squall: Squall, name: str, params: dict[str, Any] | None = None,
               user: str = "alice") -> dict[str, Any]:
    record = await squall.executions.request(f"{PACK}.{name}", params or {}, {"user": user})
    return await squall.executions.wait(record["id"], timeout=60)


def _output(squall: Squall, execution_id: str) -> str:
    return "".join(row["data"] for row in squall.db.store.execution_output_list(execution_id, limit=100_000))


async def _set_keys(squall: Squall) -> None:
    ds = squall.datastore
    await squall.db(ds.set, "cfg_token", KV_TOKEN, encrypt=True)
    await squall.db(ds.set, "cfg_password", KV_PASSWORD, encrypt=True)
    await squall.db(ds.set, "cfg_region", "eu-west-1")
    await squall.db(ds.set, "cfg_host", "api.example")
    await squall.db(ds.set, "cfg_plain", "plain-kv-value")
    await squall.db(ds.set, "cfg_mine", "alice-own-value", scope="user", user="alice")


async def test_library_debug_lines_stay_out_and_secret_config_values_are_masked(squall: Squall) -> None:
    await _set_keys(squall)
    done = await _run(squall, "logs")
    assert done["status"] == "succeeded", done
    stderr = done["result"]["stderr"]
    # A library's logger is not the action's: its DEBUG and INFO lines are not captured, as in StackStorm
    # (Python's last resort still writes its warnings).
    assert "GET /status" not in stderr and "library info line" not in stderr
    assert "library warning line" in stderr
    # The action's own logger, named and formatted as StackStorm's, at the run's level (DEBUG by default).
    assert "actions.python.Logs: DEBUG    debug via self.logger" in stderr
    assert f"actions.python.Logs: INFO     info via self.logger, key {MASK}" in stderr
    assert done["result"]["result"] == {"key": MASK, "password": MASK, "token": MASK}
    assert done["result"]["stdout"] == f"password {MASK} token {MASK}\n"
    for secret in (API_KEY, NESTED_PASSWORD, LISTED_TOKEN):
        assert secret not in json.dumps(done), secret
        assert secret not in _output(squall, done["id"]), secret

    quiet = await _run(squall, "logs", {"log_level": "INFO"})
    assert "debug via self.logger" not in quiet["result"]["stderr"]
    assert f"info via self.logger, key {MASK}" in quiet["result"]["stderr"]


async def test_dynamic_config_values_are_rendered_for_the_runs_user(squall: Squall) -> None:
    await _set_keys(squall)
    done = await _run(squall, "show")
    assert done["status"] == "succeeded", done
    result = done["result"]["result"]
    assert result["token_ok"] and result["password_ok"]  # decrypted: the schema's secret, and decrypt_kv
    assert result["token"] == MASK and result["api"]["password"] == MASK  # and masked where they come back
    assert result["api"]["url"] == "https://api.example/v1"
    assert result["region"] == "eu-west-1"
    assert result["hosts"] == ["api.example", "static.example"]
    assert result["mine"] == "alice-own-value"  # st2kv.user: the execution's user
    # a secret item reading an unencrypted key gets it as it is, and it is masked as the item's other values
    assert result["plain_ok"] and result["plain"] == MASK
    assert result["literal"] == "{ not a template }"
    assert result["empty"] is None  # rendered empty: None, as StackStorm's loader makes it
    assert result["count"] == 3
    assert KV_TOKEN not in json.dumps(done) and KV_PASSWORD not in json.dumps(done)

    other = await _run(squall, "show", user="bob")
    assert other["result"]["result"]["mine"] is None  # bob has no such key of his own

    # The pack's loaded config is left as written: the next run renders it again.
    assert squall.registry.packs[PACK].config["region"] == "{{ st2kv.system.cfg_region }}"


async def test_a_config_value_that_cannot_render_fails_the_run_naming_its_key(squall: Squall, home: Path) -> None:
    config = home / "configs" / f"{PACK}.yaml"
    config.write_text(config.read_text().replace(NESTED_PASSWORD, "p4ss{{word"))
    squall.reload()
    done = await _run(squall, "show")
    assert done["status"] == "failed"
    error = done["result"]["error"]
    assert 'config key "auth.password"' in error and PACK in error
    assert "p4ss" not in json.dumps(done)  # a secret item's text is never quoted

    config.write_text(config.read_text().replace("p4ss{{word", "x").replace(
        "{{ st2kv.system.cfg_region }}", "{{ st2kv.system.cfg_never_set | decrypt_kv }}"))
    squall.reload()
    done = await _run(squall, "show")
    assert done["status"] == "failed"
    assert 'config key "region"' in done["result"]["error"]
    assert "st2kv.system.cfg_never_set" in done["result"]["error"]


def test_render_dynamic_config_follows_stackstorms_schema_rules() -> None:
    """Nested objects (properties, patternProperties, additionalProperties) and arrays (items,
    positional items, additionalItems) find a value's schema as StackStorm's loader does; only
    strings holding `{{` or `{%` are rendered, and each is told whether its item is secret."""
    schema = {
        "servers": {"type": "object", "patternProperties": {"^prod": {"secret": True}},
                    "additionalProperties": {"type": "string"}},
        "pair": {"type": "array", "items": [{"type": "string"}, {"secret": True}]},
        "rest": {"type": "array", "items": [{"type": "string"}], "additionalItems": {"secret": True}},
    }
    config = {"servers": {"prod-1": "{{ a }}", "dev": "{{ b }}"}, "pair": ["{{ c }}", "{% d %}"],
              "rest": ["{{ e }}", "{{ f }}", "{{ g }}"], "static": "no braces", "n": 5}
    seen: list[tuple[str, bool]] = []

    def render(template: str, secret: bool) -> str:
        seen.append((template, secret))
        return template.upper()

    rendered = render_dynamic_config(PACK, config, schema, render)
    assert sorted(seen) == [("{% d %}", True), ("{{ a }}", True), ("{{ b }}", False), ("{{ c }}", False),
                            ("{{ e }}", False), ("{{ f }}", True), ("{{ g }}", True)]
    assert rendered["servers"] == {"prod-1": "{{ A }}", "dev": "{{ B }}"}
    assert rendered["static"] == "no braces" and rendered["n"] == 5
    assert config["servers"]["prod-1"] == "{{ a }}"  # the pack's config is not changed

    def failing(template: str, secret: bool) -> str:
        raise ParameterError("undefined")

    with pytest.raises(ParameterError, match=r'pack "cfgvalues" config key "rest\.1": .*undefined'):
        render_dynamic_config(PACK, {"rest": ["x", "{{ y }}"]}, schema, failing)


def test_config_facts_find_secret_values_at_any_depth_but_not_flags_or_templates() -> None:
    schema = {"key": {"secret": True}, "auth": {"type": "object", "secret": True},
              "pins": {"type": "array", "items": {"secret": True}}, "open": {"type": "string"}}
    config = {"key": "{{ st2kv.system.k }}", "auth": {"password": "pw-1234", "enabled": True, "port": 8443},
              "pins": [12345, None], "open": "not secret"}
    assert config_facts(config, schema) == (True, ["pw-1234", 8443, 12345])
    assert config_facts({"open": "x"}, schema) == (False, [])
