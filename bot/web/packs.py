"""`/packs`: the loaded packs (version, contents, load problems, config with secrets masked), reload and
install (admin) with the install's progress shown while it runs.

Everything is the registry's and `engine/pack_manager.py`'s, as `squall pack list | install | reload`
use them: an install runs `install_pack` on a thread with a progress callback, as the CLI does, and
its lines are kept in memory for the install's page, which htmx polls every second (a plain browser
reloads it). After an install, and for Reload, the process reloads its packs with
`Squall.reload_packs`, what `squall serve` does when pack files change. An install then checks the new
pack's aliases, rules and sensors with `bot.pack_content`, as `squall pack install` does: each that does
not load is a warning on the install's page, and the counts are of what loaded. Installs are per process
and forgotten at restart; what they did is in the audit log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.pack_content import check_content
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin, form_fields, viewer
from engine.pack_config import masked_config  # the API's `/configs` masks with it too
from engine.pack_manager import (
    PackInstallError,
    failed_requirements,
    install_pack,
    needed_config_keys,
    shown_source,
)
from engine.storage import utcnow

router = APIRouter(route_class=PageRoute, include_in_schema=False)
log = logging.getLogger(__name__)
#: Installs a process remembers for their pages; the oldest finished ones are forgotten first.
KEPT_INSTALLS = 20


@dataclass
class Install:
    """One install started from the page: its progress lines, then how it ended."""

    id: str
    source: str
    by: str
    started: datetime
    lines: list[str] = field(default_factory=list)
    done: bool = False
    failed: bool = False
    outcome: str = ""
    warnings: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _installs(request: Request) -> dict[str, Install]:
    installs: dict[str, Install] | None = getattr(request.app.state, "web_pack_installs", None)
    if installs is None:
        installs = request.app.state.web_pack_installs = {}
    return installs


async def _run(squall: Any, job: Install, source: str) -> None:
    """Install as `squall pack install` does, then reload; every outcome ends up on the job."""
    config = squall.config
    try:
        pack, errors = await asyncio.to_thread(functools.partial(
            install_pack, source, config.install_path, config.configs_path, config.virtualenvs_path,
            lambda line: job.lines.append(shown_source(line)), pack_paths=config.pack_paths))
        job.lines.append("reloading the packs")
        registry = await squall.reload_packs()
        # Its aliases, rules and sensors built as `squall pack list` builds them: one naming an action that
        # does not exist is shown as an action file that does not load is, and not counted.
        check = await asyncio.to_thread(check_content, registry)
        counts = check.counts(registry, pack.ref)
        shown = {str(e) for e in errors}
        errors = [*errors, *(e for e in check.problems_under(pack.path) if str(e) not in shown)]
        failed = failed_requirements(config.virtualenvs_path / pack.ref)
        job.warnings = [str(e) for e in errors] + [f.paragraph(pack.ref, pack.path / "requirements.txt")
                                                   for f in failed]
        if needed := needed_config_keys(pack):
            job.warnings.append(f"{pack.ref}'s actions need {', '.join(needed)} (required by its config.schema.yaml, "
                                f"no default); set them in {config.configs_path / f'{pack.ref}.yaml'}")
        job.outcome = (f"installed {pack.ref} {pack.version} at {pack.path} ({counts['actions']} actions, "
                       f"{counts['aliases']} aliases, {counts['rules']} rules)")
        detail = {"pack": pack.ref, "version": pack.version, "source": job.source}
    except PackInstallError as exc:
        job.failed, job.outcome = True, shown_source(str(exc))
        detail = {"source": job.source, "error": job.outcome}
    except Exception as exc:  # the page must end, whatever went wrong; the log has the traceback
        log.exception("installing a pack from the web UI failed")
        job.failed, job.outcome = True, shown_source(f"the install stopped: {exc.__class__.__name__}: {exc}")
        detail = {"source": job.source, "error": job.outcome}
    try:  # recorded before the page says it is over
        await squall.db(squall.store.audit_add, "web.pack.install", job.by, "web", detail.get("pack"), detail)
    finally:
        job.done = True


def _start(request: Request, source: str, by: str) -> Install:
    installs = _installs(request)
    finished = [key for key, job in installs.items() if job.done]
    for key in finished[:max(0, len(installs) - KEPT_INSTALLS + 1)]:
        del installs[key]
    job = Install(id=uuid.uuid4().hex, source=shown_source(source), by=by, started=utcnow())
    job.task = asyncio.create_task(_run(request.app.state.squall, job, source), name=f"web-pack-install-{job.id}")
    installs[job.id] = job
    return job


def _belongs(file: Path, folder: Path, config_file: Path) -> bool:
    """Whether a load problem's file is the pack's (under its folder) or its config file."""
    file = file.resolve()
    return file == config_file.resolve() or file.is_relative_to(folder.resolve())


@router.get("/packs")
async def pack_list(request: Request, session: Session = Depends(viewer)) -> Response:
    registry = request.app.state.squall.registry
    packs = [registry.packs[ref].summary(registry.counts(ref)) for ref in sorted(registry.packs)]
    running = [job for job in _installs(request).values() if not job.done]
    return render(request, "packs.html", {"session": session, "packs": packs,
                                          "problems": [str(e) for e in registry.errors], "running": running})


@router.get("/packs/installs/{install_id}")
async def pack_install_page(request: Request, install_id: str, session: Session = Depends(viewer)) -> Response:
    job = _installs(request).get(install_id)
    if job is None:
        raise PageError("No such install in this process: installs are kept until a restart, and the audit log "
                        "has each one's outcome.", 404)
    fragment = request.headers.get("hx-request") == "true"
    return render(request, "pack_install_progress.html" if fragment else "pack_install.html",
                  {"session": session, "job": job})


@router.get("/packs/{ref}")
async def pack_page(request: Request, ref: str, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    registry = squall.registry
    pack = registry.packs.get(ref)
    if pack is None:
        raise PageError(f'Pack "{ref}" is not loaded; the packs page lists the loaded ones.', 404)
    documents = [d for d in registry.documents if d.pack == ref]
    contents = {
        "actions": sorted(a.ref for a in registry.actions.values() if a.pack == ref),
        "aliases": sorted(r for r, a in squall.chat.index.aliases.items() if a.pack == ref),
        "rules": sorted(r for r, rule in squall.rules.rules.items() if rule.pack == ref),
        "sensors": sorted(d.file for d in documents if d.kind == "sensors"),
        "policies": sorted(d.file for d in documents if d.kind == "policies"),
        "triggers": sorted(t.ref for t in registry.trigger_types.values() if t.pack == ref),
    }
    config_file = squall.config.configs_path / f"{ref}.yaml"
    problems = [str(e) for e in registry.errors if _belongs(Path(e.file), pack.path, config_file)]
    return render(request, "pack.html", {
        "session": session, "pack": pack.summary(registry.counts(ref)), "contents": contents, "problems": problems,
        "config": masked_config(pack.config_schema, pack.config), "has_schema": bool(pack.config_schema)})


@router.post("/packs/reload")
async def pack_reload(request: Request, session: Session = Depends(admin)) -> Response:
    squall = request.app.state.squall
    registry = await squall.reload_packs()
    await squall.db(squall.store.audit_add, "web.pack.reload", session.account.name, "web", None,
                    {"packs": len(registry.packs), "problems": len(registry.errors)})
    return RedirectResponse("/packs", status_code=303)


@router.post("/packs/install")
async def pack_install(request: Request, session: Session = Depends(admin)) -> Response:
    """Form field `source`: a folder on this machine or a git URL (`URL=ref` for a branch, tag or commit)."""
    source = (await form_fields(request)).get("source", "").strip()
    if not source:
        raise PageError("Give a pack folder on this machine or a git URL (URL=ref for a branch, tag or commit).")
    job = _start(request, source, session.account.name)
    return RedirectResponse(f"/packs/installs/{job.id}", status_code=303)
