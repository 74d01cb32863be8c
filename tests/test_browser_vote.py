"""Blind A/B in real Chromium: a finished tiny run in the runs folder, Blind A/B on, one prompt, nothing on the page
names the models before the vote, "A is better", then the reveal and one line in the run's preferences.jsonl; then
two held-out rows judged blind.

Uses conftest's app (`python launch.py` in a subprocess) and the Debian chromium; never downloads a browser.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from studio import runs, stages
from studio.config import RunConfig
from studio.runs import judgements
from tests.helpers import chromium_page, tab

RUN_NAME = "vote run"


@pytest.mark.browser
def test_blind_vote_in_chromium(app_url, trained_run, artifacts):
    from playwright.sync_api import expect

    from studio.ui.chat.handlers import BASE_LABEL

    url, runs_dir, log = app_url
    run_dir = runs_dir / "20260101-000001-vote"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    (run_dir / runs.RUN_INFO).write_text(json.dumps({"name": RUN_NAME}), encoding="utf-8")
    adapter = f"{RUN_NAME} (final)"
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url) as (page, errors):
        tab(page, "3 · Chat")
        expect(page.locator("#chat-run input")).to_have_value(re.compile(RUN_NAME), timeout=30_000)
        page.get_by_text("Generation settings (used by both panes)").click()
        tokens = page.locator("input[aria-label='number input for Max new tokens']")
        tokens.fill("24")  # short answers: the test is about the votes, not the text
        tokens.press("Tab")
        expect(page.locator("input[aria-label='range slider for Max new tokens']")).to_have_value("24")
        page.get_by_label("Blind A/B").check()
        expect(page.locator("#chat-pane-a")).to_be_visible(timeout=10_000)
        expect(page.locator("#chat-base")).to_be_hidden()
        page.locator("#chat-prompt textarea").fill("Why is the sky blue?")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-status")).to_contain_text("Done", timeout=90_000)
        vote_a = page.locator("#chat-vote-a")
        expect(vote_a).to_be_enabled(timeout=10_000)
        for pane in ("#chat-pane-a", "#chat-pane-b"):
            expect(page.locator(f"{pane} .message.bot, {pane} [data-testid=bot]").last).not_to_be_empty()

        # before the vote: the panes are titled A and B only, and the page nowhere names the adapter
        titles = [page.locator(f"{pane} [data-testid=block-label]").inner_text().strip()
                  for pane in ("#chat-pane-a", "#chat-pane-b")]
        assert titles == ["A", "B"], titles
        html = page.content()
        assert adapter not in html
        assert not re.search(r'id="chat-pane-[ab]"[^>]*class="[^"]*(base|tuned)', html)
        page.screenshot(path=str(shots / "8-blind-before-vote.png"), full_page=True)

        vote_a.click()
        reveal = page.locator("#chat-vote-reveal")
        expect(reveal).to_contain_text(adapter, timeout=20_000)
        expect(reveal).to_contain_text(BASE_LABEL)
        expect(reveal).to_contain_text("A is better")
        expect(page.locator("#chat-pane-a [data-testid=block-label]")).to_contain_text(
            re.compile(f"A · ({re.escape(adapter)}|{re.escape(BASE_LABEL)})"))
        expect(page.locator("#chat-vote-rates")).to_contain_text("decided vote", timeout=10_000)
        expect(vote_a).to_be_disabled()
        page.screenshot(path=str(shots / "8-blind-after-vote.png"), full_page=True)
        lines = (run_dir / runs.PREFERENCES).read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1, lines
        # 👍 on answer A: a feedback line under the model that gave it
        page.locator("#chat-pane-a").get_by_label("Like", exact=True).last.click()
        expect(page.locator("#chat-status")).to_contain_text("saved for A", timeout=20_000)

        # the held-out rows (all 5 of the tiny run's), blind: the table hides while they are judged one by one
        page.locator("#chat-compare").get_by_text("Compare on held-out prompts").click()
        page.locator("#chat-compare-button").click()
        expect(page.locator("#chat-hv-start")).to_be_enabled(timeout=60_000)
        page.locator("#chat-hv-start").click()
        note = page.locator("#chat-hv-note")
        expect(note).to_contain_text("Row 1 of ", timeout=20_000)
        n_rows = int(re.search(r"Row 1 of (\d+)", note.inner_text()).group(1))
        expect(page.locator("#chat-compare-table")).to_be_hidden()
        assert adapter not in page.locator("#chat-compare").inner_html()
        page.screenshot(path=str(shots / "9-heldout-blind.png"), full_page=True)
        for i in range(n_rows):
            expect(note).to_contain_text(f"Row {i + 1} of {n_rows}", timeout=20_000)
            page.locator("#chat-hv-vote-b" if i == 0 else "#chat-hv-vote-tie").click()
        expect(note).to_contain_text(f"All {n_rows} rows judged", timeout=20_000)
        expect(page.locator("#chat-compare-table")).to_be_visible()

        # two more decided votes (as a second browser would add them), then a DPO run from the page
        first = json.loads((run_dir / runs.PREFERENCES).read_text(encoding="utf-8").splitlines()[0])
        for vote in ("a", "b"):
            judgements.append_vote(run_dir, first["prompt"], "Arr, a fine answer.", "A plain answer.",
                              *first["models"], vote)
        page.locator("#chat-train-votes").click()
        started = page.locator("#chat-train-votes-status")
        expect(started).to_contain_text("DPO run started", timeout=60_000)
        page.screenshot(path=str(shots / "10-train-on-votes.png"), full_page=True)
    assert not [e for e in errors if "ResizeObserver" not in e], errors
    lines = (run_dir / runs.PREFERENCES).read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["source"] for x in lines] == ["chat"] + ["heldout"] * n_rows + ["chat"] * 2, lines
    vote = json.loads(lines[0])
    assert vote["vote"] == "a" and set(vote["models"]) == {adapter, BASE_LABEL}
    assert vote["chosen_model"] == vote["models"][0] and vote["settings"]["max_new_tokens"] == 24
    assert vote["prompt"][-1] == {"role": "user", "content": "Why is the sky blue?"}
    (fb,) = [json.loads(x) for x in (run_dir / runs.FEEDBACK).read_text(encoding="utf-8").splitlines()]
    assert fb["label"] is True and fb["model"] == vote["models"][0]

    # the DPO run: started from the voted run's adapter, on its 4 decided votes, and it finishes
    (dpo,) = [d for d in runs_dir.iterdir() if d != run_dir and d.is_dir()]
    cfg = RunConfig.load(dpo / runs.CONFIG)
    assert cfg.train.stage == "dpo" and Path(cfg.train.start_from) == run_dir.resolve(), cfg.train
    assert len((dpo / stages.get("dpo").run_file).read_text(encoding="utf-8").splitlines()) == 4
    deadline = time.time() + 240
    while time.time() < deadline and runs.status(dpo).get("state") not in ("finished", "failed", "stopped"):
        time.sleep(1)
    st = runs.status(dpo)
    assert st["state"] == "finished", (st, (dpo / "train.log").read_text()[-3000:])
    events = [json.loads(x) for x in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_margin" in e for e in events if e.get("kind") == "train")
