"""The Checks panel in real Chromium: upload a file of word problems with JSON answers, add a check through the form
(numeric, extract json: answer) and see its pass rate on the file's own answers appear, with the YAML beside it.

Uses conftest's app (`python launch.py` in a subprocess) and the Debian chromium; never downloads a browser.
"""
from __future__ import annotations

import re

import pytest

from tests.helpers import chromium_page, word_problems_csv

def _pick(page, elem: str, text: str) -> None:
    """Choose the option of the gradio dropdown `elem` whose label starts with `text`."""
    page.locator(f"{elem} input").first.click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(text)}")).first.click()


@pytest.mark.browser
def test_add_a_check_and_see_its_pass_rate_in_chromium(app_url, tmp_path, artifacts):
    from playwright.sync_api import expect

    url, _, _ = app_url
    data = word_problems_csv(tmp_path / "problems.csv", n=4)
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url, shots / "checks-last.png") as (page, errors):
        expect(page.locator("#data-summary")).to_contain_text("rows will be used", timeout=90_000)
        page.locator("#data-upload input[type=file]").set_input_files(str(data))
        expect(page.locator("#data-summary")).to_contain_text("problems.csv", timeout=60_000)
        page.get_by_text("Checks: what a good answer is").click()
        page.locator("#check-name input, #check-name textarea").first.fill("right_answer")
        _pick(page, "#check-type", "numeric")
        _pick(page, "#check-extract", "json")
        arg = page.locator("#check-extract-a input, #check-extract-a textarea").first
        arg.fill("answer")
        arg.press("Tab")
        page.locator("#check-add").click()
        table = page.locator("#checks-preflight")
        expect(table).to_contain_text("right_answer", timeout=30_000)
        expect(table).to_contain_text("4/4")
        expect(table).to_contain_text("100.0%")
        expect(page.locator("#checks-verdicts")).to_contain_text("Every check passes all 4")
        expect(page.locator("#checks-yaml")).to_contain_text("json: answer")
        assert "tolerance" not in page.locator("#checks-yaml").inner_text()  # empty number boxes are left out
        page.screenshot(path=str(shots / "checks.png"), full_page=True)
        assert not errors, errors
