"""compute_dtype auto on the CPU: a measured GEMM probe decides bf16 or fp32 (deterministic given its figures,
which are injected here), cached per machine; a bf16 run is autocast mixed precision whose loss curve follows
fp32's on the tiny model."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from studio.models import precision
from tests.helpers import studio_cli

AVX2 = (150.0, 1.5)  # GFLOP/s (fp32, bf16): bf16 ~100x slower without native instructions (product guide)
AVX512_BF16 = (152.0, 398.0)  # measured on the demo model's shapes (product guide)


def _probe(figures, calls):
    def probe(width):
        calls.append(width)
        return figures
    return probe


@pytest.mark.parametrize("figures,want", [(AVX2, "float32"), (AVX512_BF16, "bfloat16"), ((200.0, 260.0), "float32"),
                                          ((200.0, 300.0), "bfloat16")])
def test_the_decision_follows_the_measurements(tmp_path, figures, want):
    calls = []
    got = precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(figures, calls))
    assert (got.fp32, got.bf16, got.dtype, got.cached) == (*figures, want, False) and calls == [576]
    again = precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe((1.0, 1.0), calls))
    assert again.dtype == want and again.cached and calls == [576]  # measured once per machine, then read back
    line = again.line()
    assert f"bf16 GEMM {figures[1]:.0f} GFLOP/s, fp32 {figures[0]:.0f} GFLOP/s" in line and line.endswith(want)


def test_the_cache_is_per_thread_count_and_width_and_survives_a_bad_file(tmp_path):
    calls = []
    precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(AVX512_BF16, calls))
    precision.cpu_precision(576, threads=1, home=tmp_path, probe=_probe(AVX2, calls))
    precision.cpu_precision(4096, threads=2, home=tmp_path, probe=_probe(AVX2, calls))
    assert calls == [576, 576, 4096]
    assert precision.cpu_precision(576, threads=2, home=tmp_path).dtype == "bfloat16"
    assert precision.cpu_precision(576, threads=1, home=tmp_path).dtype == "float32"
    assert len(json.loads((tmp_path / precision.CACHE).read_text())) == 3
    (tmp_path / precision.CACHE).write_text("{not json")
    assert precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(AVX2, calls)).dtype == "float32"
    assert calls[-1] == 576


def test_a_measurement_under_load_is_used_once_and_not_kept(tmp_path):
    """Three probes on a busy machine read (fp32, bf16) = (16.5, 1.3), (8.7, 29.2), (16.2, 4.5) where a quiet one
    reads (176, 760): such a measurement decides this run only, and the next one measures again."""
    busy = precision.Measurement(16.5, 1.3, unsteady="other processes used 1.8 cores while it ran")
    calls = []
    got = precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(busy, calls))
    assert got.dtype == "float32" and not got.cached and "not kept: other processes used 1.8 cores" in got.line()
    assert not (tmp_path / precision.CACHE).exists()
    again = precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(AVX512_BF16, calls))
    assert again.dtype == "bfloat16" and not again.cached and len(calls) == 2  # measured again, and now kept
    assert precision.cpu_precision(576, threads=2, home=tmp_path).cached
    remeasured = precision.cpu_precision(576, threads=2, home=tmp_path, probe=_probe(AVX2, calls), remeasure=True)
    assert remeasured.dtype == "float32" and not remeasured.cached and len(calls) == 3


@pytest.mark.parametrize("rounds,others,flags,why", [
    (([176, 170, 175], [760, 750, 755]), 0.1, {"avx512_bf16"}, ""),
    (([176, 170, 175], [760, 750, 755]), 1.3, {"avx512_bf16"}, "other processes used 1.3 cores"),
    (([176, 20, 30], [760, 750, 755]), 0.0, set(), "fp32 rounds varied from 20 to 176"),
    (([176, 170, 175], [1.3, 1.2, 1.3]), 0.0, {"avx512_bf16"}, "has avx512_bf16 but bf16 measured slower"),
    (([150, 149, 150], [1.5, 1.5, 1.4]), 0.0, {"avx2"}, ""),  # an AVX2-only CPU: bf16 slow is expected, kept
])
def test_what_makes_a_measurement_unsteady(rounds, others, flags, why):
    m = precision.assess(*rounds, others, flags)
    assert (m.fp32, m.bf16) == (max(rounds[0]), max(rounds[1]))  # the best round of each: load only slows
    assert (why in m.unsteady) if why else m.unsteady == ""


def test_the_real_probe_is_quick_and_leaves_torch_threads_alone(tmp_path):
    import torch
    before = torch.get_num_threads()
    t0 = time.perf_counter()
    got = precision.cpu_precision(576, threads=1, home=tmp_path)
    took = time.perf_counter() - t0
    assert took < 1.0, took
    assert got.fp32 > 1 and got.bf16 > 0.1 and got.dtype in ("float32", "bfloat16")
    assert torch.get_num_threads() == before


def test_the_suite_runs_in_a_private_studio_home(private_studio_home):
    """Nothing a test does lands in the user's studio home: the session's $STUDIO_HOME is a temporary folder that
    child processes inherit (a probe cached from a busy test run once set fp32 for good on a bf16 CPU)."""
    import os
    import subprocess

    from studio.env.paths import studio_home
    assert studio_home() == private_studio_home and os.environ["STUDIO_HOME"] == str(private_studio_home)
    assert Path(private_studio_home).resolve() != (Path.home() / ".cache" / "qlora-studio").resolve()
    child = subprocess.run([sys.executable, "-c", "from studio.env.paths import studio_home; print(studio_home())"],
                           capture_output=True, text=True, timeout=60)
    assert child.stdout.strip() == str(private_studio_home)


@pytest.mark.parametrize("figures,want", [(AVX2, "float32"), (AVX512_BF16, "bfloat16")])
def test_auto_picks_what_the_probe_decided(tiny_model_dir, tmp_path, monkeypatch, figures, want):
    """pick_dtype (training and the 4-bit load), chat and the memory estimate all follow the probe."""
    import torch

    from studio.config import RunConfig
    from studio.memory import compute_dtype
    from studio.models import pick_dtype
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    precision.cpu_precision(64, home=tmp_path, probe=lambda w: figures)  # the tiny model's width, these threads
    cfg = RunConfig().replace(model={"source": str(tiny_model_dir)})
    assert pick_dtype(cfg.model, "cpu", tiny_model_dir) == getattr(torch, want)
    assert compute_dtype(cfg, "cpu", 64) == want
    assert pick_dtype(cfg.replace(model={"compute_dtype": "float32"}).model, "cpu", tiny_model_dir) == torch.float32


def _losses(run_dir):
    from studio.runs.events import read_metrics
    df = read_metrics(run_dir)
    return df[df.kind == "train"].loss.tolist()


@pytest.mark.train
def test_bf16_autocast_follows_the_fp32_loss_curve(tiny_config, tmp_path):
    """The same 12 steps in fp32 and in bf16 autocast: the LoRA weights stay fp32 (they are saved so), the two
    loss curves agree within 2% at every step, and both go down."""
    from safetensors import safe_open

    from studio.runs import ADAPTER
    curves = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        cfg = tiny_config.replace(model={"compute_dtype": dtype},
                                  train={"max_steps": 12, "logging_steps": 1, "eval_fraction": 0.0, "eval_steps": 0})
        cfg.save(tmp_path / f"{dtype}.yaml")
        res = studio_cli("train", tmp_path / f"{dtype}.yaml", "--output", out, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"compute dtype {dtype}" in (out / "train.log").read_text()
        with safe_open(str(out / ADAPTER / "adapter_model.safetensors"), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
        curves[dtype] = _losses(out)
    fp32, bf16 = curves["float32"], curves["bfloat16"]
    assert len(fp32) == len(bf16) == 12
    assert fp32[-1] < fp32[0] - 0.5 and bf16[-1] < bf16[0] - 0.5
    worst = max(abs(a - b) / a for a, b in zip(fp32, bf16))
    assert worst < 0.02, list(zip(fp32, bf16))
    assert fp32 != bf16  # the bf16 run really computed in bf16
