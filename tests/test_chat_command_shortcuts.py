"""The command path's shortcuts for the common command (no secret parameter, no pair, no immutable
parameter, no admins or config rules): each gives what the long way gives, and the long way still runs
where the shortcut's condition does not hold."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.base import Message
from aliases import Alias, AliasFormat, AliasMatch
from aliases.model import check_overrides, engine_immutables, immutable_names
from bot.chat.auth import Authorizer
from bot.chat.commands import CommandRefused, CommandService, _audited
from engine.actions import Action
from engine.parameters import MASK, ParameterError


def _action(parameters: dict[str, dict[str, Any]], runner: str = "noop") -> Action:
    return Action(name="act", pack="p", runner_type=runner, entry_point="", description="", enabled=True,
                  parameters=parameters, declared={}, notify={}, tags=[], output_schema=None, metadata_file="",
                  pack_path=Path("."))


def _alias(**extra: Any) -> Alias:
    return Alias(name="al", pack="p", action_ref="p.act", formats=[AliasFormat("run {{what}}", ["run {{what}}"])],
                 **extra)


def _engine(*actions: Action) -> Any:
    return SimpleNamespace(registry=SimpleNamespace(actions={action.ref: action for action in actions}))


MESSAGE = Message(adapter="loopback", channel="#ops", user="ann", text="run hunter2")


def test_a_command_is_masked_by_its_actions_secret_parameters_as_loaded_now() -> None:
    match = AliasMatch(_alias(), None, "run {{what}}", {"what": "hunter2"})
    plain = CommandService(_engine(_action({"what": {"type": "string"}})), None, Authorizer())  # type: ignore[arg-type]
    assert plain.masked(match, "run hunter2") == "run hunter2"
    secret = CommandService(_engine(_action({"what": {"type": "string", "secret": True}})), None,  # type: ignore[arg-type]
                            Authorizer())
    assert secret.masked(match, "run hunter2") == f"run {MASK}"
    unloaded = CommandService(_engine(), None, Authorizer())  # type: ignore[arg-type]
    assert unloaded.masked(match, "run hunter2") == f"run {MASK}"  # which are secret cannot be told


def test_an_audited_request_masks_secrets_headers_and_everything_of_an_action_not_loaded() -> None:
    parameters = {"what": "hunter2", "headers": {"Authorization": "Bearer abc"}, "none": None}
    plain = _audited(parameters, "p.act", _engine(_action({"what": {"type": "string"}})))
    assert plain["what"] == "hunter2" and plain["none"] is None
    assert plain["headers"] != parameters["headers"]  # its credential masked all the same
    secret = _audited(parameters, "p.act", _engine(_action({"what": {"secret": True}, "none": {"secret": True}})))
    assert secret["what"] == MASK and secret["none"] is None
    assert _audited(parameters, "p.act", _engine()) == {"what": MASK, "headers": MASK, "none": None}


def test_an_audited_request_of_an_action_with_nothing_to_mask_is_a_copy_and_a_reloaded_secret_is_masked() -> None:
    parameters = {"what": "hunter2", "none": None}
    plain = _action({"what": {"type": "string"}, "none": {"type": "string"}})
    assert plain.shown_as_given
    shown = _audited(parameters, "p.act", _engine(plain))
    assert shown == parameters and shown is not parameters
    reloaded = _action({"what": {"type": "string", "secret": True}, "none": {"type": "string"}})  # a pack reload
    assert _audited(parameters, "p.act", _engine(reloaded)) == {"what": MASK, "none": None}
    url = {"url": "https://ann:hunter2@example.com/"}  # declared where the action masks it: not shown as given
    assert MASK in _audited(url, "p.act", _engine(_action({"url": {"type": "string"}})))["url"]
    undeclared = {"what": "x", "repo_url": "https://ann:hunter2@example.com/"}  # a name the action lacks
    assert "hunter2" not in str(_audited(undeclared, "p.act", _engine(plain)))


def test_request_parameters_are_a_new_dict_with_or_without_immutable_parameters() -> None:
    action = _action({"what": {"type": "string"}, "who": {"type": "string"}})
    match = AliasMatch(_alias(), None, "run {{what}}", {"what": "x"})
    parameters, render = match.request_parameters(action, {"user": "ann"})
    assert parameters == {"what": "x"} and parameters is not match.parameters and render == set()
    parameters["what"] = "changed"
    assert match.parameters == {"what": "x"}
    held = AliasMatch(_alias(immutable_parameters={"who": "{{ user }}"}), None, "run {{what}}", {"what": "x"})
    assert held.request_parameters(action, {"user": "ann"}) == ({"what": "x", "who": "ann"}, set())
    assert AliasMatch(_alias(), None, "run", {}).request_parameters(action, {}) == ({}, set())


def test_immutable_parameters_the_engine_renders_are_still_named() -> None:
    shell = _action({"cmd": {"type": "string"}}, runner="local-shell-cmd")
    assert engine_immutables(_alias(), shell) == set()
    assert immutable_names(_alias(), {"cmd"}, {"user": "ann"}) is None
    templated = _alias(immutable_parameters={"cmd": "echo {{ user }}", "token": "{{ st2kv.system.t }}"})
    assert engine_immutables(templated, shell) == {"cmd", "token"}
    assert immutable_names(templated, {"cmd"}, {"user": "ann"}) == {"__context": {"user": "ann"}, "user": "ann"}
    assert immutable_names(templated, set(), {"user": "ann"}) is None


def test_overrides_are_refused_only_when_pairs_name_runner_parameters() -> None:
    shell = _action({"cmd": {"type": "string"}}, runner="local-shell-cmd")
    check_overrides(_alias(), shell, set())
    check_overrides(_alias(), shell, {"what"})
    with pytest.raises(ParameterError, match='"cwd" is a parameter of the local-shell-cmd runner'):
        check_overrides(_alias(), shell, {"cwd"})
    check_overrides(_alias(allow_overrides=["cwd"]), shell, {"cwd"})


def test_permissions_hold_without_admins_or_config_rules_and_admins_pass_them() -> None:
    denied = _alias(permissions={"deny": {"users": ["ann"]}})
    assert Authorizer().check(_alias(), MESSAGE).allowed
    assert not Authorizer().check(denied, MESSAGE).allowed
    assert Authorizer(admins={"ann"}).check(denied, MESSAGE).allowed
    by_pack = Authorizer(rules={"p": {"allow": {"users": ["bob"]}}})
    assert not by_pack.check(_alias(), MESSAGE).allowed
    assert Authorizer(rules={"p.al": {"allow": {"users": ["ann"]}}}).check(_alias(), MESSAGE).allowed


async def test_a_refusal_is_audited_with_the_command_masked_and_an_allowed_command_is_not() -> None:
    action = _action({"what": {"type": "string", "secret": True}})
    denied = _alias(permissions={"deny": {"users": ["ann"]}})
    service = CommandService(_engine(action), SimpleNamespace(aliases={denied.ref: denied}),  # type: ignore[arg-type]
                             Authorizer())
    audited: list[tuple[str, str, str]] = []

    async def refused(message: Message, source: str, subject: str, command: str, reason: str) -> None:
        audited.append((subject, command, reason))

    service.refused = refused  # type: ignore[method-assign]
    match = AliasMatch(_alias(), None, "run {{what}}", {"what": "hunter2"})
    with pytest.raises(CommandRefused):
        await service.authorise(match, MESSAGE, "chat", "run hunter2 now")
    assert audited == [("p.al", f"run {MASK} now", "ann is denied p.al (user ann)")]
    allowed = _alias()
    service.index = SimpleNamespace(aliases={allowed.ref: allowed})  # type: ignore[assignment]
    assert (await service.authorise(match, MESSAGE, "chat")).alias is allowed
    assert len(audited) == 1


def test_an_aliass_ref_made_once_is_its_own_and_a_replaced_copys_is_new() -> None:
    alias = _alias()
    assert alias.ref == "p.al" and alias.ref is alias.ref
    renamed = replace(alias, name="other", pack="q")
    assert renamed.ref == "q.other" and alias.ref == "p.al"
