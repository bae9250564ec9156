"""`/api/v1/service_registry/...`: refused (`refusals.unserved`), naming what tells Squall's processes apart.

Squall keeps no service registry (`st2 service-registry group list`, `member list`): its processes are
`squall serve` and `squall worker`, each answering for itself on `/healthz`."""

from __future__ import annotations

from fastapi import APIRouter

from bot.http.refusals import unserved

router = APIRouter()
_INSTEAD = ("Squall keeps no service registry: StackStorm's groups and members are not there. Each Squall process "
            "answers for itself: `GET /healthz` (no key needed) on a `squall serve` node's API port, and on a "
            "`squall worker`'s `--health-port`, says whether it is up (503 while its database writes fail, or while a "
            "worker drains); a worker's also names it and what it runs (docs/observability.md, docs/scale-out.md).")
unserved(router, ("/service_registry/groups", "/service_registry/groups/{group_id}/members"), _INSTEAD,
         "service_registry")
