"""The API's `/docs` (Swagger UI) and `/redoc` pages, with their scripts and styles served by Squall itself.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net (and ReDoc's fonts from Google), so on
an operations network without the internet both pages stayed blank. The pages here are FastAPI's
(`fastapi.openapi.docs`) pointing at `ASSETS` on this server instead, whose files are those the
fastapi-offline package ships. Its folder is looked up at the first request for a page's asset, never at
start-up (`bench/startup.py`). `install` adds the routes FastAPI's `docs_url` and `redoc_url` would have:
`/docs`, its `/docs/oauth2-redirect`, and `/redoc`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
#: Where the pages' files are served, same origin as the pages.
ASSETS = "/docs-assets"
#: The files of fastapi-offline's `static/` folder the pages use, and their content types.
FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
         "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


@cache
def _folder() -> Path:
    """fastapi-offline's `static/` folder, imported at the first asset asked for (it is not needed to start)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


#: The one other host ReDoc's script still names: the logo of its menu's footer, fetched by every page view.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def _redoc_script() -> bytes:
    """ReDoc's script with its footer's logo taken from this server (`ASSETS`): offline it was a failed
    request to cdn.redoc.ly, and a console error, on every view, and online a call home from the network."""
    return (_folder() / "redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, f"{ASSETS}/favicon.png".encode())


def _asset(name: str) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint answering one of `FILES`."""

    async def serve(request: Request) -> Response:
        if name == "redoc.standalone.js":
            return Response(_redoc_script(), media_type=FILES[name])
        return FileResponse(_folder() / name, media_type=FILES[name])

    return serve


def _root(request: Request) -> str:
    """The path the app is served under (uvicorn's `--root-path`), as FastAPI's pages prefix their URLs."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def install(app: FastAPI, openapi_url: str) -> None:
    """Serve the two pages over `openapi_url`, and their files, on `app`."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png", oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters)

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False)

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
    for name in FILES:
        app.add_route(f"{ASSETS}/{name}", _asset(name), include_in_schema=False)
