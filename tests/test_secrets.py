"""A planted secret must not appear in any output channel, yet reach the action that needs it."""

from __future__ import annotations

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
