"""The API's /docs and /redoc pages work without the internet: every script, style and icon they load is
served by Squall itself (FastAPI's own pages load them from cdn.jsdelivr.net, and were blank offline), and
none of it is served when `api.public_docs` is false."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import REPO

#: The content type each of the pages' files must come with (a browser refuses a script sent as text/plain).
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _configure(home: Path, public_docs: bool) -> Path:
    config = home / "config.yml"
    config.write_text(config.read_text().replace("api:\n", f"api:\n  public_docs: {str(public_docs).lower()}\n"))
    return config


async def _anon(home: Path, public_docs: bool) -> AsyncIterator[httpx.AsyncClient]:
    squall = await Squall.start(load_config(_configure(home, public_docs)))
    try:
        transport = httpx.ASGITransport(app=create_api(squall))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
            yield client
    finally:
        await squall.close()


@pytest.fixture
async def anon(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _anon(home, public_docs=True):
        yield client


def _loaded(page: str) -> list[str]:
    """The URLs a page makes the browser load: its scripts, styles and icon."""
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"', page)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_files_squall_serves(anon: httpx.AsyncClient, path: str) -> None:
    page = await anon.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assert not re.search(r"(?:https?:)?//", page.text), "the page refers to another host"
    loaded = _loaded(page.text)
    assert any(url.endswith(".js") for url in loaded), loaded
    for url in loaded:
        assert url.startswith("/docs-assets/"), url
        served = await anon.get(url)
        assert served.status_code == 200, url
        assert served.headers["content-type"].split(";")[0] == CONTENT_TYPES[Path(url).suffix], url
        assert len(served.content) > 1000, url
    # The web UI's policy (no inline script) is not put on these pages: they start their viewer inline.
    assert "script-src 'self'" not in page.headers.get("content-security-policy", "")


async def test_swagger_uis_oauth2_redirect_page_is_still_served(anon: httpx.AsyncClient) -> None:
    answer = await anon.get("/docs/oauth2-redirect")
    assert answer.status_code == 200 and "oauth2" in answer.text


async def test_public_docs_false_serves_no_page_and_no_file(home: Path) -> None:
    async for anon in _anon(home, public_docs=False):
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect", "/docs-assets/swagger-ui-bundle.js",
                     "/docs-assets/swagger-ui.css", "/docs-assets/redoc.standalone.js", "/docs-assets/favicon.png"):
            assert (await anon.get(path)).status_code == 404, path
        assert (await anon.get("/openapi.json")).status_code == 401


def test_the_pages_files_are_not_looked_up_at_start_up() -> None:
    """Start-up (bench/startup.py) does not pay for the package holding the files."""
    probe = "import sys, bot.http.app; assert 'fastapi_offline' not in sys.modules, 'imported at start-up'"
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)
