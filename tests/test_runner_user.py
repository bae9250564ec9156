"""Not root by default: `runners.user` and `runners.allow_root` (StackStorm's `system_user`).

Run as root (CI is), local shell and Python actions start as `runners.user` (here `nobody`, who
exists on Debian) with its groups and HOME/USER/LOGNAME, or as root with `runners.allow_root`;
with neither, `squall serve` says so once at start. `nobody` cannot enter pytest's tmp_path
(/tmp/pytest-of-root is 0700), so these packs live in a world-readable folder of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import service
from bot.app import Squall
from engine.config import Config, ConfigError, load_config
from tests.conftest import free_port, write

USER = "nobody"
PACK = "runas"
PLAIN = "plainpy"  # a Python pack without a virtualenv: Squall's own interpreter
ROOT_WARNING = "actions run as root"

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI runs as root)")


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"there is no user '{USER}' on this host")


def _runs_as(python: str, user: str) -> bool:
    """Whether `user` can start this interpreter (one under /root is closed to others)."""
    try:
        subprocess.run([python, "-c", "import json, logging"], user=user, cwd="/", check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _interpreter_for(user: str) -> str | None:
    """A Python `user` can run: Squall's own, else the system's (the worker is standard library only)."""
    for candidate in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _runs_as(candidate, user):
            return candidate
    return None


def _write_packs(home: Path, python: str | None) -> None:
    for pack in (PACK, PLAIN):
        write(home / "packs" / pack / "pack.yaml", f"""
            name: {pack}
            description: runners.user test pack
            version: 0.1.0
            author: tests
        """)
    actions = home / "packs" / PACK / "actions"
    for name, cmd in {
        "whoami": "id -un",
        "environment": 'printf \'{"HOME": "%s", "USER": "%s", "LOGNAME": "%s", "PWD": "%s"}\' '
                       '"$HOME" "$USER" "$LOGNAME" "$PWD"',
        "touch": "touch {{ path }}",
    }.items():
        write(actions / f"{name}.yaml", f"""
            name: {name}
            runner_type: local-shell-cmd
            parameters:
              path:
                type: string
              cmd:
                immutable: true
                default: {json.dumps(cmd)}
        """)
    identity = """
        import os

        from st2common.runners.base_action import Action


        class Identity(Action):
            def run(self, path=None):
                if path:
                    with open(path, "w") as handle:
                        handle.write("made by the action")
                return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                        "HOME": os.environ.get("HOME"), "USER": os.environ.get("USER"),
                        "LOGNAME": os.environ.get("LOGNAME")}
    """
    for pack in (PACK, PLAIN):
        write(home / "packs" / pack / "actions" / "identity.py", identity)
        write(home / "packs" / pack / "actions" / "identity.yaml", """
            name: identity
            runner_type: python-script
            entry_point: identity.py
            parameters:
              path:
                type: string
        """)
    if python is not None and python != sys.executable:
        # The pack's "virtualenv" is an interpreter the user can run.
        venv_bin = home / "data" / "virtualenvs" / PACK / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "python").symlink_to(python)


@pytest.fixture
def readable_home() -> Iterator[Path]:
    """A folder `nobody` can read (tmp_path's parent is 0700), with a folder it may write to."""
    folder = Path(tempfile.mkdtemp(prefix="squall-runas-"))
    try:
        folder.chmod(0o755)
        (folder / "packs").mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _config(home: Path, runners: str) -> Config:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          enabled: false
          port: {free_port()}
    """)
    with open(home / "config.yml", "a") as handle:
        handle.write(runners + "\n")
    return load_config(home / "config.yml")


@contextlib.asynccontextmanager
async def started(config: Config) -> AsyncIterator[Squall]:
    app = await Squall.start(config)
    try:
        yield app
    finally:
        await app.close()


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    return await app.executions.wait(record["id"], timeout=60)


# -- as runners.user ----------------------------------------------------------------------------

@as_root
async def test_actions_run_as_the_configured_user(readable_home: Path) -> None:
    nobody = _nobody()
    python = _interpreter_for(USER)
    if python is None:
        pytest.skip(f"no Python interpreter here that '{USER}' may run")
    _write_packs(readable_home, python)
    out = readable_home / "out"
    out.mkdir()
    os.chown(out, nobody.pw_uid, nobody.pw_gid)
    config = _config(readable_home, f"runners:\n  user: {USER}")
    assert config.runner_user == USER
    async with started(config) as app:
        assert app.run_as is not None and app.run_as.uid == nobody.pw_uid

        done = await run(app, f"{PACK}.whoami")
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["stdout"] == USER

        done = await run(app, f"{PACK}.environment")
        assert done["status"] == "succeeded", done["result"]
        expected_dir = nobody.pw_dir if os.path.isdir(nobody.pw_dir) else "/"
        assert done["result"]["stdout"] == {"HOME": nobody.pw_dir, "USER": USER, "LOGNAME": USER,
                                            "PWD": expected_dir}

        done = await run(app, f"{PACK}.touch", {"path": str(out / "from-shell")})
        assert done["status"] == "succeeded", done["result"]
        assert (out / "from-shell").stat().st_uid == nobody.pw_uid

        done = await run(app, f"{PACK}.identity", {"path": str(out / "from-python")})
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["result"] == {"uid": nobody.pw_uid, "euid": nobody.pw_uid, "gid": nobody.pw_gid,
                                            "HOME": nobody.pw_dir, "USER": USER, "LOGNAME": USER}
        assert (out / "from-python").stat().st_uid == nobody.pw_uid

        # The user may not write where it has no right to: the service's folder is root's.
        done = await run(app, f"{PACK}.touch", {"path": str(readable_home / "not-yours")})
        assert done["status"] == "failed"
        assert "Permission denied" in done["result"]["stderr"]
        assert not (readable_home / "not-yours").exists()


@as_root
async def test_a_worker_the_user_cannot_start_fails_with_a_clear_error(readable_home: Path) -> None:
    _nobody()
    if _runs_as(sys.executable, USER):
        pytest.skip(f"'{USER}' can run Squall's interpreter here, so the worker starts")
    _write_packs(readable_home, None)
    async with started(_config(readable_home, f"runners:\n  user: {USER}")) as app:
        done = await run(app, f"{PLAIN}.identity")
    assert done["status"] == "failed"
    error = done["result"]["error"]
    assert f"user '{USER}' (runners.user)" in error
    assert "Permission denied" in error


# -- as root ------------------------------------------------------------------------------------

@as_root
async def test_allow_root_runs_actions_as_root(readable_home: Path) -> None:
    _write_packs(readable_home, None)
    config = _config(readable_home, "runners:\n  allow_root: true")
    assert config.allow_root and config.runner_user is None
    assert service.action_user_warning(config) is None
    async with started(config) as app:
        assert app.run_as is None
        done = await run(app, f"{PACK}.whoami")
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["stdout"] == "root"
        done = await run(app, f"{PLAIN}.identity")
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["result"]["uid"] == 0


@as_root
async def test_serve_as_root_with_neither_key_warns_once(readable_home: Path, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "settle_heap", lambda: None)  # no gc.freeze() in the test process
    config = _config(readable_home, "")
    caplog.set_level(logging.INFO, logger="squall")
    task = asyncio.create_task(service.serve_forever(config, adapters=[]))
    try:
        async with asyncio.timeout(60):
            while not any("Squall is serving" in r.getMessage() for r in caplog.records):
                assert not task.done(), task
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    warnings = [r for r in caplog.records if ROOT_WARNING in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "\n" not in message
    assert "runners.user" in message and "runners.allow_root: true" in message
    assert str(config.path) in message


@as_root
def test_no_warning_when_the_user_is_set(readable_home: Path) -> None:
    _nobody()
    assert service.action_user_warning(_config(readable_home, f"runners:\n  user: {USER}")) is None


# -- not root, and the config keys ---------------------------------------------------------------

def test_not_root_warns_only_when_the_user_is_someone_else(readable_home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = _nobody()
    config = _config(readable_home, f"runners:\n  user: {USER}")
    monkeypatch.setattr(os, "geteuid", lambda: nobody.pw_uid)
    assert service.action_user_warning(config) is None  # already that user
    monkeypatch.setattr(os, "geteuid", lambda: 4242 if nobody.pw_uid != 4242 else 4243)
    warning = service.action_user_warning(config)
    assert warning is not None and f"runners.user is {USER}" in warning and "only root" in warning
    assert service.action_user_warning(_config(readable_home, "")) is None


def test_unknown_user_is_a_config_error_naming_key_and_user(readable_home: Path) -> None:
    with pytest.raises(ConfigError, match=r"'runners\.user'.*no user 'no-such-squall-user'"):
        _config(readable_home, "runners:\n  user: no-such-squall-user")


def test_runners_keys_are_checked(readable_home: Path) -> None:
    _nobody()
    with pytest.raises(ConfigError, match=r"'runners\.allow_root' must be true or false"):
        _config(readable_home, "runners:\n  allow_root: 'yes please'")
    with pytest.raises(ConfigError, match=r"'runners\.user' must be a user name"):
        _config(readable_home, "runners:\n  user: [a, b]")
    with pytest.raises(ConfigError, match="not both"):
        _config(readable_home, f"runners:\n  user: {USER}\n  allow_root: true")
    with pytest.raises(ConfigError, match=r"unknown key 'runners\.usr' \(did you mean 'runners\.user'\?\)"):
        _config(readable_home, "runners:\n  usr: squall")
    config = _config(readable_home, "runners:")
    assert config.runner_user is None and config.allow_root is False
