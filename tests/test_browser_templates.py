"""The chat template in real Chromium: pick Llama 3 on the Train tab and see the Data tab render the example with it
(its answer highlighted) and its preflight count the answers the assistant mask finds.

Uses conftest's app (`python launch.py` in a subprocess) and the Debian chromium; never downloads a browser.
"""
from __future__ import annotations

import re

import pytest

from tests.helpers import chromium_page, tab


@pytest.mark.browser
def test_pick_a_template_and_see_the_preflight_in_chromium(app_url, artifacts):
    from playwright.sync_api import expect

    url, _, _ = app_url
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url, shots / "templates-last.png") as (page, errors):
        expect(page.locator("#data-summary")).to_contain_text("rows will be used", timeout=90_000)
        expect(page.locator("#data-preflight")).to_contain_text("every answer is found", timeout=60_000)
        tab(page, "2 · Train")
        page.locator("#model-chat-template input").first.click()
        page.get_by_role("option", name=re.compile(r"^llama3: ")).first.click()
        tab(page, "1 · Data")
        preflight = page.locator("#data-preflight")
        expect(preflight).to_contain_text("llama3", timeout=60_000)
        expect(preflight).to_contain_text("(100%)")
        expect(page.locator("#data-example")).to_contain_text("<|start_header_id|>assistant", timeout=30_000)
        assert not errors, errors
