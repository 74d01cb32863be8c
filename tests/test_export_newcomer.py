"""Issue 23 (the page as a newcomer meets it), items 8, 11 and 13 in part: Export and Chat start on the run with the
best eval loss and say why; the GGUF agreement comes with a verdict; the trainer's last line after Stop; the Compare
table's "best at", number notation and marks; whole-number step ticks and the learning-rate chart's top label.

Handler and unit tests on run folders written by hand (config.yaml, run.json, status.json, metrics.jsonl, an
adapter_config.json): no model, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import handler, wired


def _run(root: Path, rid: str, name: str, evals: list[tuple[int, float]], data: str = "bio.csv",
         state: str = "finished", step: int = 8, **train) -> Path:
    """A run folder as the studio leaves it, without a model: its config, run.json naming the user's data file,
    status, the eval losses in metrics.jsonl and a final adapter (adapter_config.json)."""
    from studio import runs
    from studio.config import RunConfig
    from studio.runs import events
    d = root / rid
    cfg = RunConfig(name=name)
    (cfg.replace(train=train) if train else cfg).save(d / runs.CONFIG)
    (d / "run.json").write_text(json.dumps({"name": name, "source_data": data}))
    events.write_status(d, state, step=step)
    for s in range(1, step + 1):
        events.append_metrics(d, {"kind": "train", "step": s, "loss": 4.0 - 0.1 * s, "learning_rate": 2e-4})
    for s, loss in evals:
        events.append_metrics(d, {"kind": "eval", "step": s, "eval_loss": loss})
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")
    return d


@pytest.fixture
def bio(runs_dir) -> Path:
    """The issue's pair: bio-lr1e-3 (older, best eval loss 2.04) and bio-lr2e-4 (newer, 3.35), on the same data."""
    _run(runs_dir, "20261202-100000-bio-lr1e-3", "bio-lr1e-3", [(4, 2.5), (8, 2.04)], learning_rate=1e-3)
    _run(runs_dir, "20261202-110000-bio-lr2e-4", "bio-lr2e-4", [(4, 3.6), (8, 3.35)], learning_rate=2e-4)
    return runs_dir


# --- item 8: the default run is the one with the best eval loss ---------------------------------------------------

def test_preferred_run_is_the_best_eval_loss_among_runs_on_the_same_held_out_rows(bio):
    from studio import runs
    from studio.runs.results import preferred_run
    pref = preferred_run(runs.list_runs(bio))
    assert Path(pref.path).name == "20261202-100000-bio-lr1e-3"
    assert pref.why == "best eval loss 2.04 of 2 runs"
    # a newer run on another data file: its eval loss is on other rows, so nothing is compared with it
    _run(bio, "20261202-120000-other", "other data", [(8, 3.9)], data="legal.csv")
    pref = preferred_run(runs.list_runs(bio))
    assert Path(pref.path).name == "20261202-120000-other" and pref.why == ""
    assert preferred_run([]) is None


def test_preferred_run_is_the_newest_without_evals_or_while_one_trains(runs_dir):
    from studio import runs
    from studio.runs.results import preferred_run
    _run(runs_dir, "20261202-100000-a", "a", [])
    _run(runs_dir, "20261202-110000-b", "b", [])
    assert Path(preferred_run(runs.list_runs(runs_dir)).path).name == "20261202-110000-b"
    # a run still training is not preferred for its eval loss; the finished one with the lower loss is
    _run(runs_dir, "20261202-120000-c", "c", [(4, 1.0)], state="running", step=4)
    _run(runs_dir, "20261202-090000-d", "d", [(8, 3.0)])
    pref = preferred_run(runs.list_runs(runs_dir))
    assert Path(pref.path).name == "20261202-090000-d" and pref.why == "eval loss 3, the only one measured"


