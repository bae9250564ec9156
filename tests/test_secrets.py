"""A planted secret must not appear in any output channel, yet reach the action that needs it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
from pathlib import Path

from tests.conftest import write
from tests.test_cli import SQUALL, _poll, squall

PARAM_SECRET = "pw-Zq83-kestrel-parameter"
STORED_SECRET = "kv-Wm41-heron-datastore"


def _pack(home: Path) -> None:
    write(home / "packs" / "vault" / "pack.yaml", "ref: vault\nname: vault\ndescription: d\nversion: 1.0.0\n"
                                                  "author: t\n")
    # A shell action that echoes and logs its secret, and records a digest to prove it got it.
    write(home / "packs" / "vault" / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          password: {type: string, secret: true, required: true}
          stored: {type: string, default: "{{ st2kv.system.api_key | decrypt_kv }}"}
          proof: {type: string, required: true}
          cmd:
            immutable: true
            default: >-
              echo "using {{password}} and {{stored}}";
              echo "stderr {{password}}" >&2;
              printf %s "{{password}}|{{stored}}" | sha256sum | cut -c1-64 > "{{proof}}"
    """)
    # A Python action that returns, prints and logs it.
    write(home / "packs" / "vault" / "actions" / "leak.yaml", """
        name: leak
        runner_type: python-script
        entry_point: leak.py
        parameters:
          password: {type: string, secret: true, required: true}
    """)
    write(home / "packs" / "vault" / "actions" / "leak.py", """
        from st2common.runners.base_action import Action

        class Leak(Action):
            def run(self, password):
                print("printing", password)
                self.logger.error("logging %s", password)
                stored = self.action_service.get_value("api_key", local=False, decrypt=True)
                return {"echo": password, "stored": stored}
    """)


def test_secrets_never_reach_an_output_channel(home: Path) -> None:
    _pack(home)
    outputs: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = squall(home, *args)
        outputs.append(done.stdout + done.stderr)
        return done

    assert cli("key", "set", "api_key", STORED_SECRET, "--encrypt").returncode == 0
    proof = home / "proof.txt"
    ran = cli("run", "vault.login", f"password={PARAM_SECRET}", f"proof={proof}", "--json")
    assert ran.returncode == 0, ran.stderr
    record = json.loads(ran.stdout)
    expected = hashlib.sha256(f"{PARAM_SECRET}|{STORED_SECRET}".encode()).hexdigest()
    assert proof.read_text().strip() == expected  # the action received both real values
    assert record["parameters"]["password"] == "********"
    assert "********" in record["result"]["stdout"] and "********" in record["result"]["stderr"]

    leaked = cli("run", "vault.leak", f"password={PARAM_SECRET}", "--json")
    assert leaked.returncode == 0, leaked.stderr
    result = json.loads(leaked.stdout)["result"]
    assert result["result"] == {"echo": "********", "stored": "********"}
    assert "printing ********" in result["stdout"] and "logging ********" in result["stderr"]

    cli("run", "vault.login", f"password={PARAM_SECRET}", f"proof={proof}")  # the human-readable form
    cli("execution", "list", "--json")
    cli("execution", "list")
    cli("execution", "get", record["id"], "--json")
    cli("execution", "get", record["id"])
    cli("key", "list", "--json")
    cli("key", "list")
    cli("key", "get", "api_key", "--json")
    cli("action", "get", "vault.login", "--json")
    rerun = cli("execution", "re-run", record["id"], "--json")
    assert rerun.returncode == 0 and proof.read_text().strip() == expected
    bad = cli("run", "vault.login", f"password={PARAM_SECRET}", "proof=/x", "unknown=1")
    assert bad.returncode == 2

    # The service's own log, at INFO, while it runs a stored request with the secret.
    queued = json.loads(cli("run", "vault.leak", f"password={PARAM_SECRET}", "--async", "--json").stdout)
    server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "-v", "serve"], cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _poll(home, queued["id"], lambda r: r["status"] == "succeeded")["result"]["result"]["echo"] \
            == "********"
    finally:
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=20)
    outputs.append(log)

    everything = "\n".join(outputs)
    assert PARAM_SECRET not in everything
    assert STORED_SECRET not in everything
    # And at rest: the database and its WAL hold neither in clear.
    for file in (f for f in (home / "data").glob("squall.db*") if f.is_file()):
        data = file.read_bytes()
        assert PARAM_SECRET.encode() not in data, file
        assert STORED_SECRET.encode() not in data, file


