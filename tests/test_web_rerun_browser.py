"""The re-run form in a real browser (headless Chromium, as tests/test_web_browser.py drives it, whose served
home and signed-in tab this module uses): the run form's controls, filled with the execution's values, and the
run form's refusals, every wrong field at once beside it, in the same words."""

from __future__ import annotations

import re

import pytest

from tests.test_web_browser import (  # noqa: F401 (the module's fixtures)
    Served,
    Tab,
    _but_the_refusal,
    admin_state,
    chromium,
    served,
    tab,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

#: Fields of `core.http` typed wrong the same way on its run form and on a re-run form: a required one
#: emptied, a number that is none, JSON that is not.
WRONG = {r"^url(?!_)": "", r"^timeout": "soon", r"^headers": "[1,"}


def _refusals(tab: Tab, button: str) -> dict[str, str]:  # noqa: F811
    """Type `WRONG` into the form on the page, send it with `button`, and read each field's message."""
    for label, text in WRONG.items():
        tab.page.get_by_label(re.compile(label)).fill(text)
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name=button).click()
    return {name: tab.page.locator(f"#p-{name}-error").inner_text(timeout=5_000)
            for name in ("url", "timeout", "headers")}


def test_the_rerun_form_is_the_run_form_filled_and_refuses_every_wrong_field_at_once(
        served: Served, tab: Tab) -> None:  # noqa: F811
    """Reproduced in Chromium: the re-run form drew an enum and a boolean as text boxes, stopped at the first
    wrong field with a JSON parser's words, and ran with a required field emptied. It draws them as the run
    form does, filled with the execution's values, and refuses what the run form refuses, all at once."""
    first = served.run("core.http", url=f"{served.base}/healthz", method="GET", timeout=5)
    served.wait(first, "succeeded", "failed")
    tab.go("/actions/core.http")
    said = _refusals(tab, "Run core.http")
    tab.go(f"/executions/{first}/rerun")
    method = tab.page.get_by_label(re.compile(r"^method"))
    assert method.evaluate("e => e.tagName") == "SELECT" and method.input_value() == "GET"
    verify = tab.page.get_by_label("verify_ssl_cert", exact=True)
    assert verify.get_attribute("type") == "checkbox" and verify.is_checked()
    assert tab.page.get_by_label(re.compile(r"^timeout")).input_value() == "5"
    assert _refusals(tab, "Run again") == said
    assert "is required" in said["url"] and "'soon' is not a number" in said["timeout"]
    assert "not valid JSON" in said["headers"]
    assert [e["id"] for e in served.executions(action="core.http")] == [first]
    assert _but_the_refusal(tab.errors) == []
