"""The preference flow in real Chromium (issue 23, items 2 and 4): with a finished SFT run in the runs folder, the
Train tab with Advanced open is measured (one sentence of help per field keeps it short); then a file of preference
pairs is uploaded, the Training stage reads dpo in the main form (not inside Advanced), the SFT run is picked from
Start from's picker of finished runs, and Start trains a DPO run on top of it.

Uses conftest's app (`python launch.py` in a subprocess) and the Debian chromium; never downloads a browser.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from studio import runs
from studio.config import RunConfig
from tests.helpers import chromium_page, tab

SFT_NAME = "bio sft"
# Advanced opened on the Train tab at 1400 x 1000, default preset on a machine without GPUs: 5,858 px before issue 23
# (8,065 px the whole page); one sentence per field, the stage's own settings hidden for sft and the GPU settings
# folded into one note bring it under this
ADVANCED_MAX_PX = 4000


def _pairs(path):
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.",
                                        "rejected": "I do not know."}) + "\n" for i in range(8)), encoding="utf-8")
    return path


def _advanced_height(page) -> tuple[float, float]:
    """(the Advanced section's height, the page's) in px, with Advanced open."""
    page.locator("#advanced").get_by_text("Advanced").first.click()
    page.wait_for_timeout(1500)
    adv = page.evaluate("document.querySelector('#advanced').getBoundingClientRect().height")
    whole = page.evaluate("document.documentElement.scrollHeight")
    return adv, whole


@pytest.mark.browser
def test_pick_the_sft_run_for_a_preference_file_in_chromium(app_url, trained_run, tmp_path, artifacts):
    from playwright.sync_api import expect

    url, runs_dir, log = app_url
    sft = runs_dir / "20260101-000001-bio-sft"
    shutil.copytree(trained_run, sft, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    (sft / runs.RUN_INFO).write_text(json.dumps({"name": SFT_NAME}), encoding="utf-8")
    base = RunConfig.load(sft / runs.CONFIG).model.source
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url, shots / "prefs-last.png") as (page, errors):
        expect(page.locator("#data-summary")).to_contain_text("rows will be used", timeout=90_000)
        tab(page, "2 · Train")
        adv, whole = _advanced_height(page)
        print(f"Train tab with Advanced open: Advanced {adv:.0f} px, page {whole:.0f} px")
        (artifacts / "advanced-height.txt").write_text(f"advanced {adv:.0f} px, page {whole:.0f} px\n")
        page.screenshot(path=str(shots / "train-advanced-open.png"), full_page=True)
        assert adv < ADVANCED_MAX_PX, adv
        page.locator("#advanced").get_by_text("Advanced").first.click()  # closed again: the stage must show anyway
        expect(page.locator("#train-dpo-beta")).to_be_hidden()

        tab(page, "1 · Data")
        page.locator("#data-upload input[type=file]").set_input_files(str(_pairs(tmp_path / "pairs.jsonl")))
        expect(page.locator("#data-summary")).to_contain_text("preference pairs", timeout=60_000)

        tab(page, "2 · Train")
        stage = page.locator("#train-stage input")
        expect(stage).to_be_visible()
        expect(stage).to_have_value("dpo", timeout=20_000)
        model = page.locator("#model-source input")
        model.fill(str(base))
        model.press("Enter")
        page.locator("#run-name input, #run-name textarea").first.fill("prefs run")
        page.locator("#train-start-from input").click()
        page.get_by_role("option", name=re.compile(f"^{re.escape(SFT_NAME)} · adapter")).first.click()
        expect(page.locator("#train-start-from input")).to_have_value(re.compile(re.escape(SFT_NAME)))
        for elem, value in (("#train-max-steps", 2), ("#train-max-length", 64), ("#train-batch-size", 2)):
            box = page.locator(f"{elem} input[type=number]").first
            box.fill(str(value))
            box.press("Tab")
        page.wait_for_timeout(1000)  # the last change events land before Start reads the form
        page.locator("#train-start").click()
        expect(page.locator("#train-progress")).to_contain_text("prefs run", timeout=30_000)
        expect(page.locator("#train-progress .studio-state")).to_have_text("finished", timeout=240_000)
        page.screenshot(path=str(shots / "prefs-finished.png"), full_page=True)
        assert not errors, errors
    made = [d for d in runs_dir.iterdir() if d != sft and (d / runs.CONFIG).is_file()]
    assert len(made) == 1, made
    cfg = RunConfig.load(made[0] / runs.CONFIG)
    assert cfg.train.stage == "dpo" and cfg.train.start_from == str(sft), cfg.train
