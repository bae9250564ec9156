"""`squall sensor list | get`: the sensors of the loaded packs, and what each is doing where it runs.

What a sensor is (ref, pack, `enabled`, the trigger types it declares, its entry point and class) is read
from the pack folders, as `action list` reads actions, and shown with or without a service. What it is
doing (`state`: starting, stuck in setup, running, failed, stopped) only the `squall serve` that leads
knows (`engine.sensors.SensorContainer.state`, `bot.http.sensors`): it is asked on this config's API
(`bot.cli.client.running_service`, which authenticates as `trigger emit` does). With none answering, or one
that does not lead, `state` is unknown (null in `--json`): one line on stderr says why, and the command
still succeeds, since the pack files it lists were read. `sensor get` adds, from the service, how the
sensor fared: its restarts, how its last life ended, and when it starts again while it waits.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from bot.cli.common import (
    JsonOption,
    add_row,
    current_config,
    err,
    fail,
    group,
    load_packs,
    new_table,
    out,
    print_json,
    setup_errors,
    shown_text,
    shown_time,
    warn_problems,
)

if TYPE_CHECKING:
    from engine.config import Config
    from engine.packs import Registry
    from engine.sensors import SensorSpec

sensor_app = group("List and show sensors, and what each does in the running squall serve.")

#: Seconds a listing waits for the service's answer: it is a read of memory there, never a long one.
ASK_SECONDS = 10.0
#: What the service adds to a sensor's record, copied into the CLI's (`bot.http.sensors`).
_LIVE_KEYS = ("state", "restart_count", "last_exit", "restart_at")


def _record(spec: SensorSpec, registry: Registry) -> dict[str, Any]:
    """A sensor as the pack files say it, `state` unknown (None) until the service tells it."""
    from engine.sensors import entry_point

    return {"ref": spec.ref, "pack": spec.pack, "class_name": spec.class_name, "enabled": spec.enabled,
            "trigger_types": list(spec.trigger_types), "entry_point": entry_point(spec, registry),
            "poll_interval": spec.poll_interval, "description": spec.description,
            "metadata_file": spec.metadata_file, "state": None}


def _sensors(registry: Registry) -> list[SensorSpec]:
    """The loaded packs' sensors, by pack and class as the API lists them; a sensor file that does not load
    is one warning line (what `squall serve` skips)."""
    from engine.sensors import load_sensors

    specs, errors = load_sensors(registry)
    warn_problems(errors)
    return sorted(specs, key=lambda spec: (spec.pack, spec.class_name))


def _ask_service(config: Config, path: str, params: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    """The running service's answer to `GET path` (its JSON, None), or (None, why there is none) when no
    `squall serve` answers on this config's API or it answers with an error."""
    import requests

    from bot.cli.client import running_service

    where = config.api_url
    if config.section("api").get("enabled", True) is False:
        return None, "this config disables the API (api.enabled: false), so the running squall serve cannot be asked"
    with setup_errors(config), running_service(config) as service:  # its temporary key is in the database
        if service is None:
            return None, f"no squall serve answers on {where} (this config's api), and only the one that leads " \
                         "runs the sensors"
        try:
            answer = service.request("GET", path, params=params, timeout=ASK_SECONDS)
        except requests.RequestException as exc:
            return None, f"the squall serve on {where} did not answer GET {path}: {exc}"
    if answer.status_code == 404:
        return None, f"the squall serve on {where} has no such sensor loaded (its packs differ from these files; " \
                     "`squall pack reload` makes it read them)"
    if not answer.ok:
        return None, f"the squall serve on {where} answered GET {path} with {answer.status_code}: {answer.text[:300]}"
    return answer.json(), None


def _unknown(why: str) -> None:
    """The one stderr line saying the state is unknown, and why."""
    err.print(f"state unknown: {shown_text(why)}", markup=False, highlight=False)


def _not_leading(config: Config) -> str:
    return f"the squall serve on {config.api_url} does not lead; the one that leads runs the sensors and knows " \
           "their state"


@sensor_app.command("list")
def sensor_list(pack: Annotated[str | None, typer.Option("--pack", help="Only this pack.")] = None,
                as_json: JsonOption = False) -> None:
    """Sensors of the loaded packs, with their state in the running squall serve."""
    config = current_config()
    registry = load_packs(config)
    if pack and pack not in registry.packs:
        raise fail(f"pack '{pack}' is not loaded; loaded packs: {', '.join(sorted(registry.packs))}")
    records = [_record(spec, registry) for spec in _sensors(registry) if pack in (None, spec.pack)]
    if records:
        live, why = _ask_service(config, "/sensortypes", {"limit": -1, **({"pack": pack} if pack else {})})
        if live is not None:
            states = {item.get("ref"): item.get("state") for item in live if isinstance(item, dict)}
            why = None if any(states.values()) else _not_leading(config)
            for record in records:
                record["state"] = states.get(record["ref"])
        if why is not None:
            _unknown(why)
    if as_json:
        print_json(records)
        return
    table = new_table("ref", "enabled", "state", "trigger types", "entry point")
    for record in records:
        add_row(table, record["ref"], "yes" if record["enabled"] else "no", record["state"] or "unknown",
                "\n".join(record["trigger_types"]), record["entry_point"])
    out.print(table)


@sensor_app.command("get")
def sensor_get(ref: Annotated[str, typer.Argument(help="Sensor ref (pack.ClassName).")],
               as_json: JsonOption = False) -> None:
    """One sensor: what its pack file says, and its state, restarts and last exit in the running squall serve."""
    config = current_config()
    registry = load_packs(config)
    specs = _sensors(registry)
    spec = next((s for s in specs if s.ref == ref), None)
    if spec is None:
        near = difflib.get_close_matches(ref, [s.ref for s in specs], n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "`squall sensor list` lists them."
        raise fail(f"sensor '{ref}' is not loaded (a sensor's ref is pack.ClassName); {hint}")
    record = _record(spec, registry)
    live, why = _ask_service(config, f"/sensortypes/{spec.ref}")
    if isinstance(live, dict):
        record.update({key: live[key] for key in _LIVE_KEYS if key in live})
        why = None if record["state"] else _not_leading(config)
    if why is not None:
        _unknown(why)
    if as_json:
        print_json(record)
        return
    _print_sensor(record)


def _print_sensor(record: dict[str, Any]) -> None:
    """`sensor get`'s table: one row per field, the pack's words escaped (`add_row`)."""
    out.print(f"[bold]{escape(record['ref'])}[/bold] {escape(shown_text(record['description']))}")
    table = new_table("field", "value")
    rows = [("pack", record["pack"]), ("class", record["class_name"]), ("entry point", record["entry_point"]),
            ("enabled", "yes" if record["enabled"] else "no"), ("state", record["state"] or "unknown"),
            ("trigger types", "\n".join(record["trigger_types"])),
            ("poll interval", "" if record["poll_interval"] is None else f"{record['poll_interval']:g} s"),
            ("metadata file", record["metadata_file"])]
    if "restart_count" in record:
        rows += [("restarts", record["restart_count"]), ("last exit", record.get("last_exit")),
                 ("restarts at", shown_time(record.get("restart_at")) + (" UTC" if record.get("restart_at") else ""))]
    for name, value in rows:
        add_row(table, name, value)
    out.print(table)
