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


def _focus(tab: Tab) -> str:  # noqa: F811
    """The focused element: its id, else its role."""
    return tab.page.evaluate("() => document.activeElement.id || document.activeElement.getAttribute('role') || ''")


def test_a_refused_form_puts_the_keyboard_focus_on_its_first_wrong_field(served: Served, tab: Tab) -> None:  # noqa: F811
    """Reproduced in Chromium: a refused run form came back as a new page with the focus on nothing (the
    page's top), so a keyboard or screen-reader user had to hunt for the fields in error. The first field in
    error has the focus, wherever it is in the form; a refusal that names no field (a re-run moved to another
    host) puts it on the summary that says what to do."""
    tab.go("/actions/core.http")
    _refusals(tab, "Run core.http")
    first_wrong = tab.page.evaluate("() => document.querySelector('[aria-invalid=\"true\"]').id")
    assert first_wrong == "p-url" and _focus(tab) == first_wrong
    tab.page.get_by_label(re.compile(r"^url(?!_)")).fill(f"{served.base}/healthz")
    tab.page.get_by_label(re.compile(r"^headers")).fill("{}")
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Run core.http").click()
    assert tab.page.locator("[aria-invalid=true]").count() == 1 and _focus(tab) == "p-timeout"
    tab.page.keyboard.press("Control+A")
    tab.page.keyboard.type("5")  # typed where the focus is: into the wrong field
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Run core.http").click()
    served.wait(tab.page.url.rsplit("/", 1)[1], "succeeded", "failed")

    first = served.run("core.http", url=f"{served.base}/healthz", headers={"X-Api-Key": "key-of-admin-0001"})
    served.wait(first, "succeeded", "failed")
    tab.go(f"/executions/{first}/rerun")
    tab.page.get_by_label(re.compile(r"^url(?!_)")).fill(f"{served.base.replace('127.0.0.1', 'localhost')}/healthz")
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Run again").click()
    assert _focus(tab) == "alert" and "again" in tab.page.evaluate("() => document.activeElement.innerText")
    assert _but_the_refusal(tab.errors) == []


#: Each field of the page's run form, by name: the computed style of its labels, controls and help.
_FIELD_STYLES = """() => Object.fromEntries(Array.from(document.querySelectorAll('form.run-form .field')).map(field => [
    field.querySelector('[name]').name,
    Array.from(field.querySelectorAll('label, input:not([type=hidden]), select, textarea, .help')).map(e => {
        const s = getComputedStyle(e);
        return [e.tagName, s.display, s.fontWeight, s.fontFamily, s.width, s.marginBottom, s.color].join(' ');
    })]))"""


def test_the_rerun_form_is_drawn_as_the_run_form(served: Served, tab: Tab) -> None:  # noqa: F811
    """The stylesheet's `.rerun` rules, from before the re-run form became the run form, still styled it: its
    checkbox's label on a line of its own (`display: block` over `.inline-label`), narrower inputs, wider gaps.
    Deleted, every field of the re-run form is drawn as the run form draws it."""
    first = served.run("core.http", url=f"{served.base}/healthz", method="GET", timeout=5)
    served.wait(first, "succeeded", "failed")
    tab.go("/actions/core.http")
    run = tab.page.evaluate(_FIELD_STYLES)
    tab.go(f"/executions/{first}/rerun")
    rerun = tab.page.evaluate(_FIELD_STYLES)
    assert "verify_ssl_cert" in run and set(rerun) == set(run)
    assert {name: styles for name, styles in rerun.items() if styles != run[name]} == {}
    assert tab.errors == []
