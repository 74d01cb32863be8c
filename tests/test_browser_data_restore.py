"""A reload keeps the training data (issue 23 item 1): upload a CSV, start a run on it, reload the page, and the Data
tab shows that CSV (its name, its rows, whose run it is), not the bundled sample, so Start would train on it again.
On the way: the file box names the file (not gradio's temp path), the sample picker names the upload, the Problems
table fits its column and says "skipped", and "Next: Train →" opens the Train tab. Real Chromium, the tiny model."""
from __future__ import annotations

import re
import time

import pytest

from tests.helpers import chromium_page


def _qa30(path):
    """30 rows in `question,answer` columns (not the alpaca names); row 7's answer is empty (skipped): 29 used."""
    lines = ["question,answer"] + [f"What is {i} plus {i}?,{'' if i == 7 else f'It is {2 * i} matey.'}"
                                   for i in range(1, 31)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _overflow(page, elem: str) -> float:
    """How many px the table in `elem` runs past the right edge of its box (> 0: cut on the right)."""
    return page.evaluate("""(sel) => { const t = document.querySelector(sel + ' table');
        return t.getBoundingClientRect().right - document.querySelector(sel).getBoundingClientRect().right; }""",
                         elem)


def _settle(page) -> None:
    """Wait until no event is in flight (gradio draws a progress text over pending components), for the shots."""
    page.wait_for_function("() => !document.querySelector('.progress-text')", timeout=60_000)
    time.sleep(0.5)


@pytest.mark.browser
@pytest.mark.train
def test_reload_restores_the_runs_uploaded_data(app_url, tiny_model_dir, tmp_path, artifacts):
    from playwright.sync_api import expect

    url, runs_dir, log = app_url
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    csv = _qa30(tmp_path / "qa30.csv")
    with chromium_page(url, shots / "data-restore-last.png") as (page, errors):
        summary = page.locator("#data-summary")
        expect(summary).to_contain_text("pirate_qa", timeout=90_000)
        # the sample's conversations read as User / Assistant columns, not raw [{"role": "user", ... JSON
        preview = page.locator("#data-preview")
        expect(preview).to_contain_text("Assistant", timeout=10_000)
        expect(preview).to_contain_text("Who painted the Mona Lisa?")
        assert '"role"' not in preview.inner_text()
        assert _overflow(page, "#data-preview") <= 2, "the preview runs past its box"
        legend = page.locator("#data-example").inner_text()
        assert "trained on" in legend and "chosen" not in legend and "rejected" not in legend, legend
        _settle(page)
        page.screenshot(path=str(shots / "data-sample.png"), full_page=True)
        expect(page.locator("#data-file input, #data-file textarea").first).to_have_value(
            "pirate_qa.jsonl (bundled sample)", timeout=10_000)
        page.locator("#data-upload input[type=file]").set_input_files(str(csv))
        expect(summary).to_contain_text("qa30.csv", timeout=60_000)
        expect(summary).to_contain_text("29 of 30 rows will be used", timeout=10_000)
        # the box names the file, not <tmp>/gradio/<hash>/qa30.csv; the picker names the upload
        expect(page.locator("#data-file input, #data-file textarea").first).to_have_value("qa30.csv (uploaded)")
        expect(page.locator("#data-sample input")).to_have_value(re.compile(r"qa30\.csv \(your upload\)"))
        # the skipped row says so in the user's column's words, and the table is not cut on the right
        page.get_by_role("tab", name="Problems").click()
        issues = page.locator("#data-issues")
        expect(issues).to_contain_text("'answer' is empty", timeout=10_000)
        expect(issues).to_contain_text("skipped")
        assert _overflow(page, "#data-issues") <= 2, "the Problems table runs past its box"
        _settle(page)
        page.screenshot(path=str(shots / "data-upload.png"), full_page=True)

        page.locator("#data-next").click()  # Next: Train -> the Train tab
        expect(page.locator("#train-start")).to_be_visible(timeout=10_000)
        page.get_by_label("Quick try (CPU, minutes)").check()
        model = page.locator("#model-source input")
        model.fill(str(tiny_model_dir))
        model.press("Enter")
        page.locator("#run-name input, #run-name textarea").first.fill("qa30 run")
        for elem, value in (("#train-max-steps", 2), ("#train-max-length", 64)):
            box = page.locator(f"{elem} input[type=number]").first
            box.fill(str(value))
            box.press("Tab")
        time.sleep(1.0)  # let the last change events land before Start reads the form
        # beside Start: the data it will train on (a reload cannot swap it unseen)
        expect(page.locator("#train-data")).to_contain_text("Training data: qa30.csv, 30 rows (29 used)")
        page.locator("#train-start").click()
        expect(page.locator("#train-progress")).to_contain_text("qa30 run", timeout=30_000)

        page.reload()
        expect(summary).to_contain_text("qa30.csv", timeout=90_000)
        expect(summary).to_contain_text("29 of 30 rows will be used", timeout=10_000)
        assert "pirate" not in summary.inner_text()
        expect(page.locator("#data-origin")).to_contain_text("Showing the data of run qa30 run: qa30.csv")
        expect(page.locator("#data-sample input")).to_have_value(re.compile(r"qa30\.csv \(data of run qa30 run\)"))
        expect(page.locator("#data-file input, #data-file textarea").first).to_have_value("qa30.csv (uploaded)")
        _settle(page)
        page.screenshot(path=str(shots / "data-restored.png"), full_page=True)
        page.get_by_role("tab", name="2 · Train").click()
        expect(page.locator("#train-data")).to_contain_text("Training data: qa30.csv, 30 rows (29 used)",
                                                            timeout=10_000)
    assert not [e for e in errors if "ResizeObserver" not in e], errors
