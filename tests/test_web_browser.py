"""The web pages in a real browser (Debian's chromium, headless, driven by Playwright): search,
open an adapter, follow a lineage edge, switch versions, sign in to see a private adapter, sign
out to its 404, and a hostile model card that must not run anything.

``LORAHIVE_UI_SHOTS=docs/ui`` also saves a screenshot of each main page there (docs/ui.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from lorahive.registry.web import cards
from tests.web_helpers import CHROMIUM, TABLE_COLS, TABLE_ROWS, LiveServer, Seeded, seed

pytestmark = pytest.mark.timeout(180)
SHOTS = os.environ.get("LORAHIVE_UI_SHOTS")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium (never a downloaded browser build), headless, as root in CI."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_llama_dir) -> Iterator[tuple[LiveServer, Seeded]]:
    # a loaded test machine must not turn the hostile card into plain text (the time budget
    # has its own unit test): these tests are about what a rendered card can do
    mp = pytest.MonkeyPatch()
    mp.setattr(cards, "RENDER_SECONDS", 60.0)
    server = LiveServer(tmp_path_factory.mktemp("web-browser"))
    seeded = seed(server, tiny_llama_dir, tmp_path_factory.mktemp("web-browser-work"))
    yield server, seeded
    server.stop()
    mp.undo()


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def test_search_then_open_an_adapter(site, page: Page):
    server, seeded = site
    page.goto(server.url + "/")
    expect(page.get_by_test_id("count")).to_contain_text(f"of {seeded.public}")
    page.fill("#f-q", "sentiment")
    page.select_option("#f-task", "text-classification")
    page.get_by_role("button", name="Apply").click()
    results = page.get_by_test_id("results")
    expect(results).to_contain_text("sentiment-en")
    expect(results).not_to_contain_text("summarise-news")
    expect(page).to_have_url(re.compile(r"q=sentiment.*task=text-classification"))
    page.goto(server.url + "/?tag=en&sort=downloads")
    expect(page.get_by_test_id("results").locator("li").first).to_contain_text("support-intent")
    shot(page, "search")
    page.goto(server.url + "/?q=sentiment")
    page.locator("a.repo-link", has_text="sentiment-en").click()
    expect(page).to_have_url(server.url + "/admin/sentiment-en")
    expect(page.get_by_test_id("card")).to_contain_text("Sentiment of English product reviews")
    expect(page.get_by_test_id("snippets")).to_contain_text("lorahive pull admin/sentiment-en@2")
    shot(page, "adapter")


def test_follow_a_lineage_edge(site, page: Page):
    server, _ = site
    page.goto(server.url + "/admin/reviews-composed/lineage")
    graph = page.get_by_test_id("lineage-graph")
    expect(graph).to_contain_text("private adapter")
    expect(graph).not_to_contain_text("secret-project")
    expect(page.get_by_test_id("composition")).to_contain_text("80.0%")
    shot(page, "lineage")
    graph.locator("a.node", has_text="admin/sentiment-en").click()
    expect(page).to_have_url(server.url + "/admin/sentiment-en/lineage?version=2")
    expect(page.get_by_test_id("children")).to_contain_text("admin/reviews-composed@1")
    page.get_by_test_id("lineage-graph").locator("a.node", has_text="reviews-composed").click()
    expect(page).to_have_url(re.compile(r"/admin/reviews-composed/lineage\?version=1$"))


def test_switch_versions(site, page: Page):
    server, _ = site
    page.goto(server.url + "/admin/sentiment-en")
    expect(page.get_by_test_id("shown-version")).to_have_text("2")
    page.select_option("#version-select", "1")
    page.locator("form.version-switch button").click()
    expect(page).to_have_url(re.compile(r"version=1"))
    expect(page.get_by_test_id("shown-version")).to_have_text("1")
    expect(page.get_by_test_id("config")).to_contain_text("q_proj, v_proj")
    page.get_by_role("link", name="Files and versions").click()
    expect(page).to_have_url(re.compile(r"/admin/sentiment-en/files\?version=1"))
    expect(page.get_by_test_id("versions")).to_contain_text("prod")
    page.get_by_role("link", name="compare with 1").click()
    expect(page.get_by_test_id("overlap-mean")).to_contain_text("output space")
    shot(page, "compare")


def test_spectra_of_a_chosen_module(site, page: Page):
    server, _ = site
    page.goto(server.url + "/admin/sentiment-en/spectra")
    expect(page.get_by_test_id("norm-chart").locator("svg")).to_be_visible()
    page.select_option("#module", "model.layers.1.self_attn.o_proj")
    page.locator("form.module-form button").click()
    expect(page).to_have_url(re.compile(r"module=model.layers.1.self_attn.o_proj"))
    expect(page.get_by_test_id("sv-chart")).to_contain_text("model.layers.1.self_attn.o_proj")
    assert page.get_by_test_id("sv-chart").locator("rect.bar").count() == 8
    shot(page, "spectra")


def test_sign_in_to_see_a_private_adapter_then_sign_out(site, page: Page):
    server, seeded = site
    page.goto(server.url + "/alice/secret-project")
    expect(page.get_by_test_id("error")).to_contain_text("Not found")
    page.get_by_test_id("error").get_by_role("link", name="Sign in").click()
    shot(page, "signin")
    page.fill("#token", "lh_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("unknown token")
    page.fill("#token", seeded.alice_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/alice/secret-project")
    expect(page.locator("h1.repo")).to_contain_text("private")
    expect(page.get_by_test_id("who")).to_have_text("alice")
    page.get_by_test_id("who").click()
    expect(page.get_by_test_id("mine-alice")).to_contain_text("alice/secret-project")
    shot(page, "account")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    page.goto(server.url + "/alice/secret-project")
    expect(page.get_by_test_id("error")).to_contain_text("not found (or private)")


def test_hostile_card_runs_nothing(site, page: Page):
    server, _ = site
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server.url + "/admin/hostile")
    card = page.get_by_test_id("card")
    expect(card).to_contain_text("Hostile card")
    expect(page.locator("body")).to_be_visible()  # the card's <style> did not apply
    for sel in ("#cover", "text=hover me"):
        if page.locator(sel).count():
            page.locator(sel).first.hover()
    for name in ("click me", "mixed case", "raw link"):
        link = card.get_by_text(name)
        if link.count():
            link.first.click()
    page.wait_for_timeout(300)
    assert page.url.startswith(server.url + "/admin/hostile")
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    dangerous = ("script, iframe, object, embed, form, style, meta, svg, input, "
                 "[onerror], [onload], [onmouseover], [ontoggle], [style], "
                 "a[href^='javascript' i], img[src^='data:' i]")
    assert card.locator(dangerous).count() == 0
    assert card.locator("table td").count() == TABLE_COLS * TABLE_ROWS  # rendered, contained
    box = page.locator(".card-col").bounding_box()
    assert box is not None and box["width"] < 1280  # it scrolls in its box, not the page
