"""The console in a real browser: headless Chromium (Debian's package) driven by
Playwright, through sign-in, filtering, an entry's timeline, a replay, and a routing
edit whose error shows inline. The overview's screenshot lands in tests/artifacts/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from tests.support.console import EMAIL, SMS, dead_letters_from
from tests.support.stack import ADMIN_KEY, Stack, running_stack, stack_settings

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("HERALD_TEST_CHROMIUM", "/usr/bin/chromium")
#: Flags for a root, display-less machine with no outside network (each one is needed:
#: without the networking ones Chromium keeps dialling Google and gets refused).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):  # CI installs it: .ci/run
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    """Three real dead letters: two SMS and one e-mail the sandbox refused for good."""
    async with running_stack(stack_settings(sqlite_url)) as stack:
        stack.values["nids"] = await dead_letters_from(stack, [SMS, SMS, EMAIL])
        yield stack


def page_errors(page: Page) -> list[str]:
    """Console errors and CSP violations the page reports (there should be none)."""
    errors: list[str] = []

    def seen(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", seen)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


async def test_on_call_signs_in_filters_opens_replays_and_edits_routing(
    stack: Stack, browser: Browser
) -> None:
    sms_1, sms_2, email = stack.values["nids"]
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = page_errors(page)

    await page.goto(f"{stack.url}/console/dead-letters")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("API key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{stack.url}/console/dead-letters")  # back where it began

    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#dead-summary .big")).to_have_text("3")
    await expect(page.locator("#breakers")).to_contain_text("sandbox-email")
    await expect(page.locator("#queues")).to_contain_text("herald.dlq")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "console-overview.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    await page.get_by_role("link", name="Dead letters").click()
    rows = page.locator("#dead-letters tbody tr[data-id]")
    await expect(rows).to_have_count(3)
    await page.locator("#filters select[name=provider]").select_option("sandbox-sms")
    await expect(rows).to_have_count(2)  # htmx swapped the results in place
    await expect(page).to_have_url(re.compile(r"/console/dead-letters\?.*provider=sandbox-sms"))
    await expect(page.locator("#match-count")).to_have_text("2")

    await page.locator(f"tr[data-notification='{sms_2}'] a").click()
    await expect(page.get_by_role("heading", name=f"Notification {sms_2}")).to_be_visible()
    timeline = page.locator("ol.timeline li")
    await expect(timeline).to_have_count(1)
    await expect(timeline).to_contain_text("permanent error")
    await expect(page.locator("pre.payload")).to_contain_text("+44********56")
    await page.screenshot(path=str(ARTIFACTS / "console-dead-letter.png"), full_page=True)

    await page.get_by_role("link", name="Replay…").click()
    await expect(page.get_by_role("heading", name="Replay this message?")).to_be_visible()
    await page.get_by_role("button", name="Replay now").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Replayed notification {sms_2}")
    await expect(page.locator(f"tr[data-notification='{sms_2}']")).to_have_count(0)
    for still_dead in (sms_1, email):
        await expect(page.locator(f"tr[data-notification='{still_dead}']")).to_have_count(1)
    await stack.wait_status(sms_2, "sent")
    assert len(await stack.sandbox(sms_2)) == 1

    await page.get_by_role("link", name="Routing").click()
    await expect(page.locator("#validation-ok")).to_be_visible()
    document = yaml.safe_load(await page.locator("#document").input_value())
    document["rules"][0]["tiers"] = [["sandbox-smz"]]
    await page.locator("#document").fill(yaml.safe_dump(document, sort_keys=False))
    errors_box = page.locator("#validation-errors")
    await expect(errors_box).to_be_visible()
    await expect(errors_box).to_contain_text("sandbox-smz")
    await expect(errors_box).to_contain_text("rules[0]")
    await page.screenshot(path=str(ARTIFACTS / "console-routing.png"), full_page=True)
    await page.get_by_role("button", name="Save as version 2").click()
    await expect(page.locator("#validation-errors")).to_contain_text("not saveable")
    rules = (await stack.client.get("/v1/routing/rules")).json()
    assert rules["version"] == 1, "an invalid document is never saved"

    current = await stack.client.get("/v1/routing/rules")
    edited = current.json()["document"]
    edited["providers"]["sandbox-sms"]["cost"] = {"default": 0.5}
    saved = await stack.client.put(
        "/v1/routing/rules", json=edited, headers={"If-Match": current.headers["etag"]}
    )
    assert saved.json()["version"] == 2
    await page.reload()
    await expect(page.locator("#diff")).to_contain_text("0.5")
    page.once("dialog", lambda dialog: dialog.accept())  # the "Put version 1 back?" prompt
    await page.get_by_role("button", name="Roll back to v1").click()
    await expect(page.get_by_role("status")).to_contain_text("version 3 restores version 1")
    assert (await stack.client.get("/v1/routing/rules")).json()["version"] == 3

    refused_save = "the server responded with a status of 422"
    unexpected = [e for e in errors if refused_save not in e]
    assert unexpected == [], f"the browser reported errors (CSP?): {unexpected}"
