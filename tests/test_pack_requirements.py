"""Pack requirements that cannot be installed (Exchange packs pin packages that no longer build).

`squall pack install` keeps such a pack installed and loaded, names each failing line of its
requirements.txt with pip's reason and what to do, installs the other lines, and the pack's Python
actions that import what is missing fail with that reason instead of a bare ImportError. A pack whose
Python code imports st2client without listing it (StackStorm provides it) gets it as if listed.

Everything here runs offline: pip gets no index (`PIP_NO_INDEX`), the good requirements are wheels
built by hand in tmp_path, and the bad ones fail without a network (a name no index has, a source
package whose in-tree build backend fails like psycopg2's setup.py without pg_config, a path to a
folder that does not exist).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.pack_manager import (
    FAILED_REQUIREMENTS_FILE,
    RequirementFailure,
    failed_requirements,
    install_pack,
    pip_reason,
    requirement_lines,
)
from engine.packs import ContentWarning
from tests.conftest import write

SQUALL = Path(sys.executable).parent / "squall"


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip in the packs' virtualenvs sees no index and no configured links: only local files."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def wheel(folder: Path, name: str, version: str = "1.0", *, module: str | None = None,
          requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel built by hand (no build tools, no network); `module.VALUE` is the version."""
    module = module or name.replace("-", "_")
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    files = {f"{module}/__init__.py": f"VALUE = {version!r}\n".encode(),
             f"{dist}.dist-info/METADATA": metadata.encode(),
             f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    target = folder / f"{dist}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return target


def failing_source_package(folder: Path, message: str) -> Path:
    """A source package whose build fails printing `message`, as psycopg2's does without pg_config.

    Its build backend is in the package itself (`backend-path`), so pip needs neither setuptools
    nor a network to start the build that fails."""
    write(folder / "pyproject.toml", """
        [build-system]
        requires = []
        build-backend = "failing_backend"
        backend-path = ["."]
    """)
    write(folder / "failing_backend.py", f"""
        import sys


        def _fail(*args, **kwargs):
            print("running egg_info")
            sys.exit({message!r})


        get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _fail
    """)
    return folder


def demo_pack(folder: Path) -> Path:
    """A pack with an alias, a rule, a shell action and Python actions importing good and bad requirements."""
    write(folder / "pack.yaml", """
        ref: demo
        name: demo
        description: A pack with requirements that do not all install
        version: 0.1.0
        author: tests
    """)
    write(folder / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: echo hello from the shell}
    """)
    for name, module in (("good", "squall_gooddep"), ("broken", "pgbroken")):
        write(folder / "actions" / f"{name}.yaml", f"""
            name: {name}
            runner_type: python-script
            entry_point: {name}.py
        """)
        write(folder / "actions" / f"{name}.py", f"""
            import {module}
            from st2common.runners.base_action import Action


            class Run(Action):
                def run(self):
                    return {{"value": {module}.VALUE}}
        """)
    write(folder / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        formats: ["greet"]
    """)
    write(folder / "rules" / "on_webhook.yaml", """
        name: on_webhook
        pack: demo
        trigger: {type: core.st2.webhook, parameters: {url: demo}}
        action: {ref: demo.greet}
    """)
    wheel(folder / "wheels", "squall-gooddep", "1.0")
    failing_source_package(folder / "pgbroken", "Error: pg_config executable not found.\n\n"
                                                "pg_config is required to build psycopg2 from source.")
    write(folder / "requirements.txt", """
        # Pins as old Exchange packs have them
        ./wheels/squall_gooddep-1.0-py3-none-any.whl
        squall-no-such-package==1.0  # gone from the index
        ./pgbroken
        ./no-such-folder
    """)
    return folder


# -- reading requirements.txt and pip's output -------------------------------------------------


