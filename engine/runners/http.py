"""`http-request`: one HTTP request with `requests`, StackStorm's result and status rules (spec §1.4)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlparse

import requests

from engine.runners import RunOutcome, RunRequest

_VERSION = "3.9.0"


def _json_body(body: Any) -> str:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = ast.literal_eval(body)
    return json.dumps(body)


def _send(request: RunRequest) -> RunOutcome:
    runner = request.runner_parameters
    params = request.action_parameters
    url = runner["url"]
    host = urlparse(url).hostname or ""
    blacklist, whitelist = runner.get("url_hosts_blacklist"), runner.get("url_hosts_whitelist")
    if blacklist and whitelist:
        return RunOutcome("failed", {"error": '"url_hosts_blacklist" and "url_hosts_whitelist" are exclusive'})
    if (blacklist and host in blacklist) or (whitelist and host not in whitelist):
        return RunOutcome("failed", {"error": f'URL "{url}" uses a host that is not allowed for this action'})
    headers = {str(k): str(v) for k, v in (runner.get("headers") or {}).items()}
    headers.setdefault("User-Agent", f"st2/v{_VERSION}")
    headers["X-Stanley-Action"] = request.action.name
    body = params.get("body")
    files = None
    if params.get("file_name"):
        files = {"file": (params["file_name"], params.get("file_content") or "",
                          params.get("file_content_type") or "application/octet-stream")}
    method = (params.get("method") or ("POST" if body is not None or files else "GET")).upper()
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if body is not None and "json" in content_type.lower():
        body = _json_body(body)
    proxies = {k: v for k, v in (("http", runner.get("http_proxy")), ("https", runner.get("https_proxy"))) if v}
    auth = (runner["username"], runner.get("password") or "") if runner.get("username") else None
    try:
        response = requests.request(
            method, url, headers=headers, params=params.get("params") or None, data=body, files=files,
            cookies=runner.get("cookies") or None, auth=auth, proxies=proxies or None,
            allow_redirects=bool(runner.get("allow_redirects")), verify=runner.get("verify_ssl_cert", True),
            timeout=float(params.get("timeout") or 60),
        )
    except requests.Timeout as exc:
        return RunOutcome("timeout", {"error": f"request to {url} timed out: {exc}"})
    except requests.RequestException as exc:
        return RunOutcome("failed", {"error": f"request to {url} failed: {exc}"})
    parsed = False
    payload: Any = response.text
    if "application/json" in response.headers.get("Content-Type", ""):
        with contextlib.suppress(ValueError):
            payload, parsed = response.json(), True
    result = {"status_code": response.status_code, "body": payload, "parsed": parsed,
              "headers": dict(response.headers)}
    return RunOutcome("succeeded" if 200 <= response.status_code <= 206 else "failed", result)


class HttpRunner:
    async def run(self, request: RunRequest) -> RunOutcome:
        return await asyncio.to_thread(_send, request)

