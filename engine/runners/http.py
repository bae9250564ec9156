"""`http-request`: one HTTP request with `requests`, StackStorm's result and status rules (spec §1.4).

The request carries every header and cookie as given, and the password of a `url` that holds one
(`https://user:password@host/`), to the host it names and to redirects within it: a redirect to another
origin carries none of the caller's credential headers and cookies (`_Session`). The credentials it sent,
echoed back by the server, are scrubbed from its result (`_sent_credentials`), and the URL it names in an
error shows its password masked (`mask_url`). The host lists are checked on each request as sent
(`_Hops`), not on the URL as given: `urlparse` and requests read `http://127.0.0.1\\@allowed.example/` as
URLs of different hosts. What the response itself returns (a `Set-Cookie`, an `X-Subject-Token`) is its
result, as StackStorm keeps it: the next task of a workflow logs in with it."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import parse_url

from engine import logs
from engine.executions import scrub
from engine.parameters import credential_texts, mask_url, secret_header
from engine.runners import OUTPUT_LIMIT, RunOutcome, RunRequest

_VERSION = "3.9.0"


def _json_body(body: Any) -> str:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = ast.literal_eval(body)
    return json.dumps(body)


#: How much of a body is read at a time; the deadline is checked between reads.
_CHUNK = 64 * 1024


class _HostRefused(requests.RequestException):
    """A request (a redirect's) leads to a host this action may not call: raised before that host is asked
    anything."""


class _AddressRefused(Exception):
    """A connection reached an address `url_hosts_blacklist` lists: raised before anything is sent.

    Not an `OSError` (as requests' errors are): urllib3 would take it for a network error, retry and
    wrap it; this one leaves the request as it is."""


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What the resolver may read as an IPv4 address in the old forms `inet_aton` takes (2130706433,
#: 0x7f000001, 127.1, 0177.0.0.1): digits, hex digits, x and dots, nothing else.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


def _address(host: str) -> _Address | None:
    """`host` as an IP address when the resolver would read it as one (an IPv4-mapped IPv6 address as
    its IPv4 address), else None. `host` is lower case, without brackets or a trailing dot."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)
        return mapped or address
    if _NUMERIC_HOST.fullmatch(host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def _host_key(host: Any) -> str | _Address:
    """What a host is compared by: its address when it is one, however written, else its name in lower
    case without the trailing dot (`Example.COM.` is `example.com`)."""
    name = str(host).strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    return _address(name) or name


def _refused(host: str, blacklist: Any, whitelist: Any) -> bool:
    """Whether `url_hosts_blacklist` / `url_hosts_whitelist` forbid this action to call `host`.

    Both sides are compared by `_host_key`: `http://2130706433/` is refused by a blacklisted
    `127.0.0.1` as `http://127.0.0.1/` is, and a whitelisted `Localhost` allows `http://localhost/`."""
    key = _host_key(host)
    if blacklist:
        return any(key == _host_key(entry) for entry in blacklist)
    return bool(whitelist) and not any(key == _host_key(entry) for entry in whitelist)


def _blocked_addresses(blacklist: Any) -> frozenset[_Address]:
    """The addresses `url_hosts_blacklist` lists, for checking the address each connection reaches."""
    keys = (_host_key(entry) for entry in blacklist or ())
    return frozenset(key for key in keys if not isinstance(key, str))


def _check_peer(sock: socket.socket, host: str, blocked: frozenset[_Address]) -> None:
    """Refuse a connection whose far end is a blacklisted address, whatever name led there (a DNS name
    of 127.0.0.1 passes the name check). Closes the socket before raising: nothing was sent on it."""
    peer = _host_key(sock.getpeername()[0].split("%", 1)[0])
    if peer in blocked:
        sock.close()
        raise _AddressRefused(f'the host "{host}" is at {peer}, which url_hosts_blacklist lists')


def _hosts(url: str) -> list[str]:
    """The host of `url` as each parser that may pick the connection reads it: `urllib.parse` (requests
    2.32's adapter picks its pool by it) and urllib3's `parse_url` (older requests', a proxy's). They agree
    on a URL requests prepared or resolved (`_prepared_url`; a redirect's is percent-encoded, a `\\` as `%5C`),
    not on one as given (`http://127.0.0.1\\@allowed.example/`: allowed.example to `urlparse`, 127.0.0.1 to
    urllib3); each reading must pass the lists.
    `[""]` when neither reads a host."""
    hosts: list[str] = []
    with contextlib.suppress(ValueError):  # urllib3's LocationParseError is a ValueError
        hosts.append(urlparse(url).hostname or "")
    with contextlib.suppress(ValueError):
        hosts.append(parse_url(url).host or "")
    return hosts or [""]


def _refused_host(url: str, blacklist: Any, whitelist: Any) -> str | None:
    """The host of `url` (one of its readings, `_hosts`) the host lists refuse, None when all are allowed."""
    return next((host for host in _hosts(url) if _refused(host, blacklist, whitelist)), None)


def _prepared_url(url: str, params: Any) -> str:
    """`url` as requests sends it: `PreparedRequest.prepare_url` reads it with urllib3's `parse_url` and
    writes it anew (`http://127.0.0.1:9\\@allowed.example/` is sent as `http://127.0.0.1:9/%5C@allowed.example/`).
    `url` itself when requests cannot prepare it (the send then fails saying why)."""
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, params)
    except requests.RequestException:
        return url
    return prepared.url or url


class _Hops:
    """The requests of one run, as its adapter sends them: the first, then each redirect followed.

    Each is checked against the host lists before it is sent, on its URL as sent: requests resolves a
    redirect its own way (`Location: ////127.0.0.2/` is a path of the host that answered to `urljoin`, and
    the host 127.0.0.2 to requests), so the check is made on what it resolved, not on a reading of the
    `Location`. The `Authorization` each carried is kept for `_sent_credentials`, and what a redirect to
    another origin was not given (`withhold`) for the result, as `not_forwarded`."""

    def __init__(self, blacklist: Any, whitelist: Any) -> None:
        self.blacklist, self.whitelist = blacklist, whitelist
        self.authorizations: list[str] = []
        self.not_forwarded: dict[str, Any] | None = None
        self._previous: str | None = None

    def withhold(self, request: requests.PreparedRequest) -> None:
        """Take the caller's credentials off `request`, a redirect to another origin (`_withheld`), and note
        the first that held any: after it, no hop has them to give."""
        headers, cookies = _withheld(request)
        if (headers or cookies) and self.not_forwarded is None:
            self.not_forwarded = {"to": mask_url(request.url or ""), "headers": headers, "cookies": cookies}

    def refusal(self, url: str, shown: str) -> str | None:
        """Why the next request, to `url` (as prepared; `shown` as the error names it, masked), may not be
        sent: a redirect's names the URL that led there."""
        host = _refused_host(url, self.blacklist, self.whitelist)
        if host is None:
            return None
        if self._previous is None:
            return f'URL "{shown}" uses the host "{host}", which is not allowed for this action'
        # (requests keeps a URL's password in the URL it sends)
        return f'{mask_url(self._previous)} redirects to {shown}, whose host "{host}" is not allowed for this action'

    def check(self, request: requests.PreparedRequest) -> None:
        """Raise `_HostRefused` when the host `request` goes to is refused; else note it as sent."""
        url = request.url or ""
        refused = self.refusal(url, mask_url(url))
        if refused is not None:
            raise _HostRefused(refused)
        self._previous = url
        if authorization := request.headers.get("Authorization"):
            self.authorizations.append(authorization)


#: The credential header a redirect keeps: it is the proxy's, which requests sets anew for each hop
#: (`rebuild_proxies`), not the host's.
_PROXY_AUTHORIZATION = "proxy-authorization"


def _withheld(request: requests.PreparedRequest) -> tuple[list[str], list[str]]:
    """Remove from `request` every credential header (`secret_header`, the rule by which the engine masks
    them) and the caller's cookies; their names, sorted.

    The caller's cookies (`cookies`) are those of the jar without a domain: requests sends them to every
    host, while one a response set is scoped by the jar to the host that set it, and stays. The `Cookie`
    header is made anew from what remains."""
    headers = sorted(name for name in request.headers if secret_header(name) and name.lower() != _PROXY_AUTHORIZATION)
    for name in headers:
        del request.headers[name]
    jar = request._cookies  # type: ignore[attr-defined]  # requests' own jar of the request's cookies
    mine = [cookie for cookie in jar if not cookie.domain]
    for cookie in mine:
        jar.clear(cookie.domain, cookie.path, cookie.name)
    request.prepare_cookies(jar)
    return [name for name in headers if name.lower() != "cookie"], sorted({cookie.name for cookie in mine})


class _Session(requests.Session):
    """requests' session whose redirects to another origin carry none of the caller's credentials.

    requests strips only `Authorization` (and the basic login made of `username`), leaving `X-Api-Key`,
    `Private-Token` and the cookies given to go wherever a `Location` points. Held back by requests' own
    rule for `Authorization` (`should_strip_auth`: another host, scheme or port, but for `http` to
    `https` on the standard ports); once held back they are not sent again, even back to the first host."""

    def __init__(self, hops: _Hops) -> None:
        super().__init__()
        self._hops = hops

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if self.should_strip_auth(response.request.url, prepared_request.url):
            self._hops.withhold(prepared_request)
        super().rebuild_auth(prepared_request, response)


def _read_body(response: requests.Response, deadline: float) -> tuple[bytes, bool]:
    """The body, at most `OUTPUT_LIMIT` bytes (and whether more was cut off), read before `deadline`.

    `timeout` in requests bounds each socket read only; a server sending a byte now and then would
    hold the run forever. Reading one chunk at a time (`read1`: what one read returns) lets the
    deadline end it, at most one read's timeout late. Raises `TimeoutError` past the deadline."""
    body = bytearray()
    while chunk := response.raw.read1(_CHUNK, decode_content=True):
        body.extend(chunk)
        if len(body) > OUTPUT_LIMIT:
            return bytes(body[:OUTPUT_LIMIT]), True
        if time.monotonic() > deadline:
            raise TimeoutError
    return bytes(body), False


class _Abort:
    """The sockets of one run's request, shut down when the run is canceled.

    The request runs in a thread blocked in socket calls, which asyncio's cancellation cannot reach;
    shutting its sockets down makes the blocked call return at once (the server sees the connection
    end), so the thread ends instead of finishing a request nobody waits for. A socket connected
    after the cancel is shut down as soon as it is connected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.aborted = False

    def track(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.aborted:
                self._sockets.append(sock)
                return
        _shut(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted, sockets, self._sockets = True, self._sockets, []
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut the connection down at the socket level (`socket.socket.shutdown`, bypassing `SSLSocket`'s,
    which would drop its TLS state under the thread reading it); the blocked read then sees the end.
    A socket the request already closed refuses (EBADF), harmlessly."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _AbortableAdapter(HTTPAdapter):
    """requests' adapter that checks each request's host before sending it (`_Hops`), whose connections
    report their sockets to an `_Abort` once connected, and whose new sockets are checked against the
    blacklist's addresses (`_check_peer`) before use.

    The session, and so its pools, belong to one run: the pool's connection factory is wrapped in place.
    Through a proxy the socket reaches the proxy, not the host, so it is not checked."""

    def __init__(self, abort: _Abort, hops: _Hops, blocked: frozenset[_Address] = frozenset()) -> None:
        self._abort = abort
        self._hops = hops
        self._blocked = blocked
        super().__init__()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self._hops.check(request)  # every request of the session comes here, each redirect's too
        return super().send(request, *args, **kwargs)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracked(super().get_connection_with_tls_context(*args, **kwargs))

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:  # what requests before 2.32.2 calls
        return self._tracked(super().get_connection(*args, **kwargs))

    def _tracked(self, pool: Any) -> Any:
        if not getattr(pool, "_squall_abortable", False):
            new_conn, abort = pool._new_conn, self._abort
            blocked = self._blocked if getattr(pool, "proxy", None) is None else frozenset()

            def tracked_conn() -> Any:
                conn = new_conn()
                connect = conn.connect
                if blocked:
                    conn._new_conn = _checked_socket(conn, blocked)

                def tracked_connect() -> None:
                    connect()
                    abort.track(conn.sock)

                conn.connect = tracked_connect
                return conn

            pool._new_conn = tracked_conn
            pool._squall_abortable = True
        return pool


def _checked_socket(conn: Any, blocked: frozenset[_Address]) -> Any:
    """Wrap a urllib3 connection's socket factory (what its `connect` calls first, before TLS) so the
    socket is checked by `_check_peer` as soon as it is connected."""
    new_socket = conn._new_conn

    def checked() -> socket.socket:
        sock = new_socket()
        _check_peer(sock, conn.host, blocked)
        return sock

    return checked


def _timeout(request: RunRequest) -> float:
    """The run's `timeout` parameter in seconds (StackStorm's default, 60)."""
    return float(request.action_parameters.get("timeout") or 60)


def _send(request: RunRequest, abort: _Abort | None = None) -> RunOutcome:
    """The request sent and its outcome, scrubbed of the credentials it sent (`_sent_credentials`)."""
    runner = request.runner_parameters
    headers = {str(k): str(v) for k, v in (runner.get("headers") or {}).items()}
    headers.setdefault("User-Agent", f"st2/v{_VERSION}")
    headers["X-Stanley-Action"] = request.action.name
    auth = (runner["username"], runner.get("password") or "") if runner.get("username") else None
    hops = _Hops(runner.get("url_hosts_blacklist"), runner.get("url_hosts_whitelist"))
    outcome = _sent(request, headers, auth, abort, hops)
    proxies = {name: runner[name] for name in ("http_proxy", "https_proxy") if runner.get(name)}
    return RunOutcome(outcome.status, scrub(outcome.result, _sent_credentials(headers, runner.get("cookies"), auth,
                                                                             runner["url"], hops.authorizations,
                                                                             proxies)))


def _sent(request: RunRequest, headers: dict[str, str], auth: tuple[str, str] | None,
          abort: _Abort | None, hops: _Hops) -> RunOutcome:
    """Send the request with `headers` and `auth`, each of its hops checked by `hops`; its outcome as
    StackStorm's runner words it, the URL named with its password masked (`mask_url`)."""
    runner = request.runner_parameters
    params = request.action_parameters
    url = runner["url"]
    shown = mask_url(url)
    blacklist = hops.blacklist
    if blacklist and hops.whitelist:
        return RunOutcome("failed", {"error": '"url_hosts_blacklist" and "url_hosts_whitelist" are exclusive'})
    # refused before the body is built, as the host requests connects to (`_Hops` checks it again when sent)
    refused = hops.refusal(_prepared_url(url, params.get("params") or None), shown)
    if refused is not None:
        return RunOutcome("failed", {"error": refused})
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
    timeout = _timeout(request)
    deadline = time.monotonic() + timeout
    truncated = False
    try:
        with _Session(hops) as session:
            adapter = _AbortableAdapter(abort or _Abort(), hops, _blocked_addresses(blacklist))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            response = session.request(
                method, url, headers=headers, params=params.get("params") or None, data=body, files=files,
                cookies=runner.get("cookies") or None, auth=auth, proxies=proxies or None,
                allow_redirects=bool(runner.get("allow_redirects")), verify=runner.get("verify_ssl_cert", True),
                timeout=timeout, stream=True,
            )
            with response:
                content, truncated = _read_body(response, deadline)
    except (requests.Timeout, TimeoutError) as exc:
        return RunOutcome("timeout", {"error": f"request to {shown} timed out after {timeout:g} seconds: "
                                               f"{_told(exc, url)}"})
    except (_HostRefused, _AddressRefused) as exc:
        return RunOutcome("failed", {"error": f"request to {shown} refused: {exc}"})
    except requests.RequestException as exc:
        return RunOutcome("failed", {"error": f"request to {shown} failed: {_told(exc, url)}"})
    # What was read, for `text` and `json()` to decode as they would the whole body (charset rules).
    response._content, response._content_consumed = content, True
    parsed = False
    payload: Any = response.text
    if "application/json" in response.headers.get("Content-Type", "") and not truncated:
        with contextlib.suppress(ValueError):
            payload, parsed = response.json(), True
    result = {"status_code": response.status_code, "body": payload, "parsed": parsed,
              "headers": dict(response.headers)}
    if truncated:  # StackStorm keeps the whole body; Squall keeps what every runner keeps of output
        result["truncated"] = f"the body was cut at {OUTPUT_LIMIT} bytes"
    if hops.not_forwarded is not None:  # why the host redirected to may answer 401
        result["not_forwarded"] = hops.not_forwarded
    return RunOutcome("succeeded" if 200 <= response.status_code <= 206 else "failed", result)


def _told(exc: Exception, url: str) -> str:
    """requests' error as text, the URL it quotes (`Invalid URL '…'`) with its password masked."""
    text = str(exc)
    return text.replace(url, mask_url(url)) if url in text else text


def _sent_credentials(headers: dict[str, str], cookies: Any, auth: tuple[str, str] | None,
                      url: str = "", authorizations: list[str] | tuple[str, ...] = (),
                      proxies: Mapping[str, str] | None = None) -> list[str]:
    """The credentials this request sends, as texts to scrub from its result, longest first: those of its
    headers, cookies and URL (`engine.parameters.credential_texts`, the rule for what could be one), the
    `Basic` header requests makes of `username` and `password`, and the token of each `Authorization`
    header its requests carried (`_Hops.authorizations`): the `Basic` header made of the URL's user and
    password is taken as sent, since only requests' own reading of the URL says which they are
    (`http://ann:pw@127.0.0.1\\@elsewhere/` sends `ann:pw`, and a tab in the password is sent as a tab).
    An echo server (httpbin's `/headers`) answers with them, scrubbed as the engine scrubs a secret
    parameter's value (`scrub`). So are a proxy's credentials (`proxies`: `http_proxy` and `https_proxy`
    by name) and the `Proxy-Authorization` header requests makes of them (`get_auth_from_url`)."""
    proxies = proxies or {}
    texts = set(credential_texts({"headers": headers, "cookies": cookies, "url": url, **proxies}))
    logins = [auth] if auth is not None else []
    logins += [login for proxy in proxies.values() if any(login := requests.utils.get_auth_from_url(proxy))]
    texts.update(base64.b64encode(f"{user}:{password}".encode()).decode("ascii") for user, password in logins)
    texts.update(token for value in authorizations if (token := value.partition(" ")[2].strip()))
    return sorted(texts, key=len, reverse=True)


#: How long a canceled run waits for its request's thread to notice the shut-down sockets.
_ABORT_WAIT = 5.0

#: How long past its `timeout` a request may take before the run ends it: the thread's own checks (a
#: connect's or a read's timeout, the body's deadline) usually end it first and say where it was.
_TIMEOUT_SLACK = 1.0


class HttpRunner:
    async def run(self, request: RunRequest) -> RunOutcome:
        """Send the request in a thread; a cancel, or the run's `timeout` passing, shuts its connection
        down and ends the thread with it, instead of leaving the request to run to its end.

        requests' `timeout` bounds each socket read only, so a server sending its headers a byte at a
        time would hold the thread far past it; the whole send is bounded here.

        The thread logs through Squall's handler (urllib3 quotes each request's path and query: a secret
        parameter rendered into the URL), so its lines are scrubbed of the execution's secrets, those its
        output sink scrubs (`logs.scrubbing`; the task and its thread copy the context as they start)."""
        abort = _Abort()
        with logs.scrubbing(getattr(request.on_output, "secrets", None)):
            sending = asyncio.ensure_future(asyncio.to_thread(_send, request, abort))
        timeout = _timeout(request)
        try:
            return await asyncio.wait_for(asyncio.shield(sending), timeout + _TIMEOUT_SLACK)
        except TimeoutError:
            await _end(abort, sending)
            url = mask_url(request.runner_parameters["url"])
            return RunOutcome("timeout", {"error": f"request to {url} timed out after {timeout:g} seconds"})
        except asyncio.CancelledError:
            await _end(abort, sending)
            raise


async def _end(abort: _Abort, sending: asyncio.Future[RunOutcome]) -> None:
    """Shut the request's connection down and give its thread a moment to notice; its outcome is dropped."""
    abort.abort()
    await asyncio.wait([sending], timeout=_ABORT_WAIT)  # a connect under way ends at its timeout
    sending.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a canceled run's request (an error from its shut socket), unwanted."""
    if not task.cancelled():
        task.exception()

