"""Runs you can trust and compare: the overfitting alert, the best checkpoint (kept, named, picked by default),
early stopping, and the config diff of two runs."""
import json
import zipfile

import pytest

from studio import export, runs
from studio.runs import events
from studio.config import RunConfig, config_diff
from studio.runs.events import Losses
from tests.helpers import overfit_config, studio_cli


def test_overfitting_rule_on_made_up_curves():
    train = [(s, 5.0 - 0.1 * s) for s in range(1, 21)]  # train loss falls throughout
    rising = Losses(train=train, eval=[(4, 3.0), (8, 2.5), (12, 2.6), (16, 2.7)])
    assert rising.overfitting(2) == {"step": 16, "eval_loss": 2.7, "best_step": 8, "best_eval_loss": 2.5,
                                     "rises": 2}
    assert rising.overfitting(3) is None  # only two rises so far
    assert rising.overfitting(0) is None  # off
    once = Losses(train=train, eval=[(4, 3.0), (8, 2.5), (12, 2.6), (16, 2.55)])
    assert once.overfitting(2) is None  # the second evaluation fell again
    flat_train = Losses(train=[(s, 4.0) for s in range(1, 21)], eval=rising.eval)
    assert flat_train.overfitting(2) is None  # both rise or stall together: not overfitting, just not learning
    assert rising.evals_without_improvement() == 2
    assert Losses(eval=[(1, 2.0), (2, 1.99), (3, 1.98)]).evals_without_improvement(min_delta=0.05) == 2
    assert Losses(eval=[(1, 2.0), (2, 1.9)]).evals_without_improvement(min_delta=0.05) == 0


def test_config_diff_lists_exactly_the_settings_that_differ():
    a = RunConfig()
    b = a.replace(name="other", train={"learning_rate": 1e-4, "seed": 7}, lora={"r": 8})
    c = a.replace(data={"columns": {"prompt": "q"}})
    assert config_diff([a, a.replace(name="x")]) == []
    assert config_diff([a, b]) == ["lora.r", "train.learning_rate", "train.seed"]
    assert config_diff([a, b, c]) == ["lora.r", "train.learning_rate", "train.seed", "data.columns.prompt"]


def test_early_stopping_needs_held_out_rows():
    with pytest.raises(ValueError, match="Early stopping needs held-out rows"):
        RunConfig().replace(train={"early_stopping_patience": 2, "eval_fraction": 0.0})


