"""The whole path in real Chromium: upload -> quick preset on a tiny model -> train -> chat -> export.

Drives `python launch.py` in a subprocess (as a user starts it) with the Debian `chromium` through PyPI
`playwright`; never downloads a browser. Screenshots of each tab go to test-artifacts/.
"""
from __future__ import annotations

import json
import re
import time
import zipfile

import pytest

from tests.helpers import chromium_page, overfit_config, tab

MAX_STEPS = 4


def _line_points(page, elem: str) -> int:
    """How many data points the plotly chart in `elem` draws: the move/line commands of its line paths plus
    its marker points."""
    return page.evaluate("""(sel) => {
        let n = 0;
        for (const p of document.querySelectorAll(sel + ' .scatterlayer path.js-line'))
            n += ((p.getAttribute('d') || '').match(/[ML]/g) || []).length;
        return n + document.querySelectorAll(sel + ' .scatterlayer path.point').length; }""", elem)


def _hist_total(page) -> int:
    """Examples counted by the bars of the Data tab's token histogram (vega writes each bar's values)."""
    labels = page.evaluate("""() => Array.from(document.querySelectorAll('#data-hist svg g.mark-rect path'))
        .map(p => p.getAttribute('aria-label') || '')""")
    return sum(int(m.group(1)) for a in labels for m in [re.search(r"examples: (\d+)", a)] if m)