def test_export_tab_starts_on_the_best_run_and_its_label_says_why(bio):
    from studio.ui.export.handlers import run_picker
    choices, value = run_picker(bio)
    assert Path(value).name == "20261202-100000-bio-lr1e-3"
    labels = dict((v, lbl) for lbl, v in choices)
    assert labels[value] == "bio-lr1e-3 ★ best eval loss 2.04 of 2 runs"  # the name, short enough to read whole
    _run(bio, "20261202-050000-bio-lr1e-3", "bio-lr1e-3", [], state="stopped", step=3)  # the same name again
    labels = dict((v, lbl) for lbl, v in run_picker(bio)[0])
    assert labels[str(bio / "20261202-050000-bio-lr1e-3")] == "bio-lr1e-3 (20261202-050000-bio-lr1e-3) · stopped"
    assert sum("★" in lbl for lbl, _ in choices) == 1
    newer = str(bio / "20261202-110000-bio-lr2e-4")
    assert run_picker(bio, newer)[1] == newer  # the user's own pick stays
    assert run_picker(bio, str(bio / "gone"))[1] == value


def test_chat_tab_starts_on_the_best_run_and_its_label_says_why(bio):
    demo, t = wired(bio)
    refresh = handler(demo, t.refresh, "click").fn
    run_u, _ = refresh(None, None)
    assert Path(run_u.value).name == "20261202-100000-bio-lr1e-3"
    label = next(lbl for lbl, v in run_u.choices if v == run_u.value)
    assert "bio-lr1e-3" in label and "best eval loss 2.04" in label
    newer = str(bio / "20261202-110000-bio-lr2e-4")
    assert refresh(newer, None)[0].value == newer


# --- item 8: the GGUF agreement's verdict ---------------------------------------------------------------------

def _rows(*same: int, tokens: int = 32) -> list[dict]:
    return [{"prompt": "p", "pytorch": "a", "gguf": "b", "same_tokens": s, "tokens": tokens, "identical": s == tokens}
            for s in same]


def test_gguf_verdict_says_whether_the_agreement_is_fine_and_what_to_try():
    from studio.export.gguf.report import agreement_verdict
    # the "Q8_0: 1/3 answers identical", the others parting after 12 and 20 tokens: fine, and why
    fine = agreement_verdict("q8_0", _rows(32, 12, 20), template_matches=True)
    assert fine.startswith("Fine") and "not expected after quantisation" in fine and "F16" in fine
    assert agreement_verdict("q8_0", _rows(32, 32), True).startswith("Fine: every answer is the same")
    # one answer of four parting at its first words: a near-tie there, still fine; two of three: not
    assert agreement_verdict("q8_0", _rows(32, 1, 20, 32), True).startswith("Fine")
    early = agreement_verdict("q4_k_m", _rows(32, 1, 0), True)
    assert early.startswith("Check: 2 of 3 answers differ from the first tokens") and "Try F16" in early
    f16 = agreement_verdict("f16", _rows(2, 32), True)
    assert f16.startswith("Check") and "F16 should not" in f16
    assert agreement_verdict("f16", _rows(20, 32), True).startswith("Fine")
    assert "chat template" in agreement_verdict("q8_0", _rows(32), template_matches=False)
    assert agreement_verdict("q8_0", [], True).startswith("Not checked")


def test_gguf_summary_on_the_export_tab_carries_the_verdict(tmp_path):
    from studio.export.gguf.report import GGUFExport
    from studio.ui.export.handlers import gguf_summary
    (tmp_path / "model-q8_0.gguf").write_bytes(b"x" * 10)
    result = GGUFExport(folder=tmp_path, zip=None, quant="q8_0", model_file="model-q8_0.gguf",
                        agreement=_rows(32, 12, 20), adapter_agreement=_rows(32, 32, 32), template_matches=True)
    md = gguf_summary(result)
    assert "Q8_0: 1/3 answers identical" in md and "**Fine: Q8_0 rounds the weights" in md
    assert "not expected after quantisation" in md


# --- item 11: the trainer's last line, the Compare table's words and numbers --------------------------------------