def test_requirement_lines_are_read_as_pip_reads_them() -> None:
    options, lines = requirement_lines(
        "# a comment\n"
        "--find-links ./wheels\n"
        "requests==2.0  # pinned\n"
        "\n"
        "psycopg2==2.8 \\\n"
        "    --hash=sha256:abc\n"
        "-r more.txt\n"
        "-e ./local\n"
        "-c constraints.txt\n")
    assert options == ["--find-links ./wheels", "-c constraints.txt"]
    assert lines == [(3, "requests==2.0"), (5, "psycopg2==2.8     --hash=sha256:abc"), (7, "-r more.txt"),
                     (8, "-e ./local")]


PG_CONFIG_MISSING = """\
Collecting psycopg2==2.8
  Downloading psycopg2-2.8.tar.gz (367 kB)
  Preparing metadata (setup.py): started
  Preparing metadata (setup.py): finished with status 'error'
  error: subprocess-exited-with-error

  \u00d7 python setup.py egg_info did not run successfully.
  │ exit code: 1
  ╰─> [23 lines of output]
      running egg_info
      creating /tmp/pip-pip-egg-info-x/psycopg2.egg-info
      writing /tmp/pip-pip-egg-info-x/psycopg2.egg-info/PKG-INFO

      Error: pg_config executable not found.

      pg_config is required to build psycopg2 from source.  Please add the directory
      containing pg_config to the $PATH or specify the full path to the executable with:

          python setup.py build_ext --pg-config /path/to/pg_config build ...

      If you prefer to avoid building psycopg2 from source, please install the PyPI
      'psycopg2-binary' package instead.
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
error: metadata-generation-failed

\u00d7 Encountered error while generating package metadata.
╰─> See above for output.
"""

# psycopg2 2.8 on Python 3.11 with pg_config present: the C code no longer compiles.
TOO_OLD_TO_COMPILE = """\
  ╰─> [120 lines of output]
      running build_ext
      gcc -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -I/usr/include/postgresql -c psycopg/psycopgmodule.c
      psycopg/psycopgmodule.c: In function \u2018add_module_types\u2019:
      psycopg/psycopgmodule.c:920:36: error: lvalue required as left operand of assignment
        920 |         Py_TYPE(typetable[i].type) = &PyType_Type;
      psycopg/psycopgmodule.c:952:30: error: lvalue required as left operand of assignment
      error: Command '['gcc', '-Wsign-compare', '-c', 'psycopg/psycopgmodule.c']' returned non-zero exit status 1.
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
  ERROR: Failed building wheel for psycopg2
ERROR: Could not build wheels for psycopg2, which is required to install pyproject.toml-based projects
"""

LXML_WITHOUT_HEADERS = """\
  ╰─> [40 lines of output]
      Building lxml version 4.2.0.
      Building without Cython.
      ERROR: b'/bin/sh: 1: xslt-config: not found\\n'
      ** make sure the development packages of libxml2 and libxslt are installed **
      gcc -pthread -fPIC -Isrc -Isrc/lxml/includes -c src/lxml/etree.c
      In file included from src/lxml/etree.c:653:
      src/lxml/includes/etree_defs.h:14:10: fatal error: libxml/xmlversion.h: No such file or directory
      compilation terminated.
      error: command '/usr/bin/gcc' failed with exit code 1
      [end of output]
"""

NO_DISTRIBUTION = """\
ERROR: Could not find a version that satisfies the requirement nosuchthing==1.0 (from versions: none)
ERROR: No matching distribution found for nosuchthing==1.0
"""


@pytest.mark.parametrize(("output", "reason", "fix"), [
    (PG_CONFIG_MISSING, "pg_config executable not found", "libpq-dev"),
    (TOO_OLD_TO_COMPILE, "psycopg/psycopgmodule.c:920:36: error: lvalue required as left operand of assignment",
     "too old to build"),
    (LXML_WITHOUT_HEADERS, "src/lxml/includes/etree_defs.h:14:10: fatal error: libxml/xmlversion.h: "
                           "No such file or directory", "libxml2-dev libxslt1-dev"),
    (NO_DISTRIBUTION, "No matching distribution found for nosuchthing==1.0", "exist on the package index"),
])
def test_pips_key_line_and_the_fix_for_it(output: str, reason: str, fix: str) -> None:
    from engine.pack_manager import _fix

    assert pip_reason(output) == reason
    assert fix in _fix(pip_reason(output), output, Path("/packs/demo/requirements.txt"))


