"""The `http-request` runner through `core.http`, against a real local HTTP server (spec §1.4)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import pytest
import requests

from bot.app import Squall
from engine.runners import OUTPUT_LIMIT
from engine.runners.http import _VERSION


@dataclass
class Server:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    #: Set by `/endless` and `/hold` once the client has closed its connection.
    gone: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain",
               extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, chunks: Iterator[bytes], pause: float) -> None:
        """A body of unknown length, ended by closing the connection; stops when the client has gone."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):
            for chunk in chunks:
                if self.server.record.release.wait(pause):
                    return
                self.wfile.write(chunk)
                self.wfile.flush()

    def _hold(self) -> None:
        """Keep the request unanswered, watching the connection: the client's close makes it readable at EOF."""
        for _ in range(600):
            if self.server.record.release.is_set():
                return
            readable, _, _ = select.select([self.connection], [], [], 0.1)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                self.server.record.gone.set()
                return

    def _slow_headers(self) -> None:
        """The status line, then one header a byte every 0.2 s for 8 s; notes when the client hangs up."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(40):
                if self.server.record.release.wait(0.2):
                    return
                self.wfile.write(b"a")
            self.wfile.write(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")  # no body to time out
            return
        self.server.record.gone.set()  # a write failed: the client shut the connection

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urlparse(self.path)
        seen = {"method": self.command, "path": parsed.path, "query": parse_qs(parsed.query),
                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                "listener": self.server.server_address[0]}
        self.server.record.seen.append(seen)
        route = parsed.path
        if route == "/json":
            self._reply(200, b'{"hello": "world", "n": [1, 2]}', "application/json; charset=utf-8")
        elif route == "/text":
            self._reply(200, b"plain text\n")
        elif route == "/bad-json":
            self._reply(200, b"{not json", "application/json")
        elif route.startswith("/status/"):
            self._reply(int(route.rsplit("/", 1)[1]), b"status body")
        elif route == "/echo":
            auth = self.headers.get("Authorization", "")
            decoded = base64.b64decode(auth.split(" ", 1)[1]).decode() if auth.startswith("Basic ") else None
            payload = {"method": self.command, "body": body.decode("utf-8", "replace"), "auth": decoded,
                       "content_type": self.headers.get("Content-Type")}
            self._reply(200, json.dumps(payload).encode(), "application/json")
        elif route.endswith("/headers"):  # the request's headers, as httpbin's `/headers` answers
            self._reply(200, json.dumps({"headers": dict(self.headers.items())}).encode(), "application/json")
        elif route == "/redirect":
            self._reply(302, b"", extra={"Location": "/json"})
        elif route == "/redirect-to":  # to the URL in ?to=, another host's
            self._reply(302, b"", extra={"Location": parse_qs(parsed.query)["to"][0]})
        elif route == "/drip":  # a byte now and then, each well within a read timeout, for 8 s
            self._stream((b"x" for _ in range(40)), pause=0.2)
        elif route == "/big":  # more than any runner keeps
            self._stream((b"y" * 1048576 for _ in range(OUTPUT_LIMIT // 1048576 + 1)), pause=0)
        elif route == "/slow":
            self.server.record.release.wait(10)
            self._reply(200, b"late")
        elif route == "/endless":  # a byte every 0.1 s for a minute, until the client goes
            self._stream((b"z" for _ in range(600)), pause=0.1)
            self.server.record.gone.set()  # the stream only stops early when a write failed
        elif route == "/hold":  # no answer for a minute; notes when the client hangs up
            self._hold()
        elif route == "/slow-headers":
            self._slow_headers()
        else:
            self._reply(404, b"no such page")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


@contextlib.contextmanager
def _listening(address: str, record: Server | None = None) -> Iterator[tuple[Server, str]]:
    """A test server on `address` and its URL, recording into `record` (a new one when None)."""
    httpd = ThreadingHTTPServer((address, 0), _Handler)
    httpd.daemon_threads = True
    url = f"http://{address}:{httpd.server_address[1]}"
    record = record or Server(url=url)
    httpd.record = record  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record, url
    finally:
        record.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with _listening("127.0.0.1") as (record, _):
        yield record


@pytest.fixture
def other_host(server: Server) -> Iterator[str]:
    """The URL of a second listener, on 127.0.0.2 (another host), recording into `server`'s record."""
    with _listening("127.0.0.2", server) as (_, url):
        yield url