@pytest.mark.train
def test_overfitting_run_alerts_keeps_the_best_checkpoint_and_stops_early(tiny_model_dir, tmp_path):
    cfg = overfit_config(tiny_model_dir, tmp_path, early_stopping_patience=4, save_total_limit=1)
    cfg_path = cfg.save(tmp_path / "overfit.yaml")
    run_dir = tmp_path / "run"
    out = studio_cli("train", cfg_path, "--output", run_dir, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = events.read_metrics_events(run_dir)
    losses = events.loss_series(run_dir)
    ev = losses.eval
    # the alert: at the first evaluation that closes two rises in a row while the train loss still falls
    alerts = [e for e in logged if e["kind"] == "overfit"]
    assert alerts, f"no overfitting alert; eval losses {ev}"
    first = alerts[0]
    i = next(i for i in range(2, len(ev)) if ev[i][1] > ev[i - 1][1] > ev[i - 2][1]
             and Losses(train=losses.train, eval=ev[:i + 1]).overfitting(2))
    assert first["step"] == ev[i][0]
    assert (first["best_step"], first["best_eval_loss"]) == min(ev[:i + 1], key=lambda p: p[1])
    assert "Overfitting: the eval loss has risen 2 evaluations in a row" in out.stderr  # the CLI says it
    # early stopping: four evaluations without a new low, then the run ends `finished` and says why
    stop = [e for e in logged if e["kind"] == "early_stop"]
    assert len(stop) == 1
    best_step, best_loss = losses.best_eval
    assert stop[0]["best_step"] == best_step
    after_best = [s for s, _ in ev if s > best_step]
    assert len(after_best) == 4 and stop[0]["step"] == after_best[-1]
    st = runs.status(run_dir)
    assert st["state"] == "finished" and st["step"] == stop[0]["step"] < 60
    assert f"Stopped early at step {stop[0]['step']}" in st["message"] and f"step {best_step}" in st["message"]
    # the best checkpoint exists and survives pruning (Checkpoints kept = 1 keeps the newest and the best)
    best = runs.best_adapter(run_dir)
    assert best.name == f"checkpoint-{best_step}" and best.eval_loss == best_loss and not best.last
    kept = [p.name for p in runs.checkpoints(run_dir)]
    assert f"checkpoint-{best_step}" in kept and len(kept) <= 2, kept
    # named by `studio runs status`, marked and picked by default in the pickers
    out = studio_cli("runs", "status", run_dir)
    st = json.loads(out.stdout)
    assert st["best_adapter"] == best.name and st["best_step"] == best_step
    options, default = runs.adapter_options(run_dir)
    assert default == best.name
    assert [lbl for lbl, v in options if v == best.name][0].endswith(f"★ best {best_loss:.3f}")
    # Export: "best" zips that checkpoint, and its card says which it is
    z = export.export_adapter_zip(run_dir, tmp_path / "out", checkpoint="best")
    assert f"-adapter-step{best_step}-" in z.name
    with zipfile.ZipFile(z) as zf:
        card = zf.read("README.md").decode()
        assert zf.read("adapter_model.safetensors") == (run_dir / "checkpoints" / best.name /
                                                        "adapter_model.safetensors").read_bytes()
    assert f"the checkpoint at step {best_step}" in card and "the lowest eval loss of the run" in card
    # the run's summary for Compare
    summ = [e for e in logged if e["kind"] == "summary"][-1]
    assert summ["peak_memory_gb"] > 0.1 and summ["tokens_per_s"] > 0


def test_compare_runs_table(tiny_config, runs_dir):
    a = runs.create_run(tiny_config.replace(name="a"), runs_dir)
    b = runs.create_run(tiny_config.replace(name="b", train={"learning_rate": 5e-3}, lora={"r": 8}), runs_dir)
    keys, rows = runs.compare([a, b])
    assert keys == ["lora.r", "train.learning_rate"]
    assert [(r["name"], r["lora.r"], r["train.learning_rate"]) for r in rows] == [("a", 16, 1e-2), ("b", 8, 5e-3)]
    out = studio_cli("runs", "compare", a.name, b.name)
    assert out.returncode == 0, out.stderr
    assert "train.learning_rate" in out.stdout and "lora.r" in out.stdout and "train.seed" not in out.stdout
    out = studio_cli("runs", "compare", a.name)
    assert out.returncode == 2 and "two or more runs" in out.stderr


def test_loss_chart_draws_eval_points_the_best_step_and_readable_ticks():
    from studio.ui.train import curves
    lone = curves.loss_chart(Losses(train=[(1, 3.0), (2, 2.5)], eval=[(2, 2.7)]))
    ev = [t for t in lone.data if t.name == "eval loss"][0]
    assert ev.mode == "markers" and list(ev.x) == [2]  # one eval point still shows
    several = curves.loss_chart(Losses(train=[(s, 3.0 - 0.1 * s) for s in range(1, 9)],
                                       eval=[(2, 2.9), (4, 2.6), (6, 2.7), (8, 2.8)]))
    assert [t.mode for t in several.data] == ["lines", "lines+markers"]
    assert [a.text for a in several.layout.annotations] == ["best eval: step 4"]
    assert several.layout.shapes[0].x0 == 4
    lr = curves.small_chart([(1, 2e-4), (2, 2e-4)], "learning rate", "")
    assert lr.layout.yaxis.exponentformat == "e" and pytest.approx(lr.layout.yaxis.range) == (1e-4, 3e-4)
    assert curves.loss_chart(Losses()).layout.annotations[0].text.startswith("The loss appears here")


def test_the_train_form_sets_the_new_fields():
    from studio.ui import settings
    values = settings.preset_values("quick", "x", "demo")
    for key, v in ((("train", "early_stopping_patience"), 3), (("train", "early_stopping_min_delta"), 0.01),
                   (("train", "overfit_evals"), 4), (("train", "save_total_limit"), 0)):
        values[settings.KEYS.index(key)] = v
    data = {"path": "d.jsonl", "format": "auto", "columns": {}, "system_prompt": "", "skip_invalid": True}
    t = settings.values_to_config(values, data).train
    assert (t.early_stopping_patience, t.early_stopping_min_delta, t.overfit_evals, t.save_total_limit) == \
        (3, 0.01, 4, 0)
