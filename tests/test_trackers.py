"""Experiment trackers (train.report_to) and NEFTune (train.neftune_noise_alpha): transformers' own report_to gets
the tracker, each tracker writes under the run folder unless the user's environment says otherwise, one that is not
installed is refused in a sentence before anything loads, and TensorBoard's event files hold the same train losses
as metrics.jsonl."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from studio.config import RunConfig
from studio.train import trackers


def not_installed(monkeypatch, *packages: str) -> None:
    """importlib.util.find_spec answers None for `packages`, as on a machine without them."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name.split(".")[0] in packages else real(name, *a, **kw))


def test_the_field_takes_the_trackers_and_refuses_others():
    assert RunConfig().train.report_to == "none"
    for name in trackers.TRACKERS:
        assert RunConfig(train={"report_to": name}).train.report_to == name
    with pytest.raises(ValueError, match=r"Experiment tracker 'comet' is not known: use one of none, tensorboard"):
        RunConfig(train={"report_to": "comet"})


def test_a_tracker_not_installed_is_refused_with_its_install_command(monkeypatch):
    not_installed(monkeypatch, "wandb", "tensorboard", "tensorboardX")
    for name, pkg in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        problem = trackers.missing(name)
        assert problem == (f"Experiment tracker (train.report_to) is {name}, but the {pkg} package is not installed: "
                           f"run `pip install {pkg}` (every tracker: `pip install -e '.[trackers]'` in the studio's "
                           f"folder), or set Experiment tracker to none.")
        with pytest.raises(ValueError, match="is not installed"):
            trackers.require_installed(name)
    assert trackers.missing("none") is None
    monkeypatch.undo()
    assert trackers.missing("tensorboard") is None  # the test extra installs it