@pytest.mark.browser
@pytest.mark.train
def test_full_path_in_chromium(app_url, tiny_model_dir, small_dataset, artifacts, tmp_path):
    from playwright.sync_api import expect

    url, runs_dir, log = app_url
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    timings = {}
    with chromium_page(url, shots / "last.png", accept_downloads=True) as (page, errors):
        # --- Data: the bundled sample is checked on load; then upload our own file ---
        expect(page.locator("#data-summary")).to_contain_text("rows will be used", timeout=90_000)
        # field help is drawn in the readable gray (7.6:1 on white), not the theme's 2.5:1 one
        help_colour = page.evaluate("getComputedStyle(document.querySelector('.gradio-container'))"
                                    ".getPropertyValue('--block-info-text-color')")
        assert help_colour.strip().lower() == "#4b5563", help_colour
        page.locator("#data-upload input[type=file]").set_input_files(str(small_dataset))
        expect(page.locator("#data-summary")).to_contain_text("small.jsonl", timeout=60_000)
        expect(page.locator("#data-summary")).to_contain_text("48", timeout=10_000)
        expect(page.locator("#data-example")).to_contain_text("assistant", timeout=30_000)
        deadline = time.time() + 20
        while _hist_total(page) != 48 and time.time() < deadline:  # the histogram is of the new file
            time.sleep(0.5)
        assert _hist_total(page) == 48
        page.screenshot(path=str(shots / "1-data.png"), full_page=True)

        # --- Train: quick preset, the tiny model, a few steps ---
        tab(page, "2 · Train")
        page.get_by_label("Quick try (CPU, minutes)").check()
        model = page.locator("#model-source input")
        model.fill(str(tiny_model_dir))
        model.press("Enter")
        page.locator("#run-name input, #run-name textarea").first.fill("e2e run: tiny/model")
        for elem, value in (("#train-max-steps", MAX_STEPS), ("#train-max-length", 128),
                            ("#train-learning-rate", 0.01)):
            box = page.locator(f"{elem} input[type=number]").first
            box.fill(str(value))
            box.press("Tab")
        time.sleep(1.0)  # let the last change events land before Start reads the form
        t0 = time.time()
        page.locator("#train-start").click()
        expect(page.locator("#train-progress")).to_contain_text("e2e run", timeout=30_000)
        deadline = time.time() + 150
        while _line_points(page, "#loss-plot") < 1:
            if time.time() > deadline:
                pytest.fail(f"no loss point within 150 s; app log:\n{log.read_text()[-3000:]}")
            if "failed" in (page.locator("#train-progress").inner_text() or "").lower():
                pytest.fail(f"the run failed: {page.locator('#train-progress').inner_text()}")
            time.sleep(0.5)
        timings["start_to_first_chart_point_s"] = round(time.time() - t0, 1)
        page.screenshot(path=str(shots / "2-train-running.png"), full_page=True)
        # a reload re-attaches to the run (what is watched lives on disk, not in the page)
        page.reload()
        tab(page, "2 · Train")
        expect(page.locator("#train-progress")).to_contain_text("e2e run", timeout=30_000)
        expect(page.locator("#train-progress .studio-state")).to_have_text("finished", timeout=150_000)
        timings["start_to_finished_s"] = round(time.time() - t0, 1)
        # the chart draws after the page's plotly.js loads: when the run ended during the reload,
        # "finished" can show before the first drawing
        deadline = time.time() + 30
        while _line_points(page, "#loss-plot") < 2 and time.time() < deadline:
            time.sleep(0.5)
        points = _line_points(page, "#loss-plot")
        assert points >= 2, (points, page.locator("#loss-plot").inner_html()[-2000:],
                             [(d / "metrics.jsonl").read_text()[-2000:] for d in runs_dir.glob("*")
                              if (d / "metrics.jsonl").is_file()])
        expect(page.locator("#train-log textarea")).to_have_value(re.compile("Saved the adapter"), timeout=10_000)
        page.screenshot(path=str(shots / "2-train.png"), full_page=True)

        # --- Chat: one prompt, two panes fill, and they differ ---
        tab(page, "3 · Chat")
        expect(page.locator("#chat-run input")).to_have_value(re.compile("e2e"), timeout=20_000)
        page.locator("#chat-prompt textarea").fill("Why is the sky blue?")
        t1 = time.time()
        page.locator("#chat-send").click()
        expect(page.locator("#chat-status")).to_contain_text("Done", timeout=120_000)
        timings["chat_both_panes_s"] = round(time.time() - t1, 1)
        base = page.locator("#chat-base .message.bot, #chat-base [data-testid=bot]").last.inner_text()
        tuned = page.locator("#chat-tuned .message.bot, #chat-tuned [data-testid=bot]").last.inner_text()
        assert base.strip() and tuned.strip(), (base, tuned)
        assert base != tuned, "Base and Tuned gave the same answer: is the adapter applied?"
        page.screenshot(path=str(shots / "3-chat.png"), full_page=True)

        # --- Export: one button, download the zip ---
        tab(page, "4 · Export")
        expect(page.locator("#export-run input")).to_have_value(re.compile("e2e"), timeout=20_000)
        page.locator("#export-button").click()
        link = page.locator("#export-file a[download], #export-file a").first
        expect(link).to_be_visible(timeout=120_000)
        with page.expect_download(timeout=60_000) as dl:
            link.click()
        download = dl.value
        zpath = tmp_path / download.suggested_filename
        download.save_as(zpath)
        page.screenshot(path=str(shots / "4-export.png"), full_page=True)

        # --- Export: GGUF + Modelfile, checked in llama-server, downloaded ---
        page.locator("#gguf-type input").click()
        page.get_by_role("option", name=re.compile("^F16")).click()
        t1 = time.time()
        page.locator("#gguf-button").click()
        glink = page.locator("#gguf-file a[download], #gguf-file a").first
        expect(glink).to_be_visible(timeout=180_000)
        timings["gguf_export_s"] = round(time.time() - t1, 1)
        expect(page.locator("#gguf-summary")).to_contain_text("F16:", timeout=10_000)
        expect(page.locator("#gguf-agreement")).to_contain_text("yes", timeout=10_000)
        with page.expect_download(timeout=60_000) as dl:
            glink.click()
        gpath = tmp_path / dl.value.suggested_filename
        dl.value.save_as(gpath)
        page.screenshot(path=str(shots / "4-export-gguf.png"), full_page=True)
    (shots / "timings.json").write_text(json.dumps(timings, indent=1))
    print("timings:", timings)
    assert not [e for e in errors if "ResizeObserver" not in e], errors

    # the download name comes from the run name and is safe on every OS
    name = zpath.name
    assert name.startswith("e2e-run-tiny-model-adapter-") and name.endswith(".zip"), name
    assert all(c.isalnum() or c in "-_." for c in name), name
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        assert {"adapter_model.safetensors", "adapter_config.json", "config.yaml", "metrics.jsonl",
                "README.md"} <= names, names
        assert "tokenizer.json" in names or "tokenizer_config.json" in names, names
        zf.extractall(tmp_path / "unzipped")

    # the GGUF zip: the merged model and the adapter as GGUF, the Modelfiles, a README with the agreement
    assert gpath.name.startswith("e2e-run-tiny-model-gguf-f16-") and gpath.suffix == ".zip", gpath.name
    with zipfile.ZipFile(gpath) as zf:
        gnames = set(zf.namelist())
        assert {"e2e-run-tiny-model-f16.gguf", "adapter-f16.gguf", "Modelfile", "Modelfile.adapter",
                "README.md"} <= gnames, gnames
        assert zf.read("e2e-run-tiny-model-f16.gguf")[:4] == b"GGUF"
        assert "FROM ./e2e-run-tiny-model-f16.gguf" in zf.read("Modelfile").decode()
        assert "answers identical" in zf.read("README.md").decode()

    # the zip reloads with peft on the base and generates
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "unzipped")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, tmp_path / "unzipped")
    ids = tok("Why is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.browser
@pytest.mark.train
def test_overfitting_run_best_checkpoint_and_compare_in_chromium(app_url, tiny_model_dir, tmp_path, artifacts):
    """Two runs made to overfit (trained in the background, as from the CLI): the page shows the alert, the best
    step on the chart, the best checkpoint marked in the run list and picked in Chat and Export, and the two
    runs compared (settings that differ) and opened in Chat against each other."""
    from playwright.sync_api import expect

    from studio import runs
    from studio.runs import events

    url, runs_dir, log = app_url
    made = []
    for name, lr in (("overfit a", 1e-2), ("overfit b", 5e-3)):
        cfg = overfit_config(tiny_model_dir, tmp_path, early_stopping_patience=4, learning_rate=lr)
        run_dir = runs.launch(cfg.replace(name=name), runs_dir)
        deadline = time.time() + 240
        while runs.status(run_dir).get("state") not in ("finished", "failed") and time.time() < deadline:
            time.sleep(0.5)
        assert runs.status(run_dir)["state"] == "finished", (run_dir / "train.log").read_text()[-2000:]
        made.append(run_dir)
    newest = made[-1]
    losses = events.loss_series(newest)
    best = runs.best_adapter(newest)
    assert best is not None and not best.last
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url, shots / "last-overfit.png") as (page, errors):
        tab(page, "2 · Train")
        # the newest run is shown: alert, every eval point drawn as a dot, the best step marked
        expect(page.locator("#train-progress")).to_contain_text("overfit b", timeout=60_000)
        expect(page.locator("#train-alert")).to_contain_text("Overfitting: the eval loss has risen 2",
                                                             timeout=10_000)
        expect(page.locator("#train-alert")).to_contain_text(f"lowest at step {best.step}")
        expect(page.locator("#train-alert")).to_contain_text("Stopped early")
        expect(page.locator("#loss-plot .annotation")).to_contain_text(f"best eval: step {best.step}",
                                                                     timeout=20_000)
        # trace 2 is the eval loss: one marker per evaluation
        assert page.locator("#loss-plot .scatterlayer .trace").nth(1).locator("path.point").count() == \
            len(losses.eval)
        ticks = page.locator("#lr-plot .ytick text").all_text_contents()
        assert ticks and all(re.fullmatch(r"[-\u2212]?\d+(\.\d+)?(e[-\u2212+]?\d+)?", t) for t in ticks), ticks
        assert page.locator("#grad-plot .scatterlayer path.js-line").count() == 1
        expect(page.locator("#runs-table")).to_contain_text(f"★ {best.name}")
        page.screenshot(path=str(shots / "5-overfit-train.png"), full_page=True)
        # Compare: the settings that differ, then both in Chat against each other
        for name in ("overfit a", "overfit b"):
            page.locator("#runs-overlay input").click()
            page.get_by_role("option", name=re.compile(name)).first.click()
        page.keyboard.press("Escape")
        expect(page.locator("#runs-compare-table")).to_contain_text("Learning rate (train.learning_rate)",
                                                                   timeout=20_000)
        expect(page.locator("#runs-compare-table")).not_to_contain_text("train.seed")
        expect(page.locator("#runs-overlay-plot .scatterlayer .trace")).to_have_count(4, timeout=20_000)
        page.screenshot(path=str(shots / "6-compare.png"), full_page=True)
        page.locator("#runs-open-chat").click()
        expect(page.locator("#chat-run input")).to_have_value(re.compile("overfit a"), timeout=20_000)
        expect(page.locator("#chat-checkpoint input")).to_have_value(re.compile("best"), timeout=20_000)
        expect(page.locator("#chat-against input")).to_have_value(re.compile("overfit b"), timeout=20_000)
        page.screenshot(path=str(shots / "7-chat-pair.png"), full_page=True)
        # Export picks the best checkpoint by default
        tab(page, "4 · Export")
        expect(page.locator("#export-checkpoint input")).to_have_value(re.compile("★ best"), timeout=20_000)
        # the chosen adapter reads whole at 1400 px, here and in Chat (it was cut after "(eval loss 0")
        assert page.locator("#export-checkpoint input").evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        expect(page.locator("#gguf-file")).to_be_hidden()  # nothing to show before a GGUF export
        expect(page.locator("#gguf-agreement")).to_be_hidden()
        tab(page, "3 · Chat")
        assert page.locator("#chat-checkpoint input").evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    assert not [e for e in errors if "ResizeObserver" not in e], errors
