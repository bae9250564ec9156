"""`st2 action enable|disable` and `st2 sensor enable|disable`: st2client reads the action (sensor), then `PUT`s
it back whole with only `enabled` changed. Squall writes the `enabled:` line of its metadata file in place
(`engine/content_files.py`, as for rules), reloads the packs and answers the updated resource; any other change
is still refused with the file to edit. A sensor disabled so stops where it runs; an action disabled so is
refused at request with StackStorm's message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.test_api import KEY, _home
from tests.test_rules import make_pack, started
from tests.test_sensor_processes import SETUP_GATED, _equals, add_sensor, sensor_processes, sensors_for
from tests.test_sensors import eventually


def _client(squall: Squall, key: str = KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers={"St2-Api-Key": key})


async def _audited(squall: Squall, event: str) -> list[dict[str, Any]]:
    return await squall.db(squall.store.audit_list, 20, event)


async def _as_st2client_sends(client: httpx.AsyncClient, path: str, **changes: Any) -> dict[str, Any]:
    """What st2client's `ResourceEnableCommand`/`ResourceDisableCommand` send: the resource as GET showed it,
    `ref` dropped, `changes` applied (`enabled` alone for `enable|disable`)."""
    got = await client.get(path)
    assert got.status_code == 200, got.text
    return {**{k: v for k, v in got.json().items() if k != "ref"}, **changes}


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    _home(home)
    greet = home / "packs" / "demo" / "actions" / "greet.yaml"
    greet.write_text(greet.read_text() + "enabled: true  # off during maintenance\n")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


async def test_st2_action_disable_and_enable_rewrite_the_enabled_line_and_reload(squall: Squall) -> None:
    action = squall.registry.actions["demo.greet"]
    file = Path(action.metadata_file)
    before = file.read_text()
    async with _client(squall) as client:
        body = await _as_st2client_sends(client, f"/api/v1/actions/{action.id}", enabled=False)
        disabled = await client.put(f"/api/v1/actions/{action.id}", json=body)
        assert disabled.status_code == 200, disabled.text
        assert disabled.json() == {**body, "ref": "demo.greet", "enabled": False}  # the updated action
        assert file.read_text() == before.replace("enabled: true  #", "enabled: false  #")  # the comment kept
        assert squall.registry.actions["demo.greet"].enabled is False  # reloaded
        assert (await client.get("/api/v1/actions/demo.greet")).json()["enabled"] is False
        refused = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})
        assert 'Unable to execute. Action "demo.greet" is disabled.' in refused.json()["faultstring"], refused.text
        [row] = await _audited(squall, "api.action.disable")
        assert (row["target"], row["source"], row["detail"]) == ("demo.greet", "api", {"file": str(file)})

        again = await client.put("/api/v1/actions/demo.greet", json=body)  # already so: nothing written
        assert again.status_code == 200 and again.json()["enabled"] is False
        assert len(await _audited(squall, "api.action.disable")) == 1

        enabled = await client.put("/api/v1/actions/demo.greet", json={**body, "enabled": True})
        assert enabled.status_code == 200 and enabled.json()["enabled"] is True
        assert file.read_text() == before
        assert squall.registry.actions["demo.greet"].enabled is True
        assert [r["target"] for r in await _audited(squall, "api.action.enable")] == ["demo.greet"]

        slow = Path(squall.registry.actions["demo.slow"].metadata_file)
        written = slow.read_text()
        assert "enabled" not in written
        body = await _as_st2client_sends(client, "/api/v1/actions/demo.slow", enabled=False)
        assert (await client.put("/api/v1/actions/demo.slow", json=body)).json()["enabled"] is False
        assert slow.read_text() == f"{written}enabled: false\n"  # no line to rewrite: one added


async def test_an_action_put_changing_more_than_enabled_is_still_refused(squall: Squall) -> None:
    file = Path(squall.registry.actions["demo.greet"].metadata_file)
    before = file.read_text()
    async with _client(squall) as client:
        body = await _as_st2client_sends(client, "/api/v1/actions/demo.greet", enabled=False, description="new")
        refused = await client.put("/api/v1/actions/demo.greet", json=body)
        assert refused.status_code == 409
        fault = refused.json()["faultstring"]
        assert fault.startswith("Action demo.greet cannot be changed through the API in Squall")
        assert f"edit {file} instead (`enabled: false` there disables it)" in fault
        assert (await client.put("/api/v1/actions/demo.greet")).status_code == 409  # no body: nothing to take
        body = await _as_st2client_sends(client, "/api/v1/actions/core.local", enabled=False)
        shipped = await client.put("/api/v1/actions/core.local", json=body)
        assert shipped.status_code == 409 and "shipped with Squall" in shipped.json()["faultstring"]
    assert file.read_text() == before
    assert squall.registry.actions["demo.greet"].enabled and squall.registry.actions["core.local"].enabled
    assert await _audited(squall, "api.action.disable") == []


async def test_st2_sensor_disable_stops_the_running_sensor_and_enable_starts_it_again(home: Path) -> None:
    """Under serve's sensors (a real `SensorContainer`, real sensor processes): `st2 sensor disable` writes the
    file and the reload stops the sensor; `st2 sensor enable` starts it again. Its body carries the `state` GET
    showed ("running"), which is Squall's and not compared. Any other change is the 405 it was."""
    key = "sensor-enable-key"
    config = home / "config.yml"
    config.write_text(config.read_text() + f"  keys: [{key}]\n")  # under its `api:`
    pack = make_pack(home, {})
    add_sensor(pack, "Quick", SETUP_GATED.format(name="Quick", go=str(home), trigger="quick"))
    file = pack / "sensors" / "quick.yaml"
    file.write_text(file.read_text() + "enabled: true  # st2 sensor disable turns it off\n")
    before = file.read_text()
    squall = await started(home)
    try:
        async with _client(squall, key) as client:

            async def state() -> str | None:
                return (await client.get("/api/v1/sensortypes/demo.Quick")).json().get("state")

            sensors_for(squall)
            await squall.sync_sensors()
            assert await eventually(lambda: _equals(state(), "running")), await state()
            assert len(sensor_processes()) == 1

            body = await _as_st2client_sends(client, "/api/v1/sensortypes/demo.Quick", enabled=False)
            assert body["state"] == "running"
            disabled = await client.put(f"/api/v1/sensortypes/{body['id']}", json=body)
            assert disabled.status_code == 200, disabled.text
            assert disabled.json() == {**body, "ref": "demo.Quick", "enabled": False, "state": "stopped"}
            assert file.read_text() == before.replace("enabled: true  #", "enabled: false  #")
            assert sensor_processes() == []  # stopped by the reload
            [row] = await _audited(squall, "api.sensor.disable")
            assert (row["target"], row["detail"]) == ("demo.Quick", {"file": str(file)})

            other = await client.put("/api/v1/sensortypes/demo.Quick", json={**body, "poll_interval": 5})
            assert other.status_code == 405 and other.headers["allow"] == "GET"
            assert other.json()["faultstring"].startswith("Sensor demo.Quick cannot be changed through the API")
            assert "`enabled: false` there disables it" in other.json()["faultstring"]

            enabled = await client.put("/api/v1/sensortypes/demo.Quick", json={**body, "enabled": True})
            assert enabled.status_code == 200 and enabled.json()["enabled"] is True, enabled.text
            assert file.read_text() == before
            assert await eventually(lambda: _equals(state(), "running")), await state()
            assert [r["target"] for r in await _audited(squall, "api.sensor.enable")] == ["demo.Quick"]
    finally:
        await squall.close()
    assert sensor_processes() == []
