"""The pytest plugin for pack authors (`bot/testing.py`, docs/testing-packs.md): a pack's own tests,
run by pytest inside the pack's folder, drive Squall through the `squallbot` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bot.testing import SquallBot, write_home
from tests.conftest import REPO, write

#: What a child process must not inherit from this test run: it would change which plugins load.
_CHILD_UNSET = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "SQUALL_CONFIG")


def make_pack(root: Path) -> Path:
    """A pack as an author writes one: an action per runner kind, an alias, a trigger, two rules."""
    pack = root / "webops"
    write(pack / "pack.yaml", """
        ref: webops
        name: webops
        description: Restart web services.
        version: 1.0.0
        author: tests
    """)
    write(pack / "actions" / "restart.yaml", """
        name: restart
        runner_type: local-shell-cmd
        description: Restart a service on a host (pretend).
        parameters:
          service: {type: string, required: true}
          host: {type: string, required: true}
          cmd: {default: 'echo "{{service}} restarted on {{host}}"', immutable: true}
    """)
    write(pack / "actions" / "count.yaml", """
        name: count
        runner_type: python-script
        entry_point: count.py
        parameters:
          word: {type: string, required: true}
    """)
    write(pack / "actions" / "count.py", """
        from st2common.runners.base_action import Action


        class Count(Action):
            def run(self, word):
                return {"letters": len(word)}
    """)
    write(pack / "aliases" / "restart.yaml", """
        name: restart
        action_ref: webops.restart
        description: Restart a service.
        formats: ["restart {{service}} on {{host}}"]
        ack:
          format: "restarting {{ execution.parameters.service }} on {{ execution.parameters.host }}"
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "triggers" / "service_down.yaml", """
        name: service_down
        description: A service stopped answering.
        payload_schema:
          type: object
          properties:
            service: {type: string}
            host: {type: string}
          required: [service, host]
    """)
    write(pack / "rules" / "restart_on_down.yaml", """
        name: restart_on_down
        pack: webops
        enabled: true
        trigger:
          type: webops.service_down
        criteria:
          trigger.service: {type: equals, pattern: nginx}
        action:
          ref: webops.restart
          parameters:
            service: "{{ trigger.service }}"
            host: "{{ trigger.host }}"
    """)
    write(pack / "rules" / "deploy_hook.yaml", """
        name: deploy_hook
        pack: webops
        enabled: true
        trigger:
          type: core.st2.webhook
          parameters: {url: deploy}
        action:
          ref: webops.restart
          parameters:
            service: "{{ trigger.body.service }}"
            host: web9
    """)
    return pack


#: The author's tests, as docs/testing-packs.md shows them: every one must pass.
EXAMPLE = '''
    import pytest


    def test_restart_from_chat(squallbot):
        replies = squallbot.say("!restart nginx on web1")
        assert replies == ["restarting nginx on web1", "nginx restarted on web1"]
        assert "succeeded" in squallbot.posts[0].final_text  # the ack, edited to the final status


    def test_unknown_command_gets_a_suggestion(squallbot):
        [answer] = squallbot.say("!restrat nginx on web1")
        assert "restart" in answer


    def test_python_action(squallbot):
        execution = squallbot.run("webops.count", word="hello")
        assert execution["status"] == "succeeded"
        assert execution["result"]["result"] == {"letters": 5}


    def test_rule_restarts_nginx_only(squallbot):
        [execution] = squallbot.emit("webops.service_down", {"service": "nginx", "host": "web2"})
        assert execution["result"]["stdout"] == "nginx restarted on web2"
        assert squallbot.emit("webops.service_down", {"service": "redis", "host": "web2"}) == []


    def test_webhook(squallbot):
        [execution] = squallbot.webhook("deploy", {"service": "api"})
        assert execution["action"] == "webops.restart"
        assert execution["result"]["stdout"] == "api restarted on web9"


    def test_payload_is_checked(squallbot):
        with pytest.raises(Exception, match="host"):
            squallbot.emit("webops.service_down", {"service": "nginx"})
'''

#: A test that expects the wrong answer: it must fail, showing what the bot really said.
FAILING = '''
    def test_wrong_expectation(squallbot):
        assert squallbot.say("!restart nginx on web1") == ["restarting nginx on web1", "nginx restarted on web7"]
'''


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _CHILD_UNSET}


def _outcomes(report: Path) -> dict[str, str]:
    """Test name -> passed / failed / error / skipped, from pytest's JUnit XML report."""
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((kind for kind in ("failure", "error", "skipped") if kind in kinds), "passed")
        outcomes[case.get("name", "")] = {"failure": "failed"}.get(outcome, outcome)
    return outcomes


@pytest.mark.slow
def test_a_packs_own_tests_run_inside_its_folder(tmp_path: Path) -> None:
    """`python -m pytest` in the pack's folder: the folder (with its `aliases/`) is first on
    sys.path, the plugin comes from the entry point, the fixture finds pack.yaml above the tests."""
    pack = make_pack(tmp_path)
    write(pack / "tests" / "test_webops.py", EXAMPLE)
    write(pack / "tests" / "test_wrong.py", FAILING)
    report = tmp_path / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}"],
                          cwd=pack, env=_child_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # 1: tests ran and some failed (not 2-4: usage or collection errors)
    assert _outcomes(report) == {
        "test_restart_from_chat": "passed",
        "test_unknown_command_gets_a_suggestion": "passed",
        "test_python_action": "passed",
        "test_rule_restarts_nginx_only": "passed",
        "test_webhook": "passed",
        "test_payload_is_checked": "passed",
        "test_wrong_expectation": "failed",
    }, output
    assert "nginx restarted on web1" in output  # the failing assertion saw the bot's real reply