# -- installing -------------------------------------------------------------------------------


def _recorded_failure(venv: Path) -> None:
    """The record `squall pack install` leaves when psycopg2==2.8 does not build."""
    failure = RequirementFailure("psycopg2==2.8", 2, "failed to build", "pg_config executable not found",
                                 "install libpq-dev", "run `squall pack install ./src/demo` again")
    venv.mkdir(parents=True)
    (venv / FAILED_REQUIREMENTS_FILE).write_text(json.dumps({"pack": "demo", "failed": [failure.record()]}))


def test_only_import_failures_are_explained_by_the_incomplete_virtualenv(tmp_path: Path) -> None:
    from engine.runners.python import _incomplete_virtualenv_error

    venv = tmp_path / "venvs" / "demo"
    traceback = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'psycopg2'\n"
    assert _incomplete_virtualenv_error("demo", venv, traceback) is None  # nothing recorded
    _recorded_failure(venv)
    assert _incomplete_virtualenv_error("demo", venv, traceback) == (
        "pack demo's virtualenv is incomplete: requirement psycopg2==2.8 failed to build: pg_config executable "
        "not found; to fix it, install libpq-dev; then run `squall pack install ./src/demo` again")
    assert _incomplete_virtualenv_error("demo", venv, "ImportError: cannot import name 'x'\n") is not None
    assert _incomplete_virtualenv_error("demo", venv, "ValueError: the action's own failure\n") is None


