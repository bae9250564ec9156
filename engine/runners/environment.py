"""The environment an action process gets: the service's, minus its secrets, plus the action's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.runners import RunAs, RunRequest

#: Variables that hold the service's credentials; an action must never inherit them. `SQUALL_` covers
#: Squall's own settings, whatever their name (`SQUALL_API_KEYS`, the OIDC client secret that
#: `web.oidc.client_secret_env` names in docs/ui.md, a deployment's own), and `PG` libpq's (`PGPASSWORD`,
#: `PGPASSFILE`...), which would let an action log in to Squall's database.
_WITHHELD_PREFIXES = ("SLACK_", "MATTERMOST_", "IRC_", "SQUALL_", "PG")

#: The `SQUALL_` variables an action may inherit: the `squall` pack's actions run `$SQUALL_CLI` against
#: `$SQUALL_CONFIG` (both set by `engine.core`), and that CLI honours `$SQUALL_PACK_CACHE`. None is a secret.
#: (`SQUALL_ACTION_*` and `SQUALL_ARG_*` are not inherited: each run sets its own.)
_INHERITED_SQUALL = frozenset({"SQUALL_CLI", "SQUALL_CONFIG", "SQUALL_PACK_CACHE"})


def _withheld(name: str) -> bool:
    """Whether the service's variable `name` stays out of an action's environment."""
    return name.startswith(_WITHHELD_PREFIXES) and name not in _INHERITED_SQUALL


def inherited_environment(run_as: RunAs | None = None) -> dict[str, str]:
    """The service's own environment minus the variables that hold its credentials.

    For an action started as another user (`runners.user`), HOME, USER and LOGNAME name that user.
    """
    env = {k: v for k, v in os.environ.items() if not _withheld(k)}
    if run_as is not None:
        env.update(run_as.environment())
    return env


def action_environment(request: RunRequest, extra: Mapping[str, str] | None = None,
                       run_as: RunAs | None = None) -> dict[str, str]:
    """The whole environment of an action process: inherited, then the action's own variables."""
    env = inherited_environment(run_as)
    env.update(action_variables(request))
    if extra:
        env.update(extra)
    return env


def action_variables(request: RunRequest) -> dict[str, str]:
    """StackStorm's `ST2_ACTION_*` variables and the same under `SQUALL_ACTION_*` (spec §1.8).

    The user's `env` parameter is applied first and these override it, as in StackStorm.
    """
    user_env: Any = request.runner_parameters.get("env") or {}
    env = {str(k): str(v) for k, v in user_env.items()}
    values = {
        "PACK_NAME": request.action.pack,
        "EXECUTION_ID": request.execution_id,
        "API_URL": request.api_url,
        "DEBUG": str(bool(request.runner_parameters.get("debug", False))),
    }
    if request.auth_token:  # StackStorm's per-execution token; absent where no execution was claimed
        values["AUTH_TOKEN"] = request.auth_token
    for key, value in values.items():
        env[f"ST2_ACTION_{key}"] = value
        env[f"SQUALL_ACTION_{key}"] = value
    return env
