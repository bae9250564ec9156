"""`squall pack install` and `squall pack remove` as StackStorm's `st2 pack install` (spec §9.3).

An install interrupted at any point leaves the installed version working (staging folders are never
loaded, the new virtualenv is swapped in only when complete, pip dies with the installer); installs
and removals of one pack wait for each other; `URL=ref` and dependencies are taken as st2 takes
them; a pack linked in for development is never deleted through its link; git never asks anyone
anything; a long requirement build says what it is doing.

Everything runs offline: git repositories are made with `git init` in tmp_path, pip gets no index
(`offline_pip`) and builds hand-made wheels and in-tree build backends only.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import pty
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine import pack_manager
from engine.config import SYSTEM_PACKS_PATH
from engine.pack_manager import PackInstallError, install_pack, remove_pack
from engine.packs import Pack, discover, load_registry, registry_fingerprint
from engine.processes import running_since
from engine.yamlfile import ContentError
from tests.conftest import REPO, write
from tests.test_cli import audit_fails, audit_log, in_process, succeeds
from tests.test_pack_requirements import offline_pip, wheel  # noqa: F401 (a fixture)

T = TypeVar("T")

#: `install_pack` in a process of its own (that a test can kill), progress on stdout.
INSTALL = ("import sys\nfrom pathlib import Path\nfrom engine.pack_manager import PackInstallError, install_pack\n"
           "try:\n    install_pack(sys.argv[1], *map(Path, sys.argv[2:5]), print)\n"
           "except PackInstallError as exc:\n    print('refused:', exc)\n")


def pack_source(folder: Path, ref: str, version: str, *, dependencies: list[str] | None = None) -> Path:
    """A small pack (one shell action) at `folder`, with `dependencies:` in its pack.yaml when given."""
    lines = [f"ref: {ref}", f"name: {ref}", f"description: test pack {ref}", f"version: {version}", "author: tests"]
    if dependencies is not None:
        lines += ["dependencies:", *(f"  - {dependency!r}" for dependency in dependencies)]
    write(folder / "pack.yaml", "\n".join(lines) + "\n")
    write(folder / "actions" / "hello.yaml", f"""
        name: hello
        runner_type: local-shell-cmd
        parameters:
          cmd: {{default: echo hello from {ref} {version}}}
    """)
    return folder


def install(source: str | Path, home: Path, progress: Callable[[str], None] | None = None,
            ) -> tuple[Pack, list[ContentError]]:
    """`install_pack` into home/packs, home/configs and home/venvs."""
    return install_pack(str(source), home / "packs", home / "configs", home / "venvs",
                        progress or (lambda _: None))


def installed_version(home: Path, ref: str) -> str | None:
    registry = load_registry([home / "packs"], home / "configs", SYSTEM_PACKS_PATH)
    pack = registry.packs.get(ref)
    return None if pack is None or pack.system else pack.version


def wait_for(check: Callable[[], T | None], within: float, what: str) -> T:
    """`check()`'s first true value, polled until `within` seconds have passed (then the test fails)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {within} s")


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Hold the flock an install or removal of a pack holds, as another install would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `call` on a thread; the list gets its result or the exception it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def blocking_source_package(folder: Path, built: Path, state: Path) -> Path:
    """A source package whose wheel build writes `state/started` (its pid and its parent's, pip's)
    and then waits until `state/release` exists (at most 30 s); the wheel is the prebuilt `built`.

    Its build backend is in the package (`backend-path`), so pip needs no index to build it."""
    write(folder / "pyproject.toml", """
        [build-system]
        requires = []
        build-backend = "blocking_backend"
        backend-path = ["."]
    """)
    write(folder / "blocking_backend.py", f"""
        import os
        import shutil
        import time
        import zipfile
        from pathlib import Path

        STATE = Path({str(state)!r})
        BUILT = Path({str(built)!r})


        def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
            with zipfile.ZipFile(BUILT) as archive:
                names = [name for name in archive.namelist() if ".dist-info/" in name]
                archive.extractall(metadata_directory, members=names)
            return names[0].split("/")[0]


        def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
            STATE.mkdir(parents=True, exist_ok=True)
            (STATE / "started.tmp").write_text("%d %d" % (os.getpid(), os.getppid()))
            (STATE / "started.tmp").rename(STATE / "started")
            deadline = time.monotonic() + 30
            while not (STATE / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.copy(BUILT, wheel_directory)
            return BUILT.name
    """)
    return folder