def test_a_pack_installed_again_without_requirements_has_nothing_failed(tmp_path: Path) -> None:
    source = tmp_path / "src" / "demo"
    write(source / "pack.yaml", "name: demo\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    venvs = tmp_path / "venvs"
    _recorded_failure(venvs / "demo")
    assert [f.requirement for f in failed_requirements(venvs / "demo")] == ["psycopg2==2.8"]
    install_pack(str(source), tmp_path / "packs", tmp_path / "configs", venvs, lambda _: None)
    assert failed_requirements(venvs / "demo") == []




def _venv_python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_pins_that_only_conflict_together_are_reported_for_the_whole_file(tmp_path: Path) -> None:
    source = tmp_path / "src" / "pinned"
    write(source / "pack.yaml", "name: pinned\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    wheel(source / "wheels", "squall-a", "1.0", requires=("squall-b==1.0",))
    wheel(source / "wheels", "squall-b", "1.0")
    wheel(source / "wheels", "squall-b", "2.0")
    # The --find-links option applies to every line installed alone too.
    write(source / "requirements.txt", "--find-links ./wheels\nsquall-a==1.0\nsquall-b==2.0\n")
    venvs = tmp_path / "venvs"
    install_pack(str(source), tmp_path / "packs", tmp_path / "configs", venvs, lambda _: None)

    [failure] = failed_requirements(venvs / "pinned")
    assert (failure.requirement, failure.line, failure.problem) == (
        "requirements.txt", 0, "could not be installed as a whole")
    assert "squall-b" in failure.reason
    assert failure.fix.startswith("make the pins in") and "agree with each other" in failure.fix
    assert _venv_python(venvs / "pinned", "import squall_a, squall_b").returncode == 0


# -- the command and the actions --------------------------------------------------------------


def squall(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True,
                          text=True, timeout=300, cwd=home)


def run_json(home: Path, ref: str) -> dict:
    return json.loads(squall(home, "run", ref, "--json").stdout)


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_install_command_says_why_and_actions_fail_with_that_reason_until_fixed(home: Path) -> None:
    source = demo_pack(home / "src" / "demo")
    installed = squall(home, "pack", "install", str(source), "--json")

    assert installed.returncode == 1, installed.stderr  # installed, but not complete
    document = json.loads(installed.stdout)
    assert document["ref"] == "demo" and document["errors"] == [] and document["config_needed"] == []
    assert document["content"]["actions"] == 3
    assert document["content"]["aliases"] == 1 and document["content"]["rules"] == 1
    assert [(f["line"], f["requirement"]) for f in document["requirements_failed"]] == [
        (3, "squall-no-such-package==1.0"), (4, "./pgbroken"), (5, "./no-such-folder")]
    assert document["requirements_failed"][1]["reason"] == "pg_config executable not found"
    assert "libpq-dev" in document["requirements_failed"][1]["advice"]
    assert document["requirements_failed"][2]["problem"] == "is not a valid requirement"
    assert "does not exist" in document["requirements_failed"][2]["reason"]
    requirements = home / "packs" / "demo" / "requirements.txt"
    assert "one at a time" in installed.stderr
    [paragraph] = [line for line in installed.stderr.splitlines() if "./pgbroken (line 4" in line]
    assert paragraph.startswith(f"requirement failed: requirement ./pgbroken (line 4 of {requirements}) failed "
                                f"to build: pg_config executable not found. The pack demo is installed")
    assert "libpq-dev" in paragraph and paragraph.endswith(f"run `squall pack install {source}` again.")
    assert not list(requirements.parent.glob(".squall-requirement-*"))  # the one-line files are gone
    assert failed_requirements(home / "data" / "virtualenvs" / "demo")[1].requirement == "./pgbroken"

    listed = json.loads(squall(home, "pack", "list", "--json").stdout)
    assert "demo" in {pack["ref"] for pack in listed["packs"]}

    broken = run_json(home, "demo.broken")
    assert broken["status"] == "failed"
    assert broken["result"]["error"].startswith("pack demo's virtualenv is incomplete: requirement "
                                                "squall-no-such-package==1.0 was not found")
    assert ("requirement ./pgbroken failed to build: pg_config executable not found"
            in broken["result"]["error"])
    assert "ModuleNotFoundError: No module named 'pgbroken'" in broken["result"]["stderr"]  # still there
    good = run_json(home, "demo.good")
    assert good["status"] == "succeeded" and good["result"]["result"] == {"value": "1.0"}
    shell = run_json(home, "demo.greet")
    assert shell["status"] == "succeeded" and shell["result"]["stdout"] == "hello from the shell"

    # Fixed: the broken pins replaced by a package that installs. Installing again clears the record.
    wheel(source / "wheels", "pgbroken", "2.8")
    write(source / "requirements.txt", """
        ./wheels/squall_gooddep-1.0-py3-none-any.whl
        ./wheels/pgbroken-2.8-py3-none-any.whl
    """)
    again = squall(home, "pack", "install", str(source), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["requirements_failed"] == []
    assert "requirement failed" not in again.stderr
    assert not (home / "data" / "virtualenvs" / "demo" / FAILED_REQUIREMENTS_FILE).exists()
    fixed = run_json(home, "demo.broken")
    assert fixed["status"] == "succeeded" and fixed["result"]["result"] == {"value": "2.8"}


def test_an_import_error_without_failed_requirements_stays_as_it_was(home: Path) -> None:
    source = demo_pack(home / "src" / "demo")
    (source / "requirements.txt").unlink()  # no virtualenv: the action runs under Squall's interpreter
    assert squall(home, "pack", "install", str(source)).returncode == 0

    broken = run_json(home, "demo.broken")
    assert broken["status"] == "failed"
    assert "error" not in broken["result"]
    assert "ModuleNotFoundError: No module named 'pgbroken'" in broken["result"]["stderr"]


# -- packs whose Python code imports st2client ------------------------------------------------
#
# StackStorm's actions import st2client from st2's own virtualenv, so packs (the Exchange's `st2` pack
# first) import it without listing it. An install puts it in the pack's virtualenv as if listed, and an
# action that still misses it says so instead of failing on a bare ModuleNotFoundError.


def st2_pack(folder: Path, ref: str = "st2like") -> Path:
    """A pack whose Python action imports st2client through its `actions/lib`, as the st2 pack's do."""
    write(folder / "pack.yaml", f"ref: {ref}\nname: {ref}\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    write(folder / "actions" / "lib" / "client.py", """
        # st2client is made available via system packages (the st2 pack's requirements.txt says so)
        from st2client import VALUE
    """)
    write(folder / "actions" / "version.yaml", "name: version\nrunner_type: python-script\nentry_point: version.py\n")
    write(folder / "actions" / "version.py", """
        from st2common.runners.base_action import Action

        import client


        class Run(Action):
            def run(self):
                return {"client": client.VALUE}
    """)
    return folder


@pytest.mark.parametrize(("files", "requirements", "expected"), [
    ({"actions/lib/action.py": "import os\nfrom st2client.client import Client\n"}, None,
     [("st2client", "actions/lib/action.py", 2)]),
    ({"sensors/watch.py": "import json, st2client.models as models\n"}, "PrettyTable>=0.7.2,<0.8\n",
     [("st2client", "sensors/watch.py", 1)]),
    ({"lib/util.py": "    import st2client\n"}, "# st2client will be made available via system packages\n",
     [("st2client", "lib/util.py", 1)]),
    # listed, however it is written: nothing to add
    ({"actions/a.py": "import st2client\n"}, "st2client==3.9.0\n", []),
    ({"actions/a.py": "import st2client\n"}, "ST2Client>=3\n", []),
    ({"actions/a.py": "import st2client\n"}, "-r more.txt\n", []),
    ({"actions/a.py": "import st2client\n"},
     "git+https://github.com/StackStorm/st2.git@v3.9.0#egg=st2client&subdirectory=st2client\n", []),
    # not imported: a name that only starts so, another package's module, a test, a comment
    ({"actions/a.py": "import st2clientx\nfrom mine.st2client import x\n# import st2client\n",
      "tests/test_a.py": "import st2client\n"}, None, []),
])
def test_a_pack_that_imports_st2client_without_listing_it_needs_it(
        tmp_path: Path, files: dict[str, str], requirements: str | None, expected: list[tuple]) -> None:
    from engine.pack_manager import unlisted_requirements

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if requirements is not None:
        (tmp_path / "requirements.txt").write_text(requirements)
    (tmp_path / "more.txt").write_text("st2client\n")
    assert [(need.requirement, need.file, need.line) for need in unlisted_requirements(tmp_path)] == expected


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_a_pack_importing_st2client_gets_it_installed_as_if_listed(home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = st2_pack(home / "src" / "st2like")  # no requirements.txt at all
    wheel(home / "index", "st2client", "3.9.0")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home / "index"))  # the package index, here

    installed = squall(home, "pack", "install", str(source), "--json")

    assert installed.returncode == 0, installed.stderr
    assert ("st2like's Python code imports st2client (actions/lib/client.py, line 2), StackStorm's API client, "
            "which its requirements.txt does not list: installing st2client into st2like's virtualenv as if "
            "listed") in installed.stderr
    document = json.loads(installed.stdout)
    assert document["requirements_failed"] == []
    [note] = document["errors"]
    assert note.startswith(f"{home / 'packs' / 'st2like' / 'actions' / 'lib' / 'client.py'}:2: imports st2client, "
                           f"StackStorm's API client")
    assert "installed st2client" in note and "list st2client in requirements.txt" in note
    ran = run_json(home, "st2like.version")
    assert ran["status"] == "succeeded", ran
    assert ran["result"]["result"] == {"client": "3.9.0"}


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_st2client_that_does_not_install_is_a_failed_requirement(home: Path) -> None:
    source = st2_pack(home / "src" / "st2like")
    wheel(source / "wheels", "squall-gooddep", "1.0")
    write(source / "requirements.txt", "--find-links ./wheels\nsquall-gooddep==1.0\n")  # no st2client anywhere

    installed = squall(home, "pack", "install", str(source), "--json")

    assert installed.returncode == 1, installed.stderr
    [failed] = json.loads(installed.stdout)["requirements_failed"]
    assert (failed["requirement"], failed["line"], failed["problem"], failed["imported_by"]) == (
        "st2client", 0, "was not found on the package index", "actions/lib/client.py, line 2")
    assert "No matching distribution found for st2client" in failed["reason"]
    assert "package index can be reached" in failed["advice"]
    requirements = home / "packs" / "st2like" / "requirements.txt"
    [paragraph] = [line for line in installed.stderr.splitlines() if line.startswith("requirement failed:")]
    assert paragraph.startswith(f"requirement failed: requirement st2client (imported by actions/lib/client.py, "
                                f"line 2, not listed in {requirements}: installed as if listed) was not found on "
                                f"the package index")
    venv = home / "data" / "virtualenvs" / "st2like"
    assert _venv_python(venv, "import squall_gooddep").returncode == 0  # the listed lines are installed

    ran = run_json(home, "st2like.version")
    assert ran["status"] == "failed"
    assert ran["result"]["error"].startswith("pack st2like's virtualenv is incomplete: requirement st2client "
                                             "(imported by actions/lib/client.py, line 2) was not found")


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_the_packs_own_pins_win_over_st2clients_dependencies(tmp_path: Path) -> None:
    # The st2 pack pins PrettyTable<0.8 and st2client 3.9 wants prettytable==3.11: under StackStorm the pack's
    # virtualenv comes first on the path, so its pin is what runs. Resolved together, nothing would install.
    source = st2_pack(tmp_path / "src" / "st2like")
    wheel(source / "wheels", "st2client", "3.9.0", requires=("squall-table==3.11",))
    wheel(source / "wheels", "squall-table", "0.7.2")
    wheel(source / "wheels", "squall-table", "3.11")
    # The file's --find-links is where st2client is found too: installed as a line of the file would be.
    write(source / "requirements.txt", "--find-links ./wheels\nsquall-table<0.8\n")
    venvs, said = tmp_path / "venvs", []

    pack, errors = install_pack(str(source), tmp_path / "packs", tmp_path / "configs", venvs, said.append)

    assert failed_requirements(venvs / "st2like") == []
    [note] = errors  # a warning: the pack loads and works, its requirements.txt just does not say so
    assert isinstance(note, ContentWarning) and "installed st2client" in note.reason and pack.ref == "st2like"
    assert said.index("installing st2client for st2like") < said.index("installing requirements.txt of st2like")
    imported = _venv_python(venvs / "st2like", "import st2client, squall_table; print(st2client.VALUE, "
                                               "squall_table.VALUE)")
    assert imported.stdout.split() == ["3.9.0", "0.7.2"], imported.stderr


def test_an_action_missing_st2client_says_what_it_is_and_how_to_get_it(tmp_path: Path) -> None:
    from engine.runners.python import _incomplete_virtualenv_error

    venv = tmp_path / "venvs" / "demo"
    traceback = ("Traceback (most recent call last):\n  File \"lib/action.py\", line 3\n"
                 "ModuleNotFoundError: No module named 'st2client'\n")
    error = _incomplete_virtualenv_error("demo", venv, traceback)
    assert error is not None
    assert error.startswith("the action imports st2client, StackStorm's API client, which Squall does not ship, "
                            "and pack demo has no virtualenv with it")
    assert "`squall pack install <the pack's folder or git URL>` again installs it" in error
    assert f"python3 -m venv {venv} && {venv}/bin/pip install st2client" in error
    # a virtualenv whose other requirements failed: still st2client's story
    _recorded_failure(venv)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").touch()
    error = _incomplete_virtualenv_error("demo", venv, traceback)
    assert error is not None and "pack demo's virtualenv does not have it" in error
    assert f"`{venv}/bin/pip install st2client`" in error and "psycopg2" not in error
    # st2client there, but not a module of it: not a package missing, the record is all Squall knows
    error = _incomplete_virtualenv_error("demo", venv, "ModuleNotFoundError: No module named 'st2client.nope'\n")
    assert error is not None and error.startswith("pack demo's virtualenv is incomplete: requirement psycopg2")


def test_a_recorded_st2client_failure_is_what_the_action_says(tmp_path: Path) -> None:
    from engine.runners.python import _incomplete_virtualenv_error

    venv = tmp_path / "venvs" / "demo"
    venv.mkdir(parents=True)
    failure = RequirementFailure("st2client", 0, "was not found on the package index",
                                 "No matching distribution found for st2client", "check the index",
                                 "run `squall pack install ./src/demo` again", imported_by="actions/a.py, line 1")
    (venv / FAILED_REQUIREMENTS_FILE).write_text(json.dumps({"pack": "demo", "failed": [failure.record()]}))
    assert failed_requirements(venv) == [failure]
    assert _incomplete_virtualenv_error("demo", venv, "ModuleNotFoundError: No module named 'st2client'\n") == (
        "pack demo's virtualenv is incomplete: requirement st2client (imported by actions/a.py, line 1) was not "
        "found on the package index: No matching distribution found for st2client; to fix it, check the index; "
        "then run `squall pack install ./src/demo` again")


def test_a_pack_put_in_place_by_hand_says_st2client_is_missing(home: Path) -> None:
    st2_pack(home / "packs" / "st2like")  # copied from a StackStorm host: no install, no virtualenv

    ran = run_json(home, "st2like.version")

    assert ran["status"] == "failed"
    assert ran["result"]["error"].startswith("the action imports st2client, StackStorm's API client")
    assert "ModuleNotFoundError: No module named 'st2client'" in ran["result"]["stderr"]  # still there



# -- packs whose Python code imports eventlet ------------------------------------------------------
#
# StackStorm runs on eventlet, so its actions and sensors import it from st2's virtualenv too: the aws
# pack's actions/lib, the github, email, slack and aws packs' sensors, none listing it. The same mechanism
# as st2client's installs it.


def aws_like_pack(folder: Path) -> Path:
    """A pack whose action imports eventlet through its `actions/lib`, and whose sensor imports from it, as
    the aws and email packs do, with a requirements.txt that does not list it."""
    write(folder / "pack.yaml", "ref: awslike\nname: awslike\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    write(folder / "actions" / "lib" / "action.py", """
        import re
        import eventlet

        VALUE = eventlet.VALUE
    """)
    write(folder / "sensors" / "smtp_sensor.py", "import eventlet\nfrom eventlet.green import asyncore\n")
    write(folder / "actions" / "version.yaml", "name: version\nrunner_type: python-script\nentry_point: version.py\n")
    write(folder / "actions" / "version.py", """
        from st2common.runners.base_action import Action

        import action


        class Run(Action):
            def run(self):
                return {"eventlet": action.VALUE}
    """)
    wheel(folder / "wheels", "squall-gooddep", "1.0")
    write(folder / "requirements.txt", "--find-links ./wheels\nsquall-gooddep==1.0\n")
    return folder


@pytest.mark.parametrize(("files", "requirements", "expected"), [
    ({"actions/lib/action.py": "import six\nimport eventlet\n"}, "six\nboto>=2.41.0,<2.42\n",
     [("eventlet", "actions/lib/action.py", 2)]),
    ({"sensors/smtpd_green.py": "from eventlet import patcher\nfrom eventlet.green import socket\n"}, None,
     [("eventlet", "sensors/smtpd_green.py", 1)]),
    ({"actions/a.py": "from st2client.client import Client\n", "sensors/s.py": "import eventlet\n"}, None,
     [("st2client", "actions/a.py", 1), ("eventlet", "sensors/s.py", 1)]),
    ({"sensors/s.py": "import eventlet\n"}, "eventlet==0.33.3\n", []),
    ({"sensors/s.py": "import eventletx\nfrom mine.eventlet import x\n# import eventlet\n"}, None, []),
])
def test_a_pack_that_imports_eventlet_without_listing_it_needs_it(
        tmp_path: Path, files: dict[str, str], requirements: str | None, expected: list[tuple]) -> None:
    from engine.pack_manager import unlisted_requirements

    for name, text in files.items():
        write(tmp_path / name, text)
    if requirements is not None:
        write(tmp_path / "requirements.txt", requirements)
    assert [(need.requirement, need.file, need.line) for need in unlisted_requirements(tmp_path)] == expected


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_a_pack_importing_eventlet_gets_it_installed_as_if_listed(home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    source = aws_like_pack(home / "src" / "awslike")
    wheel(home / "index", "eventlet", "0.36.1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home / "index"))  # the package index, here

    installed = squall(home, "pack", "install", str(source), "--json")

    assert installed.returncode == 0, installed.stderr
    assert ("awslike's Python code imports eventlet (actions/lib/action.py, line 2), the green-thread library "
            "StackStorm runs on, which its requirements.txt does not list: installing eventlet into awslike's "
            "virtualenv as if listed") in installed.stderr
    document = json.loads(installed.stdout)
    assert document["requirements_failed"] == []
    [note] = document["errors"]
    assert note.startswith(f"{home / 'packs' / 'awslike' / 'actions' / 'lib' / 'action.py'}:2: imports eventlet, "
                           f"the green-thread library StackStorm runs on")
    assert "installed eventlet" in note and "list eventlet in requirements.txt" in note
    venv = home / "data" / "virtualenvs" / "awslike"
    assert _venv_python(venv, "import squall_gooddep").returncode == 0  # the file's lines are installed too
    ran = run_json(home, "awslike.version")
    assert ran["status"] == "succeeded", ran
    assert ran["result"]["result"] == {"eventlet": "0.36.1"}


def test_an_action_missing_eventlet_says_what_it_is_and_how_to_get_it(home: Path) -> None:
    aws_like_pack(home / "packs" / "awslike")  # copied from a StackStorm host: no install, no virtualenv

    ran = run_json(home, "awslike.version")

    assert ran["status"] == "failed"
    venv = home / "data" / "virtualenvs" / "awslike"
    assert ran["result"]["error"].startswith(
        "the action imports eventlet, the green-thread library StackStorm runs on, which Squall does not ship, and "
        "pack awslike has no virtualenv with it")
    assert f"`python3 -m venv {venv} && {venv}/bin/pip install eventlet`" in ran["result"]["error"]
    assert "ModuleNotFoundError: No module named 'eventlet'" in ran["result"]["stderr"]


@pytest.mark.integration
@pytest.mark.usefixtures("offline_pip")
def test_a_pack_pinning_cryptography_gets_a_pyopenssl_that_fits_it(home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The email pack's flanker brings cryptography; pinned at 41, Squall's own pyOpenSSL (found after the pack's
    # virtualenv) does not fit it. The install adds the family's missing members, at versions fitting the pin.
    source = home / "src" / "mailer"
    write(source / "pack.yaml", "ref: mailer\nname: mailer\ndescription: d\nversion: 0.1.0\nauthor: tests\n")
    write(source / "actions" / "version.yaml", "name: version\nrunner_type: python-script\nentry_point: version.py\n")
    write(source / "actions" / "version.py", """
        import cryptography
        import OpenSSL
        from st2common.runners.base_action import Action


        class Run(Action):
            def run(self):
                return {"cryptography": cryptography.VALUE, "pyOpenSSL": OpenSSL.VALUE}
    """)
    wheel(source / "wheels", "cryptography", "41.0.7")
    write(source / "requirements.txt", "--find-links ./wheels\ncryptography==41.0.7\n")
    index = home / "index"  # the package index, here
    wheel(index, "cryptography", "47.0.0")
    wheel(index, "cffi", "2.1.1")
    wheel(index, "pyOpenSSL", "26.1.0", module="OpenSSL", requires=("cryptography>=46",))
    wheel(index, "pyOpenSSL", "25.1.0", module="OpenSSL", requires=("cryptography>=41.0.5,<46",))
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))

    installed = squall(home, "pack", "install", str(source))

    assert installed.returncode == 0, installed.stderr
    assert ("mailer's virtualenv has cryptography==41.0.7 but not cffi and pyOpenSSL, which its Python actions and "
            "sensors would then import from Squall's own site-packages") in installed.stderr
    ran = run_json(home, "mailer.version")
    assert ran["status"] == "succeeded", ran
    assert ran["result"]["result"] == {"cryptography": "41.0.7", "pyOpenSSL": "25.1.0"}