def test_scrub_masks_secrets_in_numbers_booleans_and_keys() -> None:
    """The shell runner stores an action's JSON stdout decoded: a numeric secret echoed is an int there,
    and a secret may be a key; both are masked as a string would be."""
    from engine.executions import scrub
    from engine.parameters import MASK

    secrets = ["84736251", "tok-s3cr3t", "true"]
    assert scrub(84736251, secrets) == MASK
    assert scrub(847362519.5, secrets) == MASK  # the secret is part of the number's text
    assert scrub(True, secrets) == MASK  # printed as JSON `true`
    assert scrub({"tok-s3cr3t": "ok", "n": 84736251, "list": [84736251, 7]}, secrets) == {
        MASK: "ok", "n": MASK, "list": [MASK, 7]}
    assert scrub({"prefix-tok-s3cr3t": 1}, secrets) == {f"prefix-{MASK}": 1}
    # numbers that do not hold a secret, null and other keys stay as they are
    assert scrub({"a": 1, "b": 2.5, "c": None, "d": False, 3: "x"}, secrets) == {
        "a": 1, "b": 2.5, "c": None, "d": False, 3: "x"}
    assert scrub({"a": 84736251}, []) == {"a": 84736251}


# -- errors of a request: a decrypted datastore value is quoted in none ---------------------------------

CAST_SECRET = "kv-Qx71-plover-cast"
CAST_KEY = "cast-api-key"


