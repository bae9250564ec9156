"""`/api/v1/sensortypes`: the sensors of the loaded packs, as StackStorm's SensorTypeAPI shows them.

`st2 sensor list|get`, st2client's `Client.sensors` and the Exchange's `st2` pack (`st2.sensors.list`,
`!st2 list sensors`) read them. A sensor is addressed by its ref (`pack.ClassName`) or its `id`
(24 hex digits derived from the ref, as an action's and a rule's), as StackStorm's
`/sensortypes/{ref_or_id}`. The list is what `engine.sensors.load_sensors` reads from the registry,
the sensors `squall serve` runs (enabled or not), sorted by pack and name as StackStorm sorts it.

`enabled` is what the pack file says, as in StackStorm. Squall adds `state`, what the sensor is doing
(`engine.sensors.SensorContainer.state`: `starting`, `stuck in setup`, `running`, `failed`, `stopped`):
a sensor stuck in its `setup()` was listed `enabled: true` with nothing telling it dispatched nothing.
Only the process that leads runs the sensors, so only its API knows; another's leaves `state` out.
One sensor's record (`/sensortypes/{ref_or_id}`) adds, there, how it fared (`SensorContainer.health`):
`restart_count`, `last_exit` (`exited with status 1: RuntimeError: ...`) and, while it waits to start again,
`restart_at`; a crash-looping sensor said only "failed". The list leaves them out, its records as they were.

A sensor is switched on or off in its pack file: `st2 sensor enable|disable` (a `PUT` of the whole sensor with
only `enabled` changed) writes that file's `enabled:` line and reloads the packs, as `st2 rule enable|disable`
does (`engine/content_files.py`), so the sensor starts or stops at once where it runs. Any other change is a
405 naming the file: Squall keeps no sensor the API could store."""

from __future__ import annotations

import difflib
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response

from bot.http.actions import ALLOW_GET, CONTENT_NAMES, enabled_only, in_pack, write_enabled
from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import content_id
from engine.packs import Registry
from engine.sensors import SensorSpec, entry_point, load_sensors
from engine.storage import iso

router = APIRouter()
#: What a `PUT` body may carry beside `enabled` whatever its value: the sensor's names and what the service
#: adds to its record (`sensor_state`, `sensor_health`), which st2client sends back as it read it.
_NOT_COMPARED = CONTENT_NAMES | {"state", "restart_count", "last_exit", "restart_at"}


def sensor_type_id(ref: str) -> str:
    """The `id` of the sensor `ref`: derived from it, so every process and restart shows the same one
    (a sensor is its pack file here, with no row to number)."""
    return content_id("sensor_type", ref)


def sensor_type_public(spec: SensorSpec, registry: Registry, state: str | None = None) -> dict[str, Any]:
    """A sensor as StackStorm's API shows it; `poll_interval` only where the file gives one, as there;
    `metadata_file` relative to its pack (`sensors/watch.yaml`) as an action's is (`in_pack`); and Squall's
    `state` (`sensor_state`) where this process knows it."""
    document = {"id": sensor_type_id(spec.ref), "uid": f"sensor_type:{spec.pack}:{spec.class_name}",
                "ref": spec.ref, "pack": spec.pack, "name": spec.class_name, "class_name": spec.class_name,
                "entry_point": entry_point(spec, registry), "artifact_uri": f"file://{spec.file}",
                "description": spec.description, "poll_interval": spec.poll_interval, "enabled": spec.enabled,
                "trigger_types": list(spec.trigger_types),
                "metadata_file": in_pack(spec.metadata_file, spec.pack, registry), "state": state}
    return {key: value for key, value in document.items() if value is not None}


def sensor_state(request: Request, spec: SensorSpec) -> str | None:
    """What the sensor is doing (`SensorContainer.state`), which `enabled` does not say; None in a process
    that does not lead, whose container runs no sensor and so cannot tell (the leader's runs it)."""
    squall = api_state(request).squall
    return squall.sensors.state(spec.ref) if squall.sensor_lead else None


