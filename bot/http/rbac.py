"""`/api/v1/rbac/...`: refused (`refusals.unserved`), naming Squall's permissions instead.

Squall has no roles or role assignments to list (`st2 role list|get`, `st2 role-assignment list|get`):
who may run what is its config's `auth` section, read at start, not records an API could show."""

from __future__ import annotations

from fastapi import APIRouter

from bot.http.refusals import unserved

router = APIRouter()
_INSTEAD = ("Squall has no RBAC roles or role assignments: StackStorm's RBAC service is not there. Who may do what "
            "is set in Squall's config, section `auth` (docs/security.md): `auth.admins` names the admins, "
            "`auth.groups` the groups (as roles: an inquiry's `roles` and an alias's allow lists name them), and "
            "`auth.aliases` who may run each alias; an API key or login token speaks for its own user "
            "(`squall apikey create --name NAME`).")
unserved(router, ("/rbac/roles", "/rbac/roles/{name_or_id}", "/rbac/role_assignments", "/rbac/role_assignments/{id}",
                  "/rbac/permission_types", "/rbac/permission_types/{resource_type}"), _INSTEAD, "rbac")
