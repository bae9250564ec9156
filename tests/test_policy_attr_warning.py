"""A concurrency policy counted per attribute whose attribute names no parameter of its action is warned of at load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.packs import ContentWarning
from tests.test_policies import _pack


def test_an_attr_policy_naming_no_parameter_is_warned_of(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`attributes: [nosuchparam]` loaded silently, every run counted under one value: the warning names the
    policy file, the unknown attribute and the action's parameters; a policy whose attributes exist says nothing."""
    _pack(home, {"typo": "name: typo\nresource_ref: pol.gate\npolicy_type: action.concurrency.attr\n"
                         "parameters: {threshold: 1, attributes: [nosuchparam, tag]}\n",
                 "fine": "name: fine\nresource_ref: pol.flaky\npolicy_type: action.concurrency.attr\n"
                         "parameters: {threshold: 1, attributes: [marker]}\n"})

    async def start() -> list[object]:
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            assert squall.policies.holds("pol.gate")  # it loads all the same
            return list(squall.registry.errors)
        finally:
            await squall.close()

    with caplog.at_level(logging.WARNING):
        errors = asyncio.run(start())
    about = [e for e in errors if "policies/" in str(e)]
    assert len(about) == 1, about
    warning = about[0]
    assert isinstance(warning, ContentWarning)
    text = str(warning)
    assert "policies/typo.yaml" in text and "nosuchparam" in text and '"pol.typo"' in text
    assert "tag," not in text.split("its parameters")[0]  # only the unknown one is named as unknown
    assert "gate" in text.split("its parameters")[1] and "tag" in text.split("its parameters")[1]
    assert any("pack content warning" in r.getMessage() and "nosuchparam" in r.getMessage() for r in caplog.records)