def test_a_run_with_a_missing_tracker_fails_in_words_before_the_model_loads(monkeypatch, tmp_path, tiny_config):
    """The recipe's first step refuses it: status.json carries the sentence, nothing was loaded."""
    from studio.runs import events
    from studio.train import lifecycle, recipe

    not_installed(monkeypatch, "mlflow")
    monkeypatch.setattr(recipe, "setup_device", lambda cfg: pytest.fail("the model was about to load"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config.replace(train={"report_to": "mlflow"})
    assert lifecycle.run(cfg, tmp_path / "run") == 1
    st = events.read_status(tmp_path / "run")
    assert st["state"] == "failed"
    assert st["error"].startswith("Experiment tracker (train.report_to) is mlflow, but the mlflow package is not "
                                  "installed: run `pip install mlflow`")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # refused before anything was set


def test_each_tracker_writes_under_the_run_folder_unless_the_user_said_otherwise(tmp_path):
    run = tmp_path / "run"
    assert trackers.environment("none", run, {}) == {}
    assert trackers.environment("tensorboard", run, {}) == {"TENSORBOARD_LOGGING_DIR": str(run / "tensorboard")}
    assert trackers.environment("wandb", run, {}) == {"WANDB_MODE": "offline", "WANDB_DIR": str(run)}
    assert trackers.environment("mlflow", run, {}) == {"MLFLOW_TRACKING_URI": f"file://{run}/mlruns",
                                                       "MLFLOW_ALLOW_FILE_STORE": "true"}
    assert trackers.environment("trackio", run, {}) == {"TRACKIO_DIR": str(run / "trackio")}
    # what the user set is theirs: a W&B account online, a MLflow server
    assert trackers.environment("wandb", run, {"WANDB_MODE": "online"}) == {"WANDB_DIR": str(run)}
    assert trackers.environment("mlflow", run, {"MLFLOW_TRACKING_URI": "http://mlflow.lan:5000"}) == {}
    # a TensorBoard folder set for everything would mix every run's curves: always the run's own
    assert trackers.environment("tensorboard", run, {"TENSORBOARD_LOGGING_DIR": "/x"}) == {
        "TENSORBOARD_LOGGING_DIR": str(run / "tensorboard")}


def test_training_arguments_carry_report_to_and_the_run_name(tmp_path, tiny_config):
    import torch

    from studio.train.recipe import Device, training_arguments

    dev = Device("cpu", False, 1)
    off = training_arguments(tiny_config, tmp_path / "r1", torch.float32, dev, True)
    assert off["report_to"] == [] and "run_name" not in off
    assert "neftune_noise_alpha" not in off  # SFT's own: the DPO, KTO and GRPO trainers never get it
    on = training_arguments(tiny_config.replace(train={"report_to": "wandb"}), tmp_path / "r2", torch.float32, dev,
                            True)
    assert on["report_to"] == ["wandb"] and on["run_name"] == "r2"
    assert training_arguments(tiny_config.replace(train={"report_to": "trackio"}), tmp_path / "r3", torch.float32,
                              dev, True)["project"] == "qlora-studio"


class Captured(Exception):
    pass


@pytest.mark.parametrize("alpha, expected", [(5.0, 5.0), (0.0, None)])
def test_neftune_reaches_the_sft_config(monkeypatch, tmp_path, tiny_config, alpha, expected):
    """sft.build hands train.neftune_noise_alpha to TRL's SFTConfig (0 = transformers' None, off)."""
    import trl

    from studio import stages
    from studio.train import sft

    seen = {}

    def capture(**kw):
        seen.update(kw)
        raise Captured

    monkeypatch.setattr(trl, "SFTConfig", capture)
    cfg = tiny_config.replace(train={"neftune_noise_alpha": alpha})
    with pytest.raises(Captured):
        sft.build(stages.get("sft"), None, None, {"output_dir": str(tmp_path)}, cfg, None, None, [], None, "cpu",
                  False)
    assert seen["neftune_noise_alpha"] == expected


def test_neftune_help_names_the_stage_and_the_value():
    from studio.config import field_meta
    meta = field_meta("train", "neftune_noise_alpha")
    assert meta["default"] == 0.0 and "5" in meta["help"] and "sft stage only" in meta["help"]
    with pytest.raises(ValueError, match="NEFTune noise"):
        RunConfig(train={"neftune_noise_alpha": -1})


@pytest.mark.train
def test_tensorboard_events_hold_the_same_train_losses_as_metrics_jsonl(monkeypatch, tmp_path, tiny_config):
    """A 4-step tiny run with report_to tensorboard: RUN/tensorboard holds transformers' event file, whose
    train/loss scalars are metrics.jsonl's train losses, step for step (float32 in the event file: to 1e-6)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from studio.train.lifecycle import run

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)  # restored after the test: the run sets it
    cfg = tiny_config.replace(train={"report_to": "tensorboard", "max_steps": 4, "save_steps": 4, "eval_steps": 2},
                              model={"compute_dtype": "float32"})
    run_dir = tmp_path / "run"
    assert run(cfg, run_dir) == 0, (run_dir / "train.log").read_text(encoding="utf-8")[-3000:]
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, f"no event file in {run_dir / 'tensorboard'}: {sorted(p.name for p in run_dir.iterdir())}"
    assert not (run_dir / "checkpoints" / "runs").exists()  # transformers' default folder, among the checkpoints
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("train/loss")}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    ours = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    assert sorted(tb) == sorted(ours) and len(ours) >= 4
    for step, loss in ours.items():
        assert tb[step] == pytest.approx(loss, abs=1e-6), step
    evals = {r["step"]: r["eval_loss"] for r in rows if r["kind"] == "eval"}
    assert {e.step for e in acc.Scalars("eval/loss")} == set(evals)
    assert "tensorboard --logdir" in (run_dir / "train.log").read_text(encoding="utf-8")


def test_the_form_shows_both_fields():
    from studio.ui import settings
    assert ("train", "report_to") in settings.ADVANCED and ("train", "neftune_noise_alpha") in settings.ADVANCED
    cfg = settings.values_to_config(settings.config_values(RunConfig(train={"report_to": "tensorboard",
                                                                              "neftune_noise_alpha": 5.0})))
    assert cfg.train.report_to == "tensorboard" and cfg.train.neftune_noise_alpha == 5.0


def test_start_and_studio_train_refuse_a_missing_tracker_before_any_run_folder(monkeypatch, tmp_path):
    """ready_to_train (Start, `studio train`, `config check`, create_run) says it before a run folder exists."""
    from studio import runs
    from studio.config import RunConfig
    from tests.helpers import SAMPLE_JSONL
    cfg = RunConfig().replace(data={"path": str(SAMPLE_JSONL)}, train={"report_to": "wandb"})
    not_installed(monkeypatch, "wandb")
    with pytest.raises(ValueError, match="pip install wandb"):
        cfg.ready_to_train()
    root = tmp_path / "runs"
    root.mkdir()
    with pytest.raises(ValueError, match="is not installed"):
        runs.create_run(cfg, root)
    assert not any(root.iterdir())
