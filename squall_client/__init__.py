"""A typed Python client for Squall's HTTP API (`/api/v1`), synchronous (`Client`) and asyncio
(`AsyncClient`), on httpx.

It imports only the standard library and httpx, never the server's packages (`bot`, `engine`,
`aliases`, `adapters`; checked by import-linter and tests/test_client.py), so a script or another
service can use it without installing Squall's dependencies. See docs/client.md.

    from squall_client import Client

    with Client("http://127.0.0.1:9101", api_key="...") as squall:
        done = squall.executions.run("core.local", {"cmd": "echo hi"}, wait=True)
        print(done.status, done.stdout)
"""

from squall_client._transport import __version__
from squall_client.aio import AsyncClient
from squall_client.client import Client
from squall_client.config import Settings
from squall_client.errors import ApiConnectionError, ApiError, ConfigError, ResponseError, SquallError, WaitTimeout
from squall_client.models import (
    COMPLETED,
    FAILED,
    Action,
    Alias,
    AliasExecution,
    AliasMatch,
    Execution,
    Health,
    Inquiry,
    KeyValue,
    Pack,
    Rule,
    RuleEnforcement,
    TriggerInstance,
    TriggerType,
)

__all__ = [
    "COMPLETED",
    "FAILED",
    "Action",
    "Alias",
    "AliasExecution",
    "AliasMatch",
    "ApiConnectionError",
    "ApiError",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Execution",
    "Health",
    "Inquiry",
    "KeyValue",
    "Pack",
    "ResponseError",
    "Rule",
    "RuleEnforcement",
    "Settings",
    "SquallError",
    "TriggerInstance",
    "TriggerType",
    "WaitTimeout",
    "__version__",
]