def test_last_log_line_names_a_missing_eval_instead_of_a_dash():
    from studio.runs.events import Losses
    from studio.train.lifecycle import losses_text
    stopped = Losses(train=[(1, 3.2), (2, 3.0)])
    assert losses_text(stopped, 2, held_out=True) == "final train loss 3.0000; no eval yet"
    assert losses_text(stopped, 2, held_out=False) == "final train loss 3.0000; no held-out rows, so no eval loss"
    earlier = Losses(train=[(s, 3.0) for s in range(1, 7)], eval=[(4, 2.5)])
    assert losses_text(earlier, 6, True) == "final train loss 3.0000, eval loss 2.5000 (at step 4)"
    assert losses_text(Losses(train=[(8, 2.0)], eval=[(8, 1.5)]), 8, True) == \
        "final train loss 2.0000, eval loss 1.5000"
    assert "-" not in losses_text(Losses(), 0, True)


def test_compare_table_says_where_the_best_is_in_one_notation_and_marks_the_better_run(bio):
    from studio.ui.train.compare import compare_frame
    ids = ["20261202-100000-bio-lr1e-3", "20261202-110000-bio-lr2e-4"]
    df = compare_frame(ids, bio).set_index("")
    a, b = "1. bio-lr1e-3", "2. bio-lr2e-4"
    lr = df.loc["Learning rate (train.learning_rate)"]
    assert (lr[a], lr[b]) == ("1e-3", "2e-4")  # as the form's help and the papers write them, not 0.0002
    assert (df.loc["best at", a], df.loc["best at", b]) == ("final (step 8)", "final (step 8)")
    best = df.loc["best eval loss (★ lowest)"]
    assert (best[a], best[b]) == ("2.0400 ★", "3.3500")  # 4 decimals, as the run list shows losses
    assert df.loc["final eval loss (★ lowest)", a].endswith("★")
    assert "state" in df.index  # not ranked
    from studio.ui.train.compare import runs_frame
    rows = runs_frame(bio)
    assert list(rows["best"]) == ["★ final (3.3500)", "★ final (2.0400)"]


def test_best_at_names_a_checkpoint_by_its_step(runs_dir):
    from studio.runs.results import Best, best_at
    assert best_at(Best("checkpoint-4", 4, 1.0, last=False)) == "step 4 (checkpoint)"
    assert best_at(Best("adapter", 8, 1.0, last=True)) == "final (step 8)"
    assert best_at(None) is None


# --- item 13: step ticks and the learning-rate chart's top label -----------------------------------------------

@pytest.mark.parametrize("top, dtick", [(1, 1), (5, 1), (8, 1), (10, 1), (11, 2), (30, 5), (60, 10), (1000, 100),
                                        (1001, 200)])
def test_step_ticks_are_whole_numbers_at_most_ten(top, dtick):
    from studio.ui.train.curves import step_ticks
    assert step_ticks(top) == dtick and top / dtick <= 10


def test_step_charts_tick_whole_steps_and_keep_the_top_label_below_the_badge(bio):
    from studio.runs.events import loss_series
    from studio.ui.train.compare import overlay_chart
    from studio.ui.train.curves import TOP_MARGIN, loss_chart, small_chart
    run = bio / "20261202-100000-bio-lr1e-3"
    figs = [loss_chart(loss_series(run)), small_chart([(s, 2e-4 * s) for s in range(1, 9)], "learning rate", ""),
            overlay_chart(["20261202-100000-bio-lr1e-3", "20261202-110000-bio-lr2e-4"], bio)]
    for fig in figs:
        x = fig.layout.xaxis
        assert (x.tickmode, x.dtick, x.tick0) == ("linear", 1, 0)  # 8 steps: 1, 2, ... not 1.5, 2.5
        assert fig.layout.margin.t == TOP_MARGIN >= 40 and fig.layout.margin.l == 60  # the rest of the margin kept


def test_the_learning_rate_axis_writes_rates_as_the_form_does(tmp_path):
    """The learning-rate chart ticks 2e-3, not 0.002 (issue 23 item 11: one notation): what the Train tab draws."""
    from studio.ui.train.curves import run_charts
    from studio.runs.events import Losses
    events = [{"kind": "train", "step": s, "loss": 1.0, "learning_rate": 2e-3 * s / 8} for s in range(1, 9)]
    lr_fig = run_charts(Losses(), events, None)[1]
    assert lr_fig.layout.yaxis.tickformat == "~e"
    assert run_charts(Losses(), events, None)[0].layout.yaxis.tickformat is None  # the loss keeps plain numbers
