"""`/api/v1/config_schemas` and `/api/v1/configs`: StackStorm's pack config API, as `st2 pack config <pack>`
uses it (the schema it asks by, then `PUT /configs/<pack>` with the values) and st2web reads it.

A schema is `{id, pack, attributes}` (the pack's config.schema.yaml), a config `{id, pack, values}` (the
values its actions get: the config file with the schema's defaults). Secret items are masked
(`engine.pack_config.masked_config`, as the web UI's pack page shows them) unless `show_secrets=true`
comes with a key from the config file: StackStorm shows them to an admin, and that key, which names
nobody and may act as anyone (`acting_user`), is the closest Squall has; a stored key or a token gets
them masked, as StackStorm's non-admins do, without an error.

A PUT is checked by the rule the pack loader checks a config file by (`engine.packs.config_problems`), a
secret sent back as `********` keeps the stored one (`restore_masked`), and the file is written whole
(`write_config_file`: atomic, 0600) to `packs.configs_path/<pack>.yaml`, where the loader reads it; then
the packs are reloaded (`Squall.reload_packs`, the web UI's Reload), so runs and sensors get it at once,
and the write is audited as `api.pack.config`, secrets masked. A shipped pack's config may be written
too: it lives in `packs.configs_path`, not among the pack's files, which stay Squall's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response

from bot.http.key_auth import request_user
from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import content_id
from engine.audit_sinks import masked
from engine.pack_config import MaskedSecretError, masked_config, restore_masked, write_config_file
from engine.packs import config_file_values, config_problems
from engine.yamlfile import ContentInvalid

if TYPE_CHECKING:
    from bot.app import Squall
    from engine.packs import Pack

router = APIRouter()


def _pack(request: Request, ref: str) -> Pack:
    registry = api_state(request).squall.registry
    pack = registry.packs.get(ref)
    if pack is None:
        raise HTTPException(404, f'Pack "{ref}" is not loaded; loaded: {", ".join(sorted(registry.packs))}.')
    return pack


def _config_file(squall: Squall, ref: str) -> Path:
    return squall.config.configs_path / f"{ref}.yaml"


def _schema(pack: Pack) -> dict[str, Any]:
    return {"id": content_id("config_schema", pack.ref), "pack": pack.ref, "attributes": pack.config_schema}


def _reveals(request: Request, show_secrets: bool) -> bool:
    """Whether secrets are shown: asked, by a key from the config file (no stored key's or token's user)."""
    credential = getattr(request.state, "credential", None)
    return show_secrets and credential is not None and credential.kind == "key" and request_user(request) is None


def _config(pack: Pack, values: dict[str, Any], reveal: bool) -> dict[str, Any]:
    return {"id": content_id("config", pack.ref), "pack": pack.ref,
            "values": values if reveal else masked_config(pack.config_schema, values)}


def _has_config(squall: Squall, pack: Pack) -> bool:
    """A pack has a config once it has a schema (whose defaults it gets) or a config file."""
    return bool(pack.config_schema) or _config_file(squall, pack.ref).is_file()


@router.get("/config_schemas", tags=["packs"])
async def list_config_schemas(request: Request, response: Response,
                              paging: Paging = Depends()) -> list[dict[str, Any]]:
    """The config schemas of the loaded packs that have one."""
    registry = api_state(request).squall.registry
    packs = [registry.packs[ref] for ref in sorted(registry.packs) if registry.packs[ref].config_schema]
    return [_schema(pack) for pack in paging.page(packs, response)]


@router.get("/config_schemas/{ref}", tags=["packs"])
async def get_config_schema(ref: str, request: Request) -> dict[str, Any]:
    """One pack's config schema; 404 saying whether the pack is not loaded or has no schema (st2client
    says "doesn't exist or doesn't have a config schema defined" of both)."""
    pack = _pack(request, ref)
    if not pack.config_schema:
        raise HTTPException(404, f'Pack "{ref}" has no config schema (no config.schema.yaml in {pack.path}, or '
                                 "an empty one), so there is nothing to configure by it; its config, if it takes "
                                 f"one, is packs.configs_path/{ref}.yaml.")
    return _schema(pack)


@router.get("/configs", tags=["packs"])
async def list_configs(request: Request, response: Response, paging: Paging = Depends(),
                       show_secrets: bool = False) -> list[dict[str, Any]]:
    """The configs of the loaded packs that have one (`_has_config`), secrets masked (`_reveals`)."""
    squall = api_state(request).squall
    registry = squall.registry
    packs = [registry.packs[ref] for ref in sorted(registry.packs) if _has_config(squall, registry.packs[ref])]
    reveal = _reveals(request, show_secrets)
    return [_config(pack, pack.config, reveal) for pack in paging.page(packs, response)]


@router.get("/configs/{ref}", tags=["packs"])
async def get_config(ref: str, request: Request, show_secrets: bool = False) -> dict[str, Any]:
    """One pack's config as its actions get it, secrets masked (`_reveals`)."""
    squall = api_state(request).squall
    pack = _pack(request, ref)
    if not _has_config(squall, pack):
        raise HTTPException(404, f'Pack "{ref}" has no config: no config.schema.yaml and no '
                                 f"packs.configs_path/{ref}.yaml; PUT /api/v1/configs/{ref} writes one.")
    return _config(pack, pack.config, _reveals(request, show_secrets))