async def run(app: Squall, params: dict[str, Any]) -> dict[str, Any]:
    record = await app.executions.request("core.http", params)
    return await app.executions.wait(record["id"], timeout=30)


async def test_get_json(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/json"})
    assert done["status"] == "succeeded", done["result"]
    result = done["result"]
    assert result["status_code"] == 200
    assert result["parsed"] is True
    assert result["body"] == {"hello": "world", "n": [1, 2]}
    assert result["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert len(server.seen) == 1
    request = server.seen[0]
    assert request["method"] == "GET"
    assert request["path"] == "/json"
    assert request["body"] == b""
    assert request["headers"]["user-agent"] == f"st2/v{_VERSION}"
    assert request["headers"]["user-agent"].startswith("st2/v")
    assert request["headers"]["x-stanley-action"] == "http"


async def test_text_and_unparsable_json_bodies_stay_text(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/text"})
    assert done["status"] == "succeeded"
    assert done["result"]["parsed"] is False
    assert done["result"]["body"] == "plain text\n"
    done = await run(squall, {"url": f"{server.url}/bad-json"})
    assert done["status"] == "succeeded"
    assert done["result"]["parsed"] is False
    assert done["result"]["body"] == "{not json"


async def test_query_parameters_and_custom_headers(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/json", "params": {"q": "a b&c", "n": 2},
                              "headers": {"X-Custom": "yes"}, "cookies": {"session": "abc"}})
    assert done["status"] == "succeeded"
    request = server.seen[0]
    assert request["query"] == {"q": ["a b&c"], "n": ["2"]}
    assert request["headers"]["x-custom"] == "yes"
    assert request["headers"]["cookie"] == "session=abc"
    assert request["headers"]["x-stanley-action"] == "http"


async def test_post_json_body_is_sent_as_json(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/echo", "body": '{"a": 1, "b": [true, null]}',
                              "headers": {"Content-Type": "application/json"}})
    assert done["status"] == "succeeded", done["result"]
    request = server.seen[0]
    assert request["method"] == "POST"  # the default when there is a body
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {"a": 1, "b": [True, None]}
    assert int(request["headers"]["content-length"]) == len(request["body"])
    assert done["result"]["body"]["method"] == "POST"


async def test_python_literal_body_is_reencoded_as_json(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/echo", "method": "PUT", "body": "{'a': 1, 'b': True}",
                              "headers": {"content-type": "application/json; charset=utf-8"}})
    assert done["status"] == "succeeded", done["result"]
    request = server.seen[0]
    assert request["method"] == "PUT"
    assert json.loads(request["body"]) == {"a": 1, "b": True}


async def test_non_json_body_is_sent_verbatim(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/echo", "body": "{'not': json}",
                              "headers": {"Content-Type": "text/plain"}})
    assert done["status"] == "succeeded"
    assert server.seen[0]["body"] == b"{'not': json}"


async def test_json_content_type_with_unparsable_body_fails_before_sending(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/echo", "body": "not json at all",
                              "headers": {"Content-Type": "application/json"}})
    assert done["status"] == "failed"
    assert done["result"]["error"]
    assert server.seen == []


