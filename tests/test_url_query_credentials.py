"""A credential in a URL's query string (`?api_key=…`, `?access_token=…`) is masked as a URL's password is.

`url: https://api.example.com/hook?api_key=…&x=1` was stored and shown in clear (the execution record, the API,
the web, the audit, chat) and echoed in output: the query keys `SECRET_NAME`'s words name, and the query-only
`SECRET_QUERY_KEYS` (`sig`, `signature`, `key`…), (`secret_query_key`) are shown as `********`, the rest of the
URL as written, the run gets the real value (sealed), its text is scrubbed where else it shows
(`credential_texts`), and a re-run of the URL as shown gets it back to the same target only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.app import Squall
from engine import audit_sinks
from engine.config import load_config
from engine.parameters import (
    MASK,
    ParameterError,
    credential_texts,
    mask,
    mask_url,
    mask_value,
    rerun_parameters,
    restore_masked,
    secret_header,
    secret_query_key,
    secret_variable,
    shows_masked,
)
from tests.conftest import write

API_KEY = "qk-api-key-314159"
TOKEN = "qk-token-271828"


def test_the_query_keys_that_name_a_credential_are_secret_name_s_words_whole() -> None:
    """`SECRET_NAME`'s words (pass, password, passwd, secret, token, api_key, private_key, credential), in any case,
    camelCase or `-`/`_`/`.` parted, percent-encoded or glued at the key's end; not inside another word."""
    for key in ("api_key", "apikey", "API-Key", "apiKey", "APIKey", "api%5Fkey", "token", "Token", "TOKEN",
                "access_token", "accessToken", "accesstoken", "X-Amz-Security-Token", "password", "passwd", "pass",
                "dbPass", "client_secret", "clientSecret", "private_key", "credential", "credentials",
                "oauth_token_secret", "session+token", "token_type", "X-Amz-Credential", "x-goog-credential"):
        assert secret_query_key(key), key
    # `tokens_count`: SECRET_NAME finds `token` in it, but as a word it is `tokens`, a count; likewise the rest.
    for key in ("tokens_count", "tokens", "passage", "bypass", "bypass_cache", "compass", "page", "q", "x",
                "auth", "secretive", "tokenizer"):
        assert not secret_query_key(key), key


def test_the_query_only_keys_of_signed_urls_and_api_keys_count_whole_and_nowhere_else() -> None:
    """`SECRET_QUERY_KEYS`: Azure SAS's `sig`, AWS and Google signed URLs' signatures, Google's `?key=`, matched
    whole, in any case, decoded; a word holding one is none, nor `code` or `GoogleAccessId`, and headers,
    variables and audit details keep their own rule (a header `Key-Id`, a variable `KEY_FILE` are shown)."""
    for key in ("sig", "SIG", "signature", "Signature", "key", "Key", "KEY", "k%65y", "X-Amz-Signature",
                "x-amz-signature", "X-Goog-Signature"):
        assert secret_query_key(key), key
    for key in ("keyword", "monkey", "keys", "key_id", "signed_at", "design", "sigma", "signatures", "code",
                "GoogleAccessId", "X-Amz-SignedHeaders", "X-Amz-Algorithm", "X-Amz-Date", "sv", "se", "sp"):
        assert not secret_query_key(key), key
    assert not secret_header("Key-Id") and not secret_header("Signature") and not secret_header("X-Amz-Signature")
    assert not secret_variable("KEY_FILE") and not secret_variable("KEY") and not secret_variable("SIG")
    assert audit_sinks.entry({"detail": {"key": "k-1", "sig": "s-1", "signature": "g-1"}})["detail"] == {
        "key": "k-1", "sig": "s-1", "signature": "g-1"}
    assert mask_value("headers", {"Key": "k-1", "Sig": "s-1"}) == {"Key": "k-1", "Sig": "s-1"}
    assert mask_value("env", {"KEY_FILE": "/k", "KEY": "k-1"}) == {"KEY_FILE": "/k", "KEY": "k-1"}
    signed = ("https://b.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101"
              "&X-Amz-Date=20260101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=abcdef0123456789")
    assert mask_url(signed) == ("https://b.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                                f"&X-Amz-Credential={MASK}&X-Amz-Date=20260101T000000Z&X-Amz-SignedHeaders=host"
                                f"&X-Amz-Signature={MASK}")
    assert mask_url("https://www.googleapis.com/v1/x?key=AIzaSyA-1&keyword=monkey&GoogleAccessId=sa%40p.iam"
                    "&Signature=c2lnbmVk&code=4%2F0Ab&signed_at=1&design=2") == (
        f"https://www.googleapis.com/v1/x?key={MASK}&keyword=monkey&GoogleAccessId=sa%40p.iam&Signature={MASK}"
        "&code=4%2F0Ab&signed_at=1&design=2")