def _cast_home(home: Path) -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          keys: [{CAST_KEY}]
    """)
    pack = home / "packs" / "kvc"
    write(pack / "pack.yaml", "ref: kvc\nname: kvc\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    actions = {
        # a pack author's mistake: a non-secret integer defaults to a decrypted key that is no number
        "count": {"n": {"type": "integer", "default": "{{ st2kv.system.dbpass | decrypt_kv }}"}},
        "given": {"n": {"type": "integer"}},
        "upper": {"n": {"type": "integer", "default": "{{ (st2kv.system.dbpass | decrypt_kv) | upper }}"}},
        "nested": {"s": {"type": "string", "default": "{{ st2kv.system.dbpass | decrypt_kv }}"},
                   "n": {"type": "integer", "default": "{{ s }}"},
                   "o": {"type": "object", "default": '{"a": {{ s | int }}}'}},
        "bounded": {"n": {"type": "string", "maxLength": 3,
                          "default": "{{ st2kv.system.dbpass | decrypt_kv }}"}},
        "cipher": {"n": {"type": "integer", "default": "{{ st2kv.system.dbpass }}"}},
        "short": {"n": {"type": "integer", "default": "{{ st2kv.system.pin | decrypt_kv }}"}},
        "badjinja": {"n": {"type": "string",
                           "default": "{{ (st2kv.system.dbpass | decrypt_kv) | from_json_string }}"}},
        # Jinja's own message quotes the key it did not find
        "badkey": {"n": {"type": "string", "default": "{{ {'a': 1}[st2kv.system.dbpass | decrypt_kv] + 1 }}"}},
        "badshort": {"n": {"type": "string", "default": "{{ {'a': 1}[st2kv.system.pin | decrypt_kv] + 1 }}"}},
    }
    for name, parameters in actions.items():
        write(pack / "actions" / f"{name}.yaml", json.dumps({"name": name, "runner_type": "noop",
                                                            "parameters": parameters}))
    write(pack / "rules" / "kv.yaml", """
        name: kv
        pack: kvc
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: kv}}
        action: {ref: kvc.given, parameters: {n: "{{ st2kv.system.dbpass | decrypt_kv }}"}}
    """)
    write(pack / "aliases" / "count.yaml", "name: count\npack: kvc\naction_ref: kvc.count\nformats: [count]\n")
    return home / "config.yml"


async def test_a_failed_cast_quotes_no_decrypted_datastore_value(home: Path, caplog) -> None:
    """A decrypted datastore value that fails its parameter's cast or schema (the parameter is not
    `secret`) reaches no error: not the API's answer, the alias path's, the rule enforcement's
    `failure_reason`, the log, nor the exception's chain (which the trace records)."""
    import logging
    import traceback

    import httpx
    import pytest

    from bot.app import Squall
    from bot.http import create_api
    from engine.config import load_config
    from engine.parameters import MASK, ParameterError
    from engine.storage import utcnow

    app = await Squall.start(load_config(_cast_home(home)))
    caplog.set_level(logging.DEBUG)
    try:
        await asyncio.to_thread(app.datastore.set, "dbpass", CAST_SECRET, encrypt=True)
        await asyncio.to_thread(app.datastore.set, "pin", "x7", encrypt=True)
        errors: list[str] = []
        for ref in ("count", "upper", "nested", "bounded", "cipher", "short", "badjinja", "badkey", "badshort"):
            with pytest.raises(ParameterError) as caught:
                await app.executions.request(f"kvc.{ref}")
            chain = "".join(traceback.format_exception(caught.value))
            errors.append(chain)
            assert caught.value.__cause__ is None, ref
            assert 'parameter "n"' in str(caught.value) or 'parameter "o"' in str(caught.value), ref
        assert f'parameter "n": {MASK} is not an integer' in errors[0]  # still says what was wrong
        ciphertext = (await asyncio.to_thread(app.store.kv_get, "system", "dbpass", utcnow()))["value"]
        assert ciphertext not in errors[4]  # a secret key's ciphertext, which Squall shows nobody
        assert "x7" not in errors[5] and "x7" not in errors[8]

        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                     headers={"St2-Api-Key": CAST_KEY}) as client:
            direct = await client.post("/api/v1/executions", json={"action": "kvc.count"})
            assert direct.status_code == 400 and MASK in direct.text
            alias = await client.post("/api/v1/aliasexecution", json={"command": "count", "user": "alice",
                                                                      "source_channel": "ops"})
            assert alias.status_code == 400 and MASK in alias.text
            hook = await client.post("/api/v1/webhooks/kv", json={})
            assert hook.status_code in (200, 202), hook.text
            await app.rules.settle(timeout=20)
            enforcements = await client.get("/api/v1/ruleenforcements", params={"rule": "kvc.kv"})
            reasons = [e["failure_reason"] for e in enforcements.json()]
            assert reasons and all(MASK in reason for reason in reasons), reasons
            everything = "\n".join([*errors, direct.text, alias.text, enforcements.text, caplog.text])
    finally:
        await app.close()
    assert CAST_SECRET not in everything and CAST_SECRET.upper() not in everything


def test_an_error_whose_cause_quotes_a_revealed_value_is_told_masked() -> None:
    """The last guard of `ExecutionService._resolve`: any error of a request whose message or causes
    quote what `decrypt_kv` revealed is raised again masked, with no cause to show the clear text."""
    import traceback

    from engine.executions import _scrubbed_error
    from engine.parameters import MASK, ParameterError

    try:
        try:
            raise ValueError(f"bad value {CAST_SECRET!r}")
        except ValueError as inner:
            raise ParameterError(f'parameter "env": {CAST_SECRET} is refused') from inner
    except ParameterError as exc:
        problem = _scrubbed_error(exc, [CAST_SECRET, "ab"])
    assert str(problem) == f'parameter "env": {MASK} is refused' and problem.__cause__ is None
    assert CAST_SECRET not in "".join(traceback.format_exception(problem))
    clean = ParameterError('parameter "n" is required')
    assert _scrubbed_error(clean, [CAST_SECRET]) is clean and _scrubbed_error(clean, []) is clean
