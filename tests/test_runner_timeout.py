"""A run's `timeout` is 0 (the runner's default) or more seconds: a negative one, which the runners' schemas
allowed, was requested and ended `timeout` at once ("Action failed to complete in -5 seconds"). The runner
parameter's schema says `minimum: 0`, so the API, the CLI, chat and the web refuse it alike, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.parameters import ParameterError


@pytest.mark.parametrize(("ref", "parameters"), [("core.local", {"cmd": "true"}), ("core.http", {"url": "http://127.0.0.1:9/"})])
async def test_a_negative_timeout_is_refused_naming_it(home: Path, ref: str, parameters: dict) -> None:
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        with pytest.raises(ParameterError, match=r'parameter "timeout" = -5 breaks the rule minimum: -5 is less than '
                                                 r"the minimum of 0"):
            await squall.executions.request(ref, {**parameters, "timeout": -5})
        assert await squall.executions.list(action=ref) == []
        record = await squall.executions.request("core.local", {"cmd": "true", "timeout": 0})  # the default
        assert (await squall.executions.wait(record["id"], timeout=30))["status"] == "succeeded"
    finally:
        await squall.close()