def _sensors(request: Request) -> list[SensorSpec]:
    """The loaded packs' sensors that load (a broken file is `squall pack reload`'s to report), by pack, name."""
    specs, _errors = load_sensors(api_state(request).squall.registry)
    return sorted(specs, key=lambda spec: (spec.pack, spec.class_name))


@router.get("/sensortypes", tags=["sensors"])
async def list_sensor_types(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                            enabled: bool | None = None, trigger: str | None = None,
                            paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `pack`, `name` (the class name), `enabled`, and `trigger` (a trigger type's
    ref the sensor emits); `limit=-1` lists them all."""
    chosen = [spec for spec in _sensors(request)
              if pack in (None, spec.pack) and name in (None, spec.class_name)
              and enabled in (None, spec.enabled) and (trigger is None or trigger in spec.trigger_types)]
    registry = api_state(request).squall.registry
    return [sensor_type_public(spec, registry, sensor_state(request, spec)) for spec in paging.page(chosen, response)]


def _find_sensor(request: Request, ref_or_id: str) -> SensorSpec:
    """The sensor `ref_or_id` names (its ref or its `id`); 404 naming the nearest refs."""
    specs = _sensors(request)
    found = next((s for s in specs if ref_or_id in (s.ref, sensor_type_id(s.ref))), None)
    if found is not None:
        return found
    near = difflib.get_close_matches(ref_or_id, [s.ref for s in specs], n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else "; GET /api/v1/sensortypes lists them."
    raise HTTPException(404, f'Sensor "{ref_or_id}" is not loaded (no sensor has that ref or id){hint}')


@router.get("/sensortypes/{ref_or_id}", tags=["sensors"])
async def get_sensor_type(ref_or_id: str, request: Request) -> dict[str, Any]:
    spec = _find_sensor(request, ref_or_id)
    public = sensor_type_public(spec, api_state(request).squall.registry, sensor_state(request, spec))
    return {**public, **sensor_health(request, spec)}


def sensor_health(request: Request, spec: SensorSpec) -> dict[str, Any]:
    """How the sensor fared where it runs (`SensorContainer.health`: restarts, how the last life ended, when it
    starts again), its time as the API's others; empty in a process that does not lead, as `sensor_state`."""
    squall = api_state(request).squall
    if not squall.sensor_lead:
        return {}
    health = squall.sensors.health(spec.ref)
    if "restart_at" in health:
        health["restart_at"] = iso(health["restart_at"])
    return health


@router.put("/sensortypes/{ref_or_id}", tags=["sensors"])
async def update_sensor_type(ref_or_id: str, request: Request, body: Any = Body(None)) -> dict[str, Any]:
    """StackStorm's sensor update. `st2 sensor enable|disable` (only `enabled` changed, `enabled_only`) write
    `enabled:` into the sensor's metadata file and reload the packs, so the sensor starts or stops, and
    answer the sensor as GET shows it now; a pack shipped with Squall, or a file laid out so that it will not
    be rewritten, is a 409. Any other change is refused (405) with the file to edit; 404 for a sensor that
    is not loaded."""
    spec = _find_sensor(request, ref_or_id)
    squall = api_state(request).squall
    enabled = enabled_only(body, sensor_type_public(spec, squall.registry), _NOT_COMPARED)
    if enabled is None:
        raise HTTPException(405, f"Sensor {spec.ref} cannot be changed through the API in Squall, where sensors "
                                 f"are kept in pack files: edit {spec.metadata_file} instead (`enabled: false` "
                                 "there disables it); squall serve reloads the packs when their files change "
                                 "and starts or stops the sensor.", headers=ALLOW_GET)
    await write_enabled(request, "sensor", spec.ref, spec.pack, spec.metadata_file, enabled)
    reloaded = next((s for s in _sensors(request) if s.ref == spec.ref), None)
    if reloaded is None:  # the reload no longer loads it (its file was broken meanwhile): say what was written
        return {**sensor_type_public(spec, squall.registry), "enabled": enabled}
    shown = sensor_type_public(reloaded, squall.registry, sensor_state(request, reloaded))
    return {**shown, **sensor_health(request, reloaded)}