def test_mask_url_masks_each_query_credential_and_keeps_the_rest_byte_for_byte() -> None:
    cases = {
        "https://api.example.com/hook?api_key=abc123&x=1": f"https://api.example.com/hook?api_key={MASK}&x=1",
        # several keys, any case, a repeated key, percent-encoded and `+` values, order and fragment kept
        "https://h.example/p/a%20b?Token=t1&page=2&token=t2&ACCESS_TOKEN=a%2Bb+c&q=x%26y#frag?token=not-query":
            f"https://h.example/p/a%20b?Token={MASK}&page=2&token={MASK}&ACCESS_TOKEN={MASK}&q=x%26y"
            "#frag?token=not-query",
        # with a password too; an encoded key; empty values and bare keys have nothing to hide
        "https://ann:pw-1@h.example:8443/?password=s%3Dp&api%5Fkey=k&token=&token&x=":
            f"https://ann:{MASK}@h.example:8443/?password={MASK}&api%5Fkey={MASK}&token=&token&x=",
        # a password written with an unencoded `?`: the query is the one after the host
        "http://ann:Hash?x@host.example/p?sig=1&page=1&secret=s":
            f"http://ann:{MASK}@host.example/p?sig={MASK}&page=1&secret={MASK}",
    }
    for url, shown in cases.items():
        assert mask_url(url) == shown, url
        assert mask_value("url", url) == shown and mask_value("webhook_url", url) == shown, url
    for plain in ("https://api.example.com/hook?tokens_count=5&passage=a&bypass_cache=true",
                  "https://h.example/#?token=in-the-fragment", "https://h.example/p?token",
                  "not a url?token=abc", "/relative?token=abc", 7, None):
        assert mask_url(plain) == plain, plain
    assert mask_value("note", "https://h.example/?token=abc") == "https://h.example/?token=abc"  # no URL parameter
    assert mask({"url": "https://h.example/?token=abc", "x": 1}, set()) == {"url": f"https://h.example/?token={MASK}",
                                                                             "x": 1}
    assert audit_sinks.entry({"detail": {"parameters": {"url": "https://h.example/?api_key=abc"}}})["detail"] == {
        "parameters": {"url": f"https://h.example/?api_key={MASK}"}}


def test_credential_texts_holds_each_query_credential_as_written_and_decoded() -> None:
    url = f"https://h.example/?api_key={API_KEY}&password=p%40ss+word-1&tokens_count=123456789&token=short"
    assert set(credential_texts({"url": url})) == {API_KEY, "p%40ss+word-1", "p@ss+word-1", "p@ss word-1"}
    assert credential_texts({"url": "https://h.example/?tokens_count=123456789"}) == []
    assert set(credential_texts({"url": f"https://ann:pw-long-12@h.example/?token={TOKEN}",
                                 "headers": {"Accept": "x"}})) == {"pw-long-12", TOKEN}


def test_a_re_run_gets_the_query_credentials_back_for_the_same_target_only() -> None:
    original = {"url": f"https://API.example.com/hook?api_key={API_KEY}&x=1&token=t-one-1&token=t-two-2"}
    shown = mask_url(original["url"])
    assert shows_masked({"url": shown}) and not shows_masked({"url": "https://api.example.com/hook?x=1"})
    # the path and other keys edited, the same scheme, host and port (in any case, the default port written)
    edited = shown.replace("API.example.com", "api.example.com:443").replace("x=1", "x=2")
    assert rerun_parameters({"url": edited}, original, ["url"]) == {
        "url": f"https://api.example.com:443/hook?api_key={API_KEY}&x=2&token=t-one-1&token=t-two-2"}
    # a value given anew is kept; a mask the original had no value for stays a mask
    mine = f"https://api.example.com/hook?api_key=mine&token={MASK}&token={MASK}&token={MASK}&secret={MASK}"
    assert restore_masked({"url": mine}, original) == {
        "url": f"https://api.example.com/hook?api_key=mine&token=t-one-1&token=t-two-2&token={MASK}&secret={MASK}"}
    # another scheme, host or port: the mask goes as shown, never the credential (as a URL's password)
    for elsewhere in (shown.replace("API.example.com", "evil.example"), shown.replace("https:", "http:"),
                      shown.replace("API.example.com", "API.example.com:444")):
        assert rerun_parameters({"url": elsewhere}, original, ["url"]) == {"url": elsewhere}, elsewhere
    # and a re-run sent elsewhere by another target parameter is refused, naming the URL to give again
    with pytest.raises(ParameterError) as refused:
        rerun_parameters({"http_proxy": "http://evil.example:3128"}, original, ["url"])
    assert "give url again" in str(refused.value) and API_KEY not in str(refused.value)


