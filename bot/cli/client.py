"""The CLI's line to a running `squall serve`: its HTTP API, when one is configured and answering.

Some commands mean most where the service runs them: a trigger emitted there reaches the rules,
sensors and chat adapters of that process. The CLI authenticates with a key from `api.keys` or
`$SQUALL_API_KEYS`; without one it makes a temporary key in the shared database (having the
database is already every right the API grants) and deletes it afterwards.

Imported only by the commands that use it (`squall trigger emit`), so `requests` and the database
layer it needs cost the other commands nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from bot.apikeys import create_key, static_keys
from bot.headers import INSTANCE_HEADER
from engine.config import Config
from engine.storage import Store

__all__ = ["INSTANCE_HEADER", "PROBE_SECONDS", "ServiceApi", "running_service"]

PROBE_SECONDS = 0.5


class ServiceApi:
    """A `requests` session against the service's `/api/v1`, with the key set."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.headers["St2-Api-Key"] = key

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.base}{path}", timeout=kwargs.pop("timeout", 30), **kwargs)


def _answering(api_url: str) -> bool:
    root = api_url.rsplit("/api/v1", 1)[0]
    try:
        return requests.get(f"{root}/healthz", timeout=PROBE_SECONDS).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def running_service(config: Config) -> Iterator[ServiceApi | None]:
    """A client for the running service, or None when no API is configured or none answers."""
    if config.section("api").get("enabled", True) is False or not _answering(config.api_url):
        yield None
        return
    keys = static_keys(config.section("api"))
    if keys:
        api = ServiceApi(config.api_url, keys[0])
        try:
            yield api
        finally:
            api.session.close()
        return
    store = Store.open(config.database_url, upgrade_in_use=False)
    key, record = create_key(store, "squall CLI (temporary)")
    api = ServiceApi(config.api_url, key)
    try:
        yield api
    finally:
        api.session.close()
        store.api_key_delete(record["id"])
        store.close()