def _checked(pack: Pack, sent: Any, file: Path) -> dict[str, Any]:
    """What a PUT writes: `sent` with its masked secrets restored from the file, checked against the schema
    by the loader's rule; 400 naming each key that does not fit. Run on a thread: it reads the file."""
    if not isinstance(sent, dict):
        raise HTTPException(400, f"The body must be a JSON object of pack {pack.ref}'s config values (what "
                                 f"configs/{pack.ref}.yaml holds, such as {{\"api_url\": \"...\"}}), "
                                 f"not {type(sent).__name__}.")
    try:
        stored = config_file_values(file) if file.is_file() else {}
    except ContentInvalid:  # a broken file keeps no secret; values sent in full still replace it
        stored = {}
    try:
        values = restore_masked(sent, stored, pack.config_schema)
    except MaskedSecretError as exc:
        raise HTTPException(400, f"Pack {pack.ref}'s config was not written: {exc}.") from None
    problems = [problem for _error, problem in config_problems(pack.config_schema, values)]
    if problems:
        raise HTTPException(400, f"Pack {pack.ref}'s config does not fit its config.schema.yaml, so it was not "
                                 f"written: {'; '.join(problems)}.")
    return values


def _write_lock(request: Request) -> asyncio.Lock:
    """One config write at a time in this app: a PUT keeping a masked secret reads the file it replaces,
    and two at once could otherwise write back a secret the other just changed."""
    lock: asyncio.Lock | None = getattr(request.app.state, "config_write_lock", None)
    if lock is None:
        lock = request.app.state.config_write_lock = asyncio.Lock()
    return lock


def _write(file: Path, values: dict[str, Any]) -> None:
    """`write_config_file`, a failure a 500 naming the reason (the server's path stays out of the answer)."""
    try:
        write_config_file(file, values)
    except OSError as exc:
        raise HTTPException(500, f"The config file could not be written ({exc.strerror or exc}); Squall's "
                                 "packs.configs_path must be a folder the service may write.") from None


@router.put("/configs/{ref}", tags=["packs"])
async def put_config(ref: str, request: Request, body: Any = Body(...), show_secrets: bool = False) -> dict[str, Any]:
    """StackStorm's config write (`st2 pack config <pack>`): the body is the values; see the module's text."""
    squall = api_state(request).squall
    pack = _pack(request, ref)
    file = _config_file(squall, ref)
    async with _write_lock(request):
        values = await asyncio.to_thread(_checked, pack, body, file)
        await asyncio.to_thread(_write, file, values)
        registry = await squall.reload_packs()
    await squall.db(squall.store.audit_add, "api.pack.config", request_user(request), "api", ref,
                    {"file": str(file), "values": masked(masked_config(pack.config_schema, values))})
    loaded = registry.packs.get(ref)
    if loaded is None:  # the reload no longer loads the pack (its files broke meanwhile): say what was written
        return _config(pack, values, _reveals(request, show_secrets))
    return _config(loaded, loaded.config, _reveals(request, show_secrets))