def test_squall_packages_win_over_a_packs_folders(tmp_path: Path) -> None:
    """A folder without __init__.py named like one of Squall's packages (a pack's `aliases/`), in
    the current folder, does not hide Squall's: the install makes Squall's folder a sys.path entry."""
    names = ("aliases", "bot", "engine", "adapters")
    for name in names:
        (tmp_path / name).mkdir()
    code = "import aliases, bot, engine, adapters; print('\\n'.join(m.__file__ or 'namespace' for m in " \
           "(aliases, bot, engine, adapters)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_child_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [Path(file).resolve() for file in done.stdout.split()] == [REPO / name / "__init__.py" for name in names]


def test_the_plugin_is_registered_and_imports_nothing_of_squall() -> None:
    """pytest loads it in every run of the environment, so loading it must cost next to nothing."""
    assert [ep.value for ep in entry_points(group="pytest11") if ep.name == "squall"] == ["bot.testing"]
    code = "import sys, bot.testing; print(sorted({m.split('.')[0] for m in sys.modules} & " \
           "{'engine', 'aliases', 'adapters', 'yaml', 'sqlalchemy', 'asyncio'}))"
    done = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_squallbot_chats_runs_and_emits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's object on its own, in this process: chat, actions, rules, the datastore."""
    for key in ("SQUALL_CONFIG", "SQUALL_CLI"):  # the assembly sets them; recorded here, undone after the test
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    pack = make_pack(tmp_path)
    write(pack / "aliases" / "broken.yaml", """
        name: broken
        action_ref: webops.missing
        formats: ["broken"]
    """)
    home = tmp_path / "home"
    home.mkdir()
    bot = SquallBot(pack, home, timeout=30)
    bot.start(write_home(home, pack, [], {"auth": {"admins": ["root-admin"]}}, {"unused": True}))
    try:
        assert [p for p in bot.problems if "broken.yaml" in p and "webops.missing" in p], bot.problems
        assert bot.say("!restart nginx on web1", user="alice") == ["restarting nginx on web1",
                                                                    "nginx restarted on web1"]
        assert bot.say("restart nginx on web1") == []  # not addressed to the bot: chatter
        [post] = [p for p in bot.posts if p.text == "restarting nginx on web1"]
        assert post.channel == "#test" and post.thread is not None and "succeeded" in post.final_text
        assert bot.run("webops.restart", {"service": "db"}, host="h")["result"]["stdout"] == "db restarted on h"
        [fired] = bot.emit("webops.service_down", {"service": "nginx", "host": "web3"})
        assert fired["context"]["rule"]["ref"] == "webops.restart_on_down"
        bot.set_key("greeting", "hi")
        assert bot.get_key("greeting") == "hi"
        assert len(bot.executions("webops.restart")) == 3
        assert (home / "configs" / "webops.yaml").read_text().strip() == "unused: true"
    finally:
        bot.close()
    with pytest.raises(RuntimeError, match="not running"):
        bot.say("!restart nginx on web1")


def _header_and_warnings(folder: Path) -> str:
    """What `python -m pytest` in `folder` prints (its header names pytest-asyncio's loop scope)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=folder, env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_a_packs_run_gets_no_asyncio_warning_from_squalls_environment(tmp_path: Path) -> None:
    """pytest-asyncio in the environment (a checkout's `.venv` has it, for Squall's own tests) warned on every
    run of a pack's tests that `asyncio_default_fixture_loop_scope` is unset, though pack tests need no asyncio.
    In a pack's folder the plugin gives that option pytest-asyncio's coming default, `function`; a value the
    pack's project sets wins, and a project that is no pack is left as it was."""
    from importlib.util import find_spec

    assert find_spec("pytest_asyncio") is not None, "the test extra installs pytest-asyncio"
    pack = tmp_path / "p"
    write(pack / "pack.yaml", "ref: p\nname: p\ndescription: d\nversion: 0.1.0\nauthor: me\n")
    write(pack / "tests" / "test_p.py", "def test_nothing():\n    pass\n")
    output = _header_and_warnings(pack)
    assert "PytestDeprecationWarning" not in output and "is unset" not in output, output
    assert "asyncio_default_fixture_loop_scope=function" in output, output
    assert "asyncio_default_fixture_loop_scope=function" in _header_and_warnings(pack / "tests")  # pack.yaml above

    write(pack / "pytest.ini", "[pytest]\nasyncio_default_fixture_loop_scope = module\n")
    assert "asyncio_default_fixture_loop_scope=module" in _header_and_warnings(pack)

    other = tmp_path / "other"
    write(other / "test_other.py", "def test_nothing():\n    pass\n")
    assert "asyncio_default_fixture_loop_scope=None" in _header_and_warnings(other)


def test_the_docs_show_the_example_packs_files_as_the_tests_build_them(tmp_path: Path) -> None:
    """docs/testing-packs.md's example named the pack's files without showing them; it shows them now, each
    a block starting `# webops/<path>`, and they must stay the files `make_pack` builds (whose tests pass)."""
    import re

    text = (REPO / "docs" / "testing-packs.md").read_text()
    shown = {path: body for path, body in re.findall(r"```(?:yaml|python)\n# webops/(\S+)\n(.*?)```", text, re.S)
             if not path.startswith("tests/")}
    pack = make_pack(tmp_path)
    built = {path.relative_to(pack).as_posix(): path.read_text() for path in pack.rglob("*") if path.is_file()}
    assert shown == built