async def test_file_upload_is_multipart(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/echo", "file_name": "notes.txt", "file_content": "line 1",
                              "file_content_type": "text/plain"})
    assert done["status"] == "succeeded", done["result"]
    request = server.seen[0]
    assert request["method"] == "POST"
    assert request["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert b'filename="notes.txt"' in request["body"]
    assert b"Content-Type: text/plain" in request["body"]
    assert b"line 1" in request["body"]


@pytest.mark.parametrize(
    ("code", "status"),
    [(201, "succeeded"), (204, "succeeded"), (206, "succeeded"), (207, "failed"), (404, "failed"),
     (500, "failed"), (199, "failed")],
)
async def test_status_codes(squall: Squall, server: Server, code: int, status: str) -> None:
    done = await run(squall, {"url": f"{server.url}/status/{code}"})
    assert done["status"] == status
    assert done["result"]["status_code"] == code


async def test_not_found(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/nowhere"})
    assert done["status"] == "failed"
    assert done["result"]["status_code"] == 404
    assert done["result"]["body"] == "no such page"


async def test_redirects_are_followed_only_when_allowed(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/redirect"})
    assert done["status"] == "failed"
    assert done["result"]["status_code"] == 302
    done = await run(squall, {"url": f"{server.url}/redirect", "allow_redirects": True})
    assert done["status"] == "succeeded"
    assert done["result"]["body"] == {"hello": "world", "n": [1, 2]}


async def test_head_and_explicit_methods(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/json", "method": "HEAD"})
    assert done["status"] == "succeeded"
    assert server.seen[-1]["method"] == "HEAD"
    done = await run(squall, {"url": f"{server.url}/json", "method": "DELETE"})
    assert server.seen[-1]["method"] == "DELETE"


async def test_basic_auth_and_password_secrecy(squall: Squall, server: Server) -> None:
    password = "s3cret-pass"
    done = await run(squall, {"url": f"{server.url}/echo", "username": "alice", "password": password})
    assert done["status"] == "succeeded", done["result"]
    expected = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    assert server.seen[0]["headers"]["authorization"] == expected
    assert done["parameters"]["username"] == "alice"
    assert done["parameters"]["password"] == "********"
    stored = await squall.executions.get(done["id"])
    assert password not in json.dumps(stored["parameters"])
    # the server echoed the password back: it is scrubbed from the stored result too
    assert password not in json.dumps(stored)
    assert stored["result"]["body"]["auth"] == "alice:********"
    listed = await squall.executions.list()
    assert password not in json.dumps(listed, default=str)


async def test_url_hosts_blacklist_blocks_the_host(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_blacklist": ["127.0.0.1"]})
    assert done["status"] == "failed"
    assert "127.0.0.1" in done["result"]["error"]
    assert server.seen == []
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_blacklist": ["example.invalid"]})
    assert done["status"] == "succeeded"
    assert len(server.seen) == 1


async def test_url_hosts_whitelist(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_whitelist": ["example.invalid"]})
    assert done["status"] == "failed"
    assert server.seen == []
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_whitelist": ["127.0.0.1"]})
    assert done["status"] == "succeeded"
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_whitelist": ["127.0.0.1"],
                              "url_hosts_blacklist": ["example.invalid"]})
    assert done["status"] == "failed"
    assert "exclusive" in done["result"]["error"]
    assert len(server.seen) == 1


@pytest.mark.parametrize("lists", [{"url_hosts_blacklist": ["127.0.0.1"]}, {"url_hosts_whitelist": ["localhost"]}])
async def test_a_redirect_cannot_lead_to_a_host_the_lists_refuse(squall: Squall, server: Server, other_host: str,
                                                                 lists: dict[str, list[str]]) -> None:
    """The host lists hold for every hop: the refused host is never asked anything. (Against the
    blacklist the first hop is 127.0.0.2: localhost is refused too, being 127.0.0.1.)"""
    start = other_host if "url_hosts_blacklist" in lists else server.url.replace("127.0.0.1", "localhost")
    target = f"{server.url}/json"
    done = await run(squall, {"url": f"{start}/redirect-to?to={target}", "allow_redirects": True, **lists})
    assert done["status"] == "failed", done["result"]
    assert f'redirects to {target}, whose host "127.0.0.1" is not allowed' in done["result"]["error"]
    assert [seen["path"] for seen in server.seen] == ["/redirect-to"]
    # a redirect to an allowed host is followed
    done = await run(squall, {"url": f"{start}/redirect-to?to={start}/json", "allow_redirects": True, **lists})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["body"] == {"hello": "world", "n": [1, 2]}


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.1.", "LOCALHOST.",
                                  "[::ffff:127.0.0.1]"])
async def test_the_blacklist_holds_for_every_spelling_of_a_host(squall: Squall, server: Server, host: str) -> None:
    """Names are compared without case or a trailing dot, addresses as addresses: 2130706433, 0x7f000001,
    127.1 and 0177.0.0.1 are all 127.0.0.1 to the resolver, so all are refused before any connection."""
    port = urlparse(server.url).port
    done = await run(squall, {"url": f"http://{host}:{port}/json", "url_hosts_blacklist": ["127.0.0.1", "localhost"]})
    assert done["status"] == "failed", done["result"]
    assert "which is not allowed for this action" in done["result"]["error"]
    assert server.seen == []


@pytest.mark.parametrize("entry", ["Localhost", "localhost.", "LOCALHOST"])
async def test_a_whitelist_entry_matches_whatever_its_case(squall: Squall, server: Server, entry: str) -> None:
    done = await run(squall, {"url": f"{server.url.replace('127.0.0.1', 'Localhost')}/json",
                              "url_hosts_whitelist": [entry]})
    assert done["status"] == "succeeded", done["result"]
    done = await run(squall, {"url": f"{server.url}/json", "url_hosts_whitelist": ["0x7f000001"]})
    assert done["status"] == "succeeded", done["result"]


async def test_the_blacklist_holds_for_the_address_a_name_leads_to(squall: Squall, server: Server,
                                                                   other_host: str) -> None:
    """An address in the blacklist is checked against the address connected to, before anything is
    sent: a name that resolves to it (localhost is 127.0.0.1) is refused, on the first hop or a redirect."""
    by_name = server.url.replace("127.0.0.1", "localhost")
    done = await run(squall, {"url": f"{by_name}/json", "url_hosts_blacklist": ["127.0.0.1"]})
    assert done["status"] == "failed", done["result"]
    assert 'the host "localhost" is at 127.0.0.1, which url_hosts_blacklist lists' in done["result"]["error"]
    assert server.seen == []
    done = await run(squall, {"url": f"{other_host}/redirect-to?to={by_name}/json", "allow_redirects": True,
                              "url_hosts_blacklist": ["127.0.0.1"]})
    assert done["status"] == "failed", done["result"]
    assert "is at 127.0.0.1" in done["result"]["error"]
    assert [seen["path"] for seen in server.seen] == ["/redirect-to"]


PASSWORD = "Backslash-Passw0rd"


async def test_a_backslash_in_the_authority_cannot_pass_the_whitelist(squall: Squall, server: Server) -> None:
    """`urlparse` reads `http://127.0.0.1:PORT\\@allowed.example/` as a URL of allowed.example; requests (urllib3's
    `parse_url`) ends the authority at the backslash and connects to 127.0.0.1. The host checked is the host
    requests connects to: the URL is refused, naming that host and the URL with its password masked."""
    port = urlparse(server.url).port
    url = f"http://ann:{PASSWORD}@127.0.0.1:{port}\\@allowed.example/json"
    done = await run(squall, {"url": url, "url_hosts_whitelist": ["allowed.example"]})
    assert done["status"] == "failed", done["result"]
    error = done["result"]["error"]
    assert f'URL "http://ann:********@127.0.0.1:{port}\\@allowed.example/json" uses the host "127.0.0.1"' in error
    assert PASSWORD not in error
    assert server.seen == []


async def test_a_backslash_in_the_authority_cannot_reach_a_blacklisted_name(squall: Squall, server: Server) -> None:
    """The same trick against a blacklisted DNS name (not caught when connecting: only the blacklist's
    addresses are checked against the address a connection reaches)."""
    port = urlparse(server.url).port
    done = await run(squall, {"url": f"http://localhost:{port}\\@example.invalid/json",
                              "url_hosts_blacklist": ["localhost"]})
    assert done["status"] == "failed", done["result"]
    assert 'uses the host "localhost", which is not allowed for this action' in done["result"]["error"]
    assert server.seen == []


@pytest.mark.parametrize("lead", ["////", "//\t//"])
async def test_a_redirect_is_checked_as_requests_follows_it(squall: Squall, server: Server, other_host: str,
                                                            lead: str) -> None:
    """`Location: ////127.0.0.2:PORT/json` joined to the response's URL by `urljoin` is a path of the host that
    answered (allowed); requests follows it to 127.0.0.2. The host checked is the one of the request sent."""
    start = server.url.replace("127.0.0.1", "localhost")
    target = quote(f"{lead}{other_host.removeprefix('http://')}/json")
    done = await run(squall, {"url": f"{start}/redirect-to?to={target}", "allow_redirects": True,
                              "url_hosts_whitelist": ["localhost"]})
    assert done["status"] == "failed", done["result"]
    assert 'whose host "127.0.0.2" is not allowed for this action' in done["result"]["error"]
    assert [(seen["listener"], seen["path"]) for seen in server.seen] == [("127.0.0.1", "/redirect-to")]

#: What the caller gives a request that would act as it at another host: headers `secret_header` names, a cookie.
_CREDENTIALS = {"headers": {"X-Api-Key": "APIKEY-123", "Authorization": "Bearer BEARER-456",
                            "Private-Token": "PRIV-789", "X-Trace": "trace-1"},
                "cookies": {"session": "COOKIE-000"}}


async def test_a_redirect_to_another_host_carries_none_of_the_caller_s_credentials(
        squall: Squall, server: Server, other_host: str) -> None:
    """127.0.0.1 answering 302 to 127.0.0.2: the second host gets neither the caller's credential headers
    (requests' own rule strips `Authorization` only) nor its cookies; other headers go on, and the result
    names what was held back."""
    target = f"{other_host}/headers"
    done = await run(squall, {"url": f"{server.url}/redirect-to?to={target}", "allow_redirects": True,
                              **_CREDENTIALS})
    assert done["status"] == "succeeded", done["result"]
    first, landed = server.seen
    assert (first["listener"], landed["listener"]) == ("127.0.0.1", "127.0.0.2")
    assert first["headers"]["x-api-key"] == "APIKEY-123" and first["headers"]["cookie"] == "session=COOKIE-000"
    assert not {"x-api-key", "authorization", "private-token", "cookie"} & set(landed["headers"]), landed
    assert landed["headers"]["x-trace"] == "trace-1"
    assert done["result"]["not_forwarded"] == {"to": target, "headers": ["Authorization", "Private-Token",
                                                                         "X-Api-Key"], "cookies": ["session"]}


async def test_a_redirect_to_the_same_host_keeps_the_caller_s_credentials(squall: Squall, server: Server) -> None:
    """A redirect within the host that was asked carries the credential headers and cookies as given."""
    done = await run(squall, {"url": f"{server.url}/redirect-to?to={server.url}/headers", "allow_redirects": True,
                              **_CREDENTIALS})
    assert done["status"] == "succeeded", done["result"]
    landed = server.seen[-1]["headers"]
    assert (landed["x-api-key"], landed["authorization"], landed["private-token"], landed["cookie"]) == (
        "APIKEY-123", "Bearer BEARER-456", "PRIV-789", "session=COOKIE-000")
    assert "not_forwarded" not in done["result"]


@pytest.mark.parametrize(("start", "to", "held_back"), [
    ("https://example.test/a", "http://example.test/b", True),  # a downgrade to plain text
    ("http://example.test:8080/a", "http://example.test:9090/b", True),  # another origin of the host
    ("http://example.test/a", "https://example.test/b", False),  # an upgrade on the standard ports
    ("https://example.test/a", "https://example.test/b", False),
])
def test_a_redirect_s_credentials_follow_the_rule_for_authorization(start: str, to: str, held_back: bool) -> None:
    """The credentials are held back wherever requests strips `Authorization` (`should_strip_auth`): another
    host, and on the same host a scheme downgrade or another port."""
    from engine.runners.http import _Hops, _Session

    redirect = requests.Request("GET", to, headers={"X-Api-Key": "APIKEY-123"}, cookies={"session": "COOKIE-000"})
    prepared = redirect.prepare()
    response = requests.Response()
    response.request = requests.Request("GET", start).prepare()
    hops = _Hops(None, None)
    with _Session(hops) as session:
        session.trust_env = False  # no ~/.netrc login for the new host
        session.rebuild_auth(prepared, response)
    assert ("X-Api-Key" in prepared.headers, "Cookie" in prepared.headers) == (not held_back, not held_back)
    assert (hops.not_forwarded is not None) == held_back


def test_every_reading_of_a_url_s_host_must_pass_the_lists() -> None:
    """A URL that reaches the adapter as given (not as requests prepares it) is checked as each parser reads
    it: `urllib.parse` (by which requests 2.32 picks the connection) and urllib3's `parse_url` (before 2.32)."""
    from engine.runners.http import _refused_host

    url = "http://127.0.0.1:9\\@allowed.example/"
    assert _refused_host(url, None, ["allowed.example"]) == "127.0.0.1"
    assert _refused_host(url, ["allowed.example"], None) == "allowed.example"
    assert _refused_host(url, ["localhost"], None) is None
    assert _refused_host("http://[::1]:9/", None, ["::1"]) is None
    assert _refused_host("not a url", None, ["allowed.example"]) == ""


@pytest.mark.parametrize("password", [PASSWORD, "Tab\tPassw0rd"])
async def test_the_basic_header_made_of_a_url_s_password_is_scrubbed_from_an_echo(
        squall: Squall, server: Server, password: str) -> None:
    """The `Basic` header requests makes of a URL's user and password is scrubbed from what the server echoes,
    read as requests reads the URL: with a backslash in the authority (`ann:pw@127.0.0.1:PORT\\@elsewhere`) or a
    tab in the password, reading the raw URL with `urlparse` gave another password, and the header stayed."""
    port = urlparse(server.url).port
    tail = "\\@example.invalid/headers" if password == PASSWORD else "/headers"
    done = await run(squall, {"url": f"http://ann:{password}@127.0.0.1:{port}{tail}"})
    assert done["status"] == "succeeded", done["result"]
    basic = base64.b64encode(f"ann:{password}".encode()).decode()
    assert server.seen[0]["headers"]["authorization"] == f"Basic {basic}"  # what requests sent
    stored = json.dumps(await squall.executions.get(done["id"]))
    assert basic not in stored and password not in stored
    assert "Basic ********" in stored


async def test_the_proxy_authorization_made_of_a_proxy_s_password_is_scrubbed_from_an_echo(
        squall: Squall, server: Server) -> None:
    """The `Proxy-Authorization` header requests makes of `http_proxy`'s user and password (the test server
    is the proxy, and echoes the headers it got) is scrubbed from the result, as the URL's `Basic` is."""
    port = urlparse(server.url).port
    done = await run(squall, {"url": "http://example.invalid/headers",
                              "http_proxy": f"http://proxier:{PASSWORD}@127.0.0.1:{port}"})
    assert done["status"] == "succeeded", done["result"]
    basic = base64.b64encode(f"proxier:{PASSWORD}".encode()).decode()
    assert server.seen[0]["headers"]["proxy-authorization"] == f"Basic {basic}"  # what requests sent
    stored = json.dumps(await squall.executions.get(done["id"]))
    assert basic not in stored and PASSWORD not in stored
    assert "Basic ********" in stored


async def test_timeout_bounds_the_wait_for_the_headers(squall: Squall, server: Server) -> None:
    """Headers that keep trickling in, each byte within a read timeout, end at `timeout` too, and the
    connection is closed then (the server's next write fails)."""
    done = await run(squall, {"url": f"{server.url}/slow-headers", "timeout": 1})
    assert done["status"] == "timeout", done["result"]
    assert "/slow-headers" in done["result"]["error"] and "1 seconds" in done["result"]["error"]
    assert await asyncio.to_thread(server.gone.wait, 20), "the timed-out request's connection stayed open"


async def test_timeout_bounds_the_whole_request(squall: Squall, server: Server) -> None:
    """A body that keeps trickling in, each byte within a read timeout, still ends at `timeout`."""
    done = await run(squall, {"url": f"{server.url}/drip", "timeout": 1})
    assert done["status"] == "timeout", done["result"]
    assert "/drip" in done["result"]["error"]


async def test_body_is_cut_at_the_output_limit(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/big"})
    assert done["status"] == "succeeded"
    assert len(done["result"]["body"]) == OUTPUT_LIMIT
    assert str(OUTPUT_LIMIT) in done["result"]["truncated"]
    small = await run(squall, {"url": f"{server.url}/text"})
    assert "truncated" not in small["result"]


async def test_request_timeout(squall: Squall, server: Server) -> None:
    done = await run(squall, {"url": f"{server.url}/slow", "timeout": 0.5})
    assert done["status"] == "timeout"
    assert "error" in done["result"]
    assert "/slow" in done["result"]["error"]


async def test_connection_refused_fails(squall: Squall) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = await run(squall, {"url": f"http://127.0.0.1:{port}/"})
    assert done["status"] == "failed"
    assert f"127.0.0.1:{port}" in done["result"]["error"]


@pytest.mark.parametrize("route", ["/endless", "/hold"])
async def test_cancel_aborts_the_request(squall: Squall, server: Server, route: str) -> None:
    """A canceled run's request ends with it, whether the body is arriving or the answer is awaited: the
    server sees the connection closed, instead of serving the request to its end or its timeout (60 s)."""
    record = await squall.executions.request("core.http", {"url": f"{server.url}{route}", "timeout": 60})
    for _ in range(400):
        if any(seen["path"] == route for seen in server.seen):
            break
        await asyncio.sleep(0.05)
    assert server.seen, "the request never reached the server"
    await asyncio.sleep(0.3)  # well into the body or the wait for headers
    await squall.executions.cancel(record["id"])
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "canceled"
    assert await asyncio.to_thread(server.gone.wait, 20), "the canceled request's connection stayed open"