def venv_python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=tests", *args],
                   check=True, capture_output=True)


@pytest.fixture
def git_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """git reads no configuration of this machine's user (credential helpers, URL rewrites)."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def released_repo(tmp_path: Path, git_isolated: None) -> Path:
    """A pack's repository: tag v1.0.0 (1.0.0), branch release/1.x (1.1.0), tag v2.0.0 (2.0.0, HEAD)."""
    repo = pack_source(tmp_path / "repo", "demo", "1.0.0")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1.0.0")
    pack_source(repo, "demo", "1.1.0")
    git(repo, "commit", "-qam", "fix")
    git(repo, "branch", "release/1.x")
    pack_source(repo, "demo", "2.0.0")
    git(repo, "commit", "-qam", "v2")
    git(repo, "tag", "v2.0.0")
    return repo


# -- 1. an interrupted install ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_an_install_killed_while_pip_runs_leaves_the_installed_version_working(tmp_path: Path) -> None:
    packs, venvs = tmp_path / "packs", tmp_path / "venvs"
    old = pack_source(tmp_path / "src" / "v1", "demo", "1.0.0")
    wheel(old / "wheels", "squall-old", "1.0")
    write(old / "requirements.txt", "--find-links ./wheels\nsquall-old==1.0\n")
    install(old, tmp_path)
    new = pack_source(tmp_path / "src" / "v2", "demo", "2.0.0")
    state = tmp_path / "state"
    blocking_source_package(new / "blocker", wheel(tmp_path / "built", "squall-slow"), state)
    write(new / "requirements.txt", "./blocker\n")

    installer = subprocess.Popen([sys.executable, "-c", INSTALL, str(new), str(packs), str(tmp_path / "configs"),
                                  str(venvs)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    builder = pip = 0
    try:
        started = wait_for(lambda: (state / "started").is_file() and (state / "started").read_text(), 120,
                           "pip building the new version's requirement")
        builder, pip = map(int, started.split())
        installer.kill()
        installer.wait()
        wait_for(lambda: not running_since(pip, None), 10, "pip ending with the install that started it")
    finally:
        installer.kill()
        installer.wait()
        (state / "release").parent.mkdir(parents=True, exist_ok=True)
        (state / "release").touch()
        for pid in (builder, pip):
            if pid and running_since(pid, None):
                os.kill(pid, signal.SIGKILL)

    assert discover([packs]) == [packs / "demo"]  # the staging folder does not load
    assert installed_version(tmp_path, "demo") == "1.0.0"
    assert venv_python(venvs / "demo", "import squall_old").returncode == 0  # its virtualenv is intact


def test_an_install_clears_what_interrupted_installs_left(tmp_path: Path) -> None:
    packs, venvs = tmp_path / "packs", tmp_path / "venvs"
    pack_source(packs / ".demo.installing", "demo", "2.0.0")  # this pack's, and another pack's
    pack_source(packs / ".other.installing", "other", "1.0.0")
    (venvs / "demo.new" / "bin").mkdir(parents=True)
    (venvs / "other.new" / "bin").mkdir(parents=True)

    install(pack_source(tmp_path / "src" / "demo", "demo", "1.0.0"), tmp_path)

    assert sorted(path.name for path in packs.iterdir() if not path.name.endswith(".lock")) == ["demo"]
    assert not (venvs / "demo.new").exists() and not (venvs / "other.new").exists()


def test_an_install_leaves_the_authors_caches_and_virtualenv_behind(tmp_path: Path) -> None:
    # A pack installed from its author's checkout carried their `.pytest_cache`, `.tox` and
    # `.venv` (hundreds of megabytes) into the packs folder; its tests and code are the pack's.
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    for junk in (".pytest_cache/v/cache/lastfailed", ".tox/py/bin/python", ".venv/bin/python",
                 ".mypy_cache/3.11/x.json", ".ruff_cache/0.1/y", "actions/__pycache__/a.cpython-311.pyc"):
        write(source / junk, "x")
    write(source / "tests" / "test_actions.py", "def test_x():\n    assert 1 + 1 == 2\n")
    install(source, tmp_path)
    installed = tmp_path / "packs" / "demo"
    assert (installed / "tests" / "test_actions.py").is_file() and (installed / "pack.yaml").is_file()
    left = [name for name in (".pytest_cache", ".tox", ".venv", ".mypy_cache", ".ruff_cache", "actions/__pycache__")
            if (installed / name).exists()]
    assert left == []


def test_without_an_atomic_exchange_an_upgrade_replaces_the_pack_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(pack_source(tmp_path / "src" / "v1", "demo", "1.0.0"), tmp_path)
    monkeypatch.setattr(pack_manager, "_exchange", lambda first, second: False)  # a file system without it
    install(pack_source(tmp_path / "src" / "v2", "demo", "2.0.0"), tmp_path)
    assert installed_version(tmp_path, "demo") == "2.0.0"
    assert sorted(path.name for path in (tmp_path / "packs").iterdir()) == [".demo.lock", "demo"]


def test_a_pack_a_crash_left_aside_between_two_renames_is_put_back(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    pack_source(packs / ".demo.replaced", "demo", "1.0.0")  # renamed aside, its successor not in place yet
    install(pack_source(tmp_path / "src" / "other", "other", "1.0.0"), tmp_path)
    assert installed_version(tmp_path, "demo") == "1.0.0"
    assert not (packs / ".demo.replaced").exists()


# -- 2. what discovery loads ------------------------------------------------------------------------


def test_discovery_skips_dot_folders(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    pack_source(packs / "demo", "demo", "1.0.0")
    pack_source(packs / ".demo.installing", "demo", "2.0.0")  # an install in progress

    assert discover([packs]) == [packs / "demo"]
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.packs["demo"].path == packs / "demo"
    assert not registry.errors, [str(error) for error in registry.errors]


def test_a_staging_folder_leaves_the_pack_cache_key_alone(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    pack_source(packs / "demo", "demo", "1.0.0")
    key, _ = registry_fingerprint([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    pack_source(packs / ".demo.installing", "demo", "2.0.0")
    assert registry_fingerprint([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)[0] == key


# -- 3. two at once ---------------------------------------------------------------------------------


def _said(messages: queue.Queue[str], fragment: str) -> Callable[[], str | None]:
    def check() -> str | None:
        with contextlib.suppress(queue.Empty):
            while True:
                if fragment in (message := messages.get(timeout=0.05)):
                    return message
        return None
    return check


def test_a_second_install_of_a_pack_waits_for_the_one_running(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    messages: queue.Queue[str] = queue.Queue()
    with held_lock(packs / ".demo.lock"):
        thread, outcome = in_thread(lambda: install(source, tmp_path, messages.put))
        said = wait_for(_said(messages, "waiting for"), 30, "the second install saying that it waits")
        assert "another install or removal of demo" in said
        assert not (packs / "demo").exists() and not (packs / ".demo.installing").exists()
    thread.join(30)
    assert not thread.is_alive() and not isinstance(outcome[0], Exception), outcome
    assert installed_version(tmp_path, "demo") == "1.0.0"


def test_a_removal_waits_for_an_install_of_the_pack(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    install(pack_source(tmp_path / "src" / "demo", "demo", "1.0.0"), tmp_path)
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    messages: queue.Queue[str] = queue.Queue()
    with held_lock(packs / ".demo.lock"):
        thread, outcome = in_thread(lambda: remove_pack("demo", registry, tmp_path / "venvs", messages.put))
        wait_for(_said(messages, "waiting for another install or removal of demo"), 30, "the removal waiting")
        assert (packs / "demo" / "pack.yaml").is_file()
    thread.join(30)
    assert not thread.is_alive() and outcome == [packs / "demo"]
    assert not (packs / "demo").exists()


# -- 4. git refs ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("spec", "version"), [
    ("file://{repo}=release/1.x", "1.1.0"),  # a branch with a slash
    ("file://{repo}=1.0.0", "1.0.0"),  # a version whose tag is v1.0.0
    ("file://{repo}=v1.0.0", "1.0.0"),
    ("{repo}=v1.0.0", "1.0.0"),  # a local repository at a ref
    ("file://{repo}", "2.0.0"),
    ("{repo}", "2.0.0"),  # a folder, copied as it is
])
def test_a_git_ref_is_taken_as_st2_pack_install_takes_it(tmp_path: Path, released_repo: Path, spec: str,
                                                          version: str) -> None:
    pack, _ = install(spec.format(repo=released_repo), tmp_path)
    assert pack.version == version
    assert installed_version(tmp_path, "demo") == version


@pytest.mark.integration
def test_a_version_the_repository_lacks_lists_the_versions_it_has(tmp_path: Path, released_repo: Path) -> None:
    with pytest.raises(PackInstallError) as caught:
        install(f"file://{released_repo}=3.0.0", tmp_path)
    message = str(caught.value)
    assert '"3.0.0"' in message and "1.0.0, 2.0.0" in message, message
    assert not (tmp_path / "packs" / "demo").exists()


# -- 5. dependencies --------------------------------------------------------------------------------


def test_a_dependency_given_as_a_folder_is_installed_first(tmp_path: Path) -> None:
    source = tmp_path / "src"
    pack_source(source / "dep", "deplib", "1.0.0")
    main = pack_source(source / "main", "withdeps", "1.0.0", dependencies=["../dep", str(source / "dep")])
    messages: list[str] = []

    pack, _ = install(main, tmp_path, messages.append)

    assert pack.ref == "withdeps"
    assert installed_version(tmp_path, "deplib") == "1.0.0"
    assert installed_version(tmp_path, "withdeps") == "1.0.0"
    copied = [message.split()[1] for message in messages if message.startswith("copying ")]
    assert copied == ["deplib", "withdeps"], messages  # the dependency first, once


@pytest.mark.integration
def test_a_dependency_given_as_a_git_url_is_installed_at_its_ref(tmp_path: Path, released_repo: Path) -> None:
    main = pack_source(tmp_path / "src" / "main", "withdeps", "1.0.0",
                       dependencies=[f"file://{released_repo}=release/1.x"])
    install(main, tmp_path)
    assert installed_version(tmp_path, "demo") == "1.1.0"


def test_a_missing_named_dependency_fails_before_anything_changes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    install(pack_source(source / "v1", "withdeps", "1.0.0"), tmp_path)
    pack_source(source / "dep", "deplib", "1.0.0")
    new = pack_source(source / "v2", "withdeps", "2.0.0", dependencies=["../dep", "nosuchpack=9.9.9", "core"])

    with pytest.raises(PackInstallError) as caught:
        install(new, tmp_path)

    message = str(caught.value)
    assert "nosuchpack=9.9.9 (not installed)" in message, message
    assert "squall pack install" in message and "core" not in message  # a shipped pack counts as installed
    assert installed_version(tmp_path, "withdeps") == "1.0.0"
    assert installed_version(tmp_path, "deplib") is None  # its path dependency was not installed either


def test_a_named_dependency_must_be_installed_at_the_version_given(tmp_path: Path) -> None:
    source = tmp_path / "src"
    install(pack_source(source / "dep", "deplib", "1.0.0"), tmp_path)

    with pytest.raises(PackInstallError, match=r"deplib=2\.0\.0 \(1\.0\.0 is installed\)"):
        install(pack_source(source / "wrong", "withdeps", "1.0.0", dependencies=["deplib=2.0.0"]), tmp_path)
    assert installed_version(tmp_path, "withdeps") is None

    install(pack_source(source / "right", "withdeps", "1.0.0", dependencies=["deplib=1.0.0", "deplib"]), tmp_path)
    assert installed_version(tmp_path, "withdeps") == "1.0.0"


def test_dependencies_in_a_cycle_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    pack_source(source / "a", "first", "1.0.0", dependencies=["../b"])
    pack_source(source / "b", "second", "1.0.0", dependencies=["../a"])

    with pytest.raises(PackInstallError, match="cycle: first -> second -> first"):
        install(source / "a", tmp_path)
    assert not (tmp_path / "packs").exists() or discover([tmp_path / "packs"]) == []


def test_a_dependency_shared_by_two_is_installed_once(tmp_path: Path) -> None:
    source = tmp_path / "src"
    pack_source(source / "shared", "shared", "1.0.0")
    pack_source(source / "left", "left", "1.0.0", dependencies=["../shared"])
    pack_source(source / "right", "right", "1.0.0", dependencies=["../shared"])
    main = pack_source(source / "main", "top", "1.0.0", dependencies=["../left", "../right"])
    messages: list[str] = []

    install(main, tmp_path, messages.append)

    copied = [message.split()[1] for message in messages if message.startswith("copying ")]
    assert copied == ["shared", "left", "right", "top"], messages


@pytest.mark.integration
def test_an_installed_dependency_at_another_version_is_refused_before_anything_changes(
        tmp_path: Path, released_repo: Path) -> None:
    # As st2's get_pack_dependencies: a dependency installed at another version than the one pinned is
    # a conflict, never a silent downgrade of the pack another installed pack needs.
    source = tmp_path / "src"
    install(pack_source(source / "newer", "newer", "1.0.0", dependencies=[f"file://{released_repo}=v2.0.0"]),
            tmp_path)
    assert installed_version(tmp_path, "demo") == "2.0.0"
    older = pack_source(source / "older", "older", "1.0.0", dependencies=[f"file://{released_repo}=v1.0.0"])
    messages: list[str] = []

    with pytest.raises(PackInstallError) as caught:
        install(older, tmp_path, messages.append)

    message = str(caught.value)
    assert f"older 1.0.0 depends on demo 1.0.0 (file://{released_repo}=v1.0.0)" in message, message
    assert "demo 2.0.0 is installed" in message and f"newer depends on it (file://{released_repo}=v2.0.0)" in message
    assert f"squall pack install file://{released_repo}=v1.0.0" in message, message  # Squall has no --force
    assert installed_version(tmp_path, "demo") == "2.0.0"
    assert installed_version(tmp_path, "older") is None
    assert not any(m.startswith("copying ") for m in messages), messages

    # Installed explicitly at the version wanted, it is what the dependency asks for: kept, not installed again.
    install(f"file://{released_repo}=v1.0.0", tmp_path)
    messages.clear()
    install(older, tmp_path, messages.append)
    assert installed_version(tmp_path, "older") == "1.0.0" and installed_version(tmp_path, "demo") == "1.0.0"
    assert [m.split()[1] for m in messages if m.startswith("copying ")] == ["older"], messages


def test_an_installed_dependency_without_a_version_pinned_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "src"
    pack_source(source / "dep", "deplib", "1.0.0")
    install(pack_source(source / "first", "first", "1.0.0", dependencies=["../dep"]), tmp_path)
    pack_source(source / "dep", "deplib", "1.1.0")  # the folder moved on; the installed copy did not
    messages: list[str] = []

    install(pack_source(source / "second", "second", "1.0.0", dependencies=["../dep"]), tmp_path, messages.append)

    assert installed_version(tmp_path, "deplib") == "1.0.0"
    assert installed_version(tmp_path, "second") == "1.0.0"
    assert [m.split()[1] for m in messages if m.startswith("copying ")] == ["second"], messages
    assert any("deplib 1.0.0 is installed already" in m for m in messages), messages


# -- 8. a pack linked in ----------------------------------------------------------------------------


def test_removing_a_linked_pack_removes_the_link_only(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    checkout = pack_source(tmp_path / "src" / "dev", "demo", "1.0.0")
    packs.mkdir()
    (packs / "demo").symlink_to(checkout)
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    messages: list[str] = []

    remove_pack("demo", registry, tmp_path / "venvs", messages.append)

    assert not os.path.lexists(packs / "demo")
    assert (checkout / "pack.yaml").is_file() and (checkout / "actions" / "hello.yaml").is_file()
    assert any(str(checkout) in message for message in messages), messages


@pytest.mark.parametrize("ref", ["demo", "linux"])
def test_a_pack_whose_pack_yaml_no_longer_loads_can_be_removed(tmp_path: Path, ref: str) -> None:
    # As st2's packs.delete: the folder and virtualenv go whether or not the pack loads (a bad hand edit or
    # merge of pack.yaml). linux: the broken copy that replaced the shipped pack, which loads in its place.
    packs, venvs = tmp_path / "packs", tmp_path / "venvs"
    install(pack_source(tmp_path / "src", ref, "1.0.0"), tmp_path)
    (venvs / ref).mkdir(parents=True)
    (packs / ref / "pack.yaml").write_text(f'name: {ref}\ndescription: "broken\n')
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert installed_version(tmp_path, ref) is None
    messages: list[str] = []

    assert remove_pack(ref, registry, venvs, messages.append, install_path=packs) == packs / ref

    assert not os.path.lexists(packs / ref) and not os.path.lexists(venvs / ref)
    assert any("did not load" in m and str(packs / ref) in m for m in messages), messages
    assert (SYSTEM_PACKS_PATH / "core" / "pack.yaml").is_file()


@pytest.mark.parametrize(("name", "said"), [("core", "is a system pack shipped with Squall"),
                                           ("../src", "is not installed"), ("Demo", "is not installed"),
                                           ("nothere", "is not installed")])
def test_only_a_pack_folder_in_the_install_path_is_removed_without_loading(tmp_path: Path, name: str,
                                                                           said: str) -> None:
    packs = tmp_path / "packs"
    pack_source(tmp_path / "src", "other", "1.0.0")
    for folder in ("core", "Demo"):  # folders that are not packs Squall may remove
        (packs / folder).mkdir(parents=True)
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)

    with pytest.raises(PackInstallError) as caught:
        remove_pack(name, registry, tmp_path / "venvs", lambda _: None, install_path=packs)

    assert f"'{name}' {said}" in str(caught.value), caught.value

    assert (tmp_path / "src" / "pack.yaml").is_file()
    assert (packs / "core").is_dir() and (packs / "Demo").is_dir()
    assert (SYSTEM_PACKS_PATH / "core" / "pack.yaml").is_file()


@pytest.mark.usefixtures("offline_pip")
def test_installing_over_a_linked_pack_is_refused_before_any_work(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    checkout = pack_source(tmp_path / "src" / "dev", "demo", "1.0.0")
    packs.mkdir()
    (packs / "demo").symlink_to(checkout)
    release = pack_source(tmp_path / "src" / "rel", "demo", "2.0.0")
    write(release / "requirements.txt", "squall-not-anywhere==1.0\n")

    with pytest.raises(PackInstallError) as caught:
        install(release, tmp_path)

    message = str(caught.value)
    assert str(packs / "demo") in message and str(checkout) in message and "squall pack remove demo" in message
    assert (packs / "demo").is_symlink() and (checkout / "pack.yaml").is_file()
    assert not (packs / ".demo.installing").exists() and not (tmp_path / "venvs").exists()


# -- 9. git never prompts ---------------------------------------------------------------------------


class _AskForCredentials(http.server.BaseHTTPRequestHandler):
    """A private repository: every request is answered 401 with a Basic challenge."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.integration
@pytest.mark.usefixtures("git_isolated")
def test_git_never_asks_for_credentials_on_the_terminal(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _AskForCredentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/private.git"
    args = [url, str(tmp_path / "packs"), str(tmp_path / "configs"), str(tmp_path / "venvs")]
    pid, terminal = pty.fork()  # the installer has a terminal, as under `make run`
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-c", INSTALL, *args])
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.1)[0]:
                try:
                    chunk = os.read(terminal, 4096)
                except OSError:  # the installer ended and closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        else:
            pytest.fail(f"the install still waits after 30 s; it said: {output.decode(errors='replace')}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(terminal)
        server.shutdown()
    said = output.decode(errors="replace")
    assert "Username" not in said and "refused: git clone" in said, said
    assert "credentials" in said, said


@pytest.mark.integration
@pytest.mark.usefixtures("git_isolated")
def test_a_git_server_that_never_answers_fails_after_the_timeout(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_manager, "GIT_TIMEOUT", 1.0)
    with socket.socket() as silent:  # takes connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.git"
        thread, outcome = in_thread(lambda: install(url, tmp_path))
        thread.join(60)
        hung = thread.is_alive()
    thread.join(30)
    assert not hung, "git was not stopped by the timeout"
    [error] = outcome
    assert isinstance(error, PackInstallError) and "did not finish within 1 s" in str(error), error


# -- 10. progress -----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_a_long_requirement_build_shows_pips_steps_and_a_heartbeat(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_manager, "HEARTBEAT", 0.2)
    source = pack_source(tmp_path / "src" / "demo", "demo", "1.0.0")
    state = tmp_path / "state"
    blocking_source_package(source / "blocker", wheel(tmp_path / "built", "squall-slow"), state)
    write(source / "requirements.txt", "./blocker\n")
    messages: list[str] = []

    def progress(line: str) -> None:
        messages.append(line)
        if "still installing demo's requirements (" in line:  # the build ends once the heartbeat is seen
            state.mkdir(parents=True, exist_ok=True)
            (state / "release").touch()

    install(source, tmp_path, progress)

    steps = [message.strip() for message in messages]
    assert any(step.startswith("Preparing metadata") for step in steps), messages
    assert any(step.startswith("Building wheel for squall") for step in steps), messages
    assert any(step.startswith("still installing demo's requirements (") for step in steps), messages
    venv = tmp_path / "venvs" / "demo"
    assert venv_python(venv, "import squall_slow").returncode == 0
    # The virtualenv was built beside the live one and moved: its scripts name where it is now.
    pip = subprocess.run([str(venv / "bin" / "pip"), "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(venv) in pip.stdout, pip
    assert sorted(path.name for path in (tmp_path / "venvs").iterdir()) == ["demo"]


# -- 11. editable requirements ----------------------------------------------------------------------


@pytest.mark.usefixtures("offline_pip")
@pytest.mark.parametrize(("files", "named", "instead"), [
    ({"requirements.txt": "six\n-e ./vendor\n"}, "line 2 of deplib's requirements.txt: -e ./vendor", "./vendor"),
    ({"requirements.txt": "-e git+https://git.example.com/localpkg.git@v1#egg=localpkg&subdirectory=src\n"},
     "line 1 of deplib's requirements.txt: -e git+https://git.example.com/localpkg.git@v1#egg=localpkg",
     "localpkg @ git+https://git.example.com/localpkg.git@v1#subdirectory=src"),
    ({"requirements.txt": "-e git+file:///srv/localpkg#egg=localpkg\n"},  # pip wants a host after `NAME @`
     "line 1 of deplib's requirements.txt: -e git+file:///srv/localpkg#egg=localpkg",
     "git+file:///srv/localpkg#egg=localpkg"),
    ({"requirements.txt": "-r more.txt\n", "more.txt": "# included\n--editable=./vendor\n"},
     "line 2 of deplib's more.txt: --editable=./vendor", "./vendor"),
])
def test_an_editable_requirement_is_refused_before_anything_changes(tmp_path: Path, files: dict[str, str],
                                                                    named: str, instead: str) -> None:
    # A virtualenv is built beside the live one and moved into place; an editable install keeps pointing at
    # where it was built (`<ref>.new/src/...`, the staging copy), so the action could not import it.
    source = tmp_path / "src"
    install(pack_source(source / "v1", "top", "1.0.0"), tmp_path)
    dep = pack_source(source / "dep", "deplib", "1.0.0")
    write(dep / "vendor" / "localpkg" / "__init__.py", "VALUE = 1\n")
    for name, text in files.items():
        (dep / name).write_text(text)
    messages: list[str] = []

    with pytest.raises(PackInstallError) as caught:
        install(pack_source(source / "v2", "top", "2.0.0", dependencies=["../dep"]), tmp_path, messages.append)

    message = str(caught.value)
    assert named in message and "editable" in message and f"`{instead}`" in message, message
    assert "Nothing was installed" in message, message
    assert installed_version(tmp_path, "top") == "1.0.0" and installed_version(tmp_path, "deplib") is None
    assert not (tmp_path / "venvs" / "deplib").exists() and not any("pip" in m for m in messages), messages


# -- the audit event of an install or a removal ------------------------------------------------------------

def test_a_pack_change_whose_audit_event_fails_is_said_with_its_event(home: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`pack install` and `pack remove` change files, which no transaction can hold with their event (the
    database records no install), so the event follows the change. One the database did not take was said as
    "cannot use the SQLite database", which read as if the install had failed: a retry installed the pack
    again, and the event was nowhere. The command says now that the change holds, with the event whole, and
    exits 3."""
    from engine.config import load_config

    target = load_config(home / "config.yml").install_path / "tiny"
    cli = in_process(home, monkeypatch)
    done = audit_fails(cli, "cli.pack.install", "pack", "install", str(pack_source(tmp_path / "src", "tiny", "0.1.0")))
    said = done.stderr.replace("\n", " ")
    assert f"installed tiny 0.1.0 at {target}, but its audit event could not be stored" in said, said
    assert '"event": "cli.pack.install", "target": "tiny"' in said and '"version": "0.1.0"' in said, said
    assert (target / "pack.yaml").is_file()  # the install holds
    assert "tiny" in [p["ref"] for p in json.loads(succeeds(cli, "pack", "list", "--json").stdout)["packs"]]
    done = audit_fails(cli, "cli.pack.remove", "pack", "remove", "tiny")
    said = done.stderr.replace("\n", " ")
    assert f"removed tiny ({target}), but its audit event could not be stored" in said, said
    assert '"event": "cli.pack.remove", "target": "tiny"' in said, said
    assert not target.exists()
    assert [e for e in audit_log(cli) if e["event"].startswith("cli.pack.")] == []
