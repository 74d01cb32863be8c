"""The first optimiser step learns (issue 23, item 9): transformers' warm-up starts at factor 0, so with warm-up on the
first step trained at learning rate 0 and two runs 5x apart logged the same step-2 loss. The studio's schedule reads
the warm-up one step later (studio.train.sft.warm_from_step_one)."""
from __future__ import annotations

import pytest

from studio.runs import events
from studio.train.sft import warm_from_step_one
from tests.helpers import sample_head, tiny_run_config


def _rates(scheduler, optimizer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant_with_warmup"])
def test_the_warm_up_starts_above_zero_and_then_follows_the_schedule(kind):
    import torch
    from transformers import get_scheduler

    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return opt, get_scheduler(kind, opt, num_warmup_steps=4, num_training_steps=10)

    opt, plain = make()
    before = _rates(plain, opt, 10)
    assert before[0] == 0.0  # transformers' own: the first step trains at 0
    opt, ours = make()
    after = _rates(warm_from_step_one(ours, 4), opt, 10)
    assert after[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # (s + 1) / W of the rate
    assert after[4:] == pytest.approx(before[4:])  # then the schedule as it was
    assert warm_from_step_one(ours, 0) is ours  # no warm-up: nothing to change


def _step(run_dir, step: int) -> dict:
    return next(e for e in events.read_metrics_events(run_dir) if e.get("step") == step and e.get("loss") is not None)


@pytest.mark.train
def test_two_runs_with_other_rates_differ_after_the_first_step(tiny_model_dir, tmp_path):
    from studio.train.lifecycle import run

    data = sample_head(24, tmp_path / "rows.jsonl")
    seen = {}
    for lr in (1e-2, 2e-3):
        cfg = tiny_run_config(tiny_model_dir, data).replace(
            name=f"lr {lr}", train={"learning_rate": lr, "max_steps": 3, "warmup_ratio": 0.5, "logging_steps": 1,
                                    "lr_scheduler": "linear", "eval_fraction": 0.0, "save_steps": 100})
        out = tmp_path / f"run-{lr}"
        assert run(cfg, out) == 0, (out / "train.log").read_text(encoding="utf-8")[-2000:]
        first, second = _step(out, 1), _step(out, 2)
        assert first["learning_rate"] > 0, first  # 2 warm-up steps: step 1 trains at half the rate
        assert first["learning_rate"] == pytest.approx(lr / 2)
        seen[lr] = (first["loss"], second["loss"])
    assert seen[1e-2][0] == pytest.approx(seen[2e-3][0])  # the same rows and start: the same first loss
    assert seen[1e-2][1] != pytest.approx(seen[2e-3][1], abs=1e-4), seen  # the first step moved them apart