def _hook_pack(home: Path) -> None:
    pack = home / "packs" / "hooks"
    write(pack / "pack.yaml", "ref: hooks\nname: hooks\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "call.yaml", """
        name: call
        runner_type: local-shell-cmd
        parameters:
          url: {type: string, required: true}
          mirror_url: {type: string}
          cmd: {default: "echo calling {{ url }}; echo {{ url | length }}"}
    """)


def _stored(squall: Squall) -> str:
    """Every stored execution, output chunk and audit event, as text."""
    with squall.store.engine.connect() as conn:
        rows = [r for table in ("executions", "execution_output", "audit")
                for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
    return json.dumps([list(r) for r in rows], default=str)


async def test_a_query_credential_is_stored_masked_the_run_gets_it_and_a_re_run_gets_it_back(home: Path) -> None:
    _hook_pack(home)
    url = f"https://api.example.com/hook?api_key={API_KEY}&x=1&access_token={TOKEN}#top"
    shown = f"https://api.example.com/hook?api_key={MASK}&x=1&access_token={MASK}#top"
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("hooks.call", {"url": url})
        done = await squall.executions.wait(record["id"], timeout=30)
        same = await squall.executions.rerun(done["id"], {}, {"user": "ann"})
        again = await squall.executions.wait(same["id"], timeout=30)
        edited = shown.replace("x=1", "x=2")
        changed = await squall.executions.rerun(done["id"], {"url": edited}, {"user": "ann"})
        redone = await squall.executions.wait(changed["id"], timeout=30)
        moved = shown.replace("api.example.com", "evil.example")
        sent = await squall.executions.rerun(done["id"], {"url": moved}, {"user": "ann"})
        elsewhere = await squall.executions.wait(sent["id"], timeout=30)
        with pytest.raises(ParameterError) as refused:
            await squall.executions.rerun(done["id"], {"mirror_url": "https://evil.example/"}, {"user": "ann"})
        stored = _stored(squall)
        listed = await squall.executions.list(action="hooks.call", limit=10)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["parameters"]["url"] == shown
    # the command had the real URL (its length), and its output shows it masked
    assert done["result"]["stdout"].splitlines() == [f"calling {shown}", str(len(url))]
    assert again["status"] == "succeeded" and again["parameters"]["url"] == shown
    assert again["result"]["stdout"].splitlines() == [f"calling {shown}", str(len(url))]
    assert redone["status"] == "succeeded" and redone["parameters"]["url"] == edited
    assert redone["result"]["stdout"].splitlines()[1] == str(len(url.replace("x=1", "x=2")))  # both back
    assert elsewhere["result"]["stdout"].splitlines() == [f"calling {moved}", str(len(moved))]  # the mask, as given
    assert "give url again" in str(refused.value)
    for where, text in (("stored", stored), ("records", json.dumps(listed, default=str)),
                        ("refusal", str(refused.value))):
        assert API_KEY not in text and TOKEN not in text, where


async def test_a_signed_url_s_signature_and_an_api_key_are_stored_masked_and_a_re_run_gets_them_back(
        home: Path) -> None:
    """An Azure SAS URL's `sig` and a Google `?key=`: the execution record and its output show `********`, the
    run gets the real URL, a re-run as shown gets both back, a re-run to another host sends the mask."""
    _hook_pack(home)
    sig, key = "Zm9vYmFyYmF6%2Bqux%3D", "AIzaSyD-sig-key-2718"
    url = f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sig={sig}&se=2026-12-31&key={key}&keyword=k"
    shown = f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sig={MASK}&se=2026-12-31&key={MASK}&keyword=k"
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("hooks.call", {"url": url})
        done = await squall.executions.wait(record["id"], timeout=30)
        same = await squall.executions.rerun(done["id"], {"url": shown.replace("se=2026", "se=2027")}, {"user": "ann"})
        again = await squall.executions.wait(same["id"], timeout=30)
        moved = shown.replace("acct.blob.core.windows.net", "evil.example")
        sent = await squall.executions.rerun(done["id"], {"url": moved}, {"user": "ann"})
        elsewhere = await squall.executions.wait(sent["id"], timeout=30)
        stored = _stored(squall)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["parameters"]["url"] == shown
    assert done["result"]["stdout"].splitlines() == [f"calling {shown}", str(len(url))]
    assert again["status"] == "succeeded" and again["parameters"]["url"] == shown.replace("se=2026", "se=2027")
    assert again["result"]["stdout"].splitlines()[1] == str(len(url))  # both values back, the edit kept
    assert elsewhere["result"]["stdout"].splitlines() == [f"calling {moved}", str(len(moved))]
    for secret in (sig, "Zm9vYmFyYmF6+qux=", key):
        assert secret not in stored, secret
