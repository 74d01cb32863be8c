"""GRPO on the demo model, measured: an SFT run on the pirate sample (the demo config), then a GRPO run that starts
from its adapter and trains for checks (one of which, brevity, the SFT run does not fix), then base vs SFT and SFT
vs GRPO on the held-out prompts, scored by the same checks.

    python bench/grpo_demo.py [--sft-steps 30] [--grpo-steps 30] [--rows 26] [--work DIR]

Prints seconds per GRPO step, the trainer's peak RSS, and each check's pass rate (95% interval) before and after;
writes bench/results/grpo_demo-<time>.json. Every run is a `studio train` / `studio eval` child process, as a user
would start it. Set STUDIO_HOME to a folder of its own (the demo model is converted there once).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SAMPLE, machine, now, write_json  # noqa: E402

# the pirate sample's answers all open with "Arr, matey!" and close with " Yo-ho-ho!" (assets/datasets/README.md):
# SFT learns that in 30 steps. What it does not learn is to be brief (its answers run 1-3 sentences), and some of its
# answers are the frame alone, "Arr, matey! Yo-ho-ho! Yo-ho-ho!". `brief` asks for 6-15 words; `says_something`
# for words between the two (the first round, without it, taught exactly that frame: bench/RESULTS.md)
CHECKS = [{"name": "opens", "type": "regex", "pattern": r"^\s*Arr, matey!"},
          {"name": "closes", "type": "regex", "pattern": r"Yo-ho-ho!\s*$"},
          {"name": "brief", "type": "length", "min_words": 6, "max_words": 15},
          {"name": "says_something", "type": "regex",
           "pattern": r"^\s*Arr, matey!\s+(?!Yo-ho-ho)\w.*Yo-ho-ho!\s*$"},
          {"name": "one_cheer", "type": "regex", "pattern": r"Yo-ho-ho!.*Yo-ho-ho!", "expect": False}]


def studio(*args, timeout=7200) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "studio.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"studio {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")
    return res


def train(cfg: dict, out: Path) -> dict:
    import yaml
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    t = time.time()
    studio("train", path, "--output", out)
    wall = time.time() - t
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = next(e for e in reversed(events) if e["kind"] == "summary")
    steps = [e for e in events if e["kind"] == "train"]
    return {"wall_s": round(wall, 1), "train_s": summary["wall_s"], "steps": summary["step"],
            "s_per_step": round(summary["wall_s"] / max(1, summary["step"]), 2),
            "peak_rss_gb": summary["peak_memory_gb"], "first": steps[0], "last": steps[-1]}


def evaluate(run: Path, against: str, rows: int, checks: Path, tokens: int) -> dict:
    res = studio("eval", run, "--against", against, "--rows", rows, "--checks", checks, "--max-new-tokens", tokens)
    path = Path(res.stdout.strip().splitlines()[-1])
    return json.loads(path.read_text(encoding="utf-8"))


def main() -> None:
    import yaml
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft-steps", type=int, default=30)
    ap.add_argument("--grpo-steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=26, help="held-out prompts evaluated (the demo keeps 26)")
    ap.add_argument("--tokens", type=int, default=96, help="max new tokens of an evaluated answer")
    ap.add_argument("--lr", type=float, default=None, help="GRPO learning rate (default: the grpo_quick preset's)")
    ap.add_argument("--sft", default=None, help="the SFT run of an earlier round to start from")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="grpo-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    checks = work / "checks.yaml"
    checks.write_text(yaml.safe_dump({"checks": CHECKS}, sort_keys=False), encoding="utf-8")

    demo = yaml.safe_load((ROOT / "assets/configs/demo.yaml").read_text(encoding="utf-8"))
    demo["data"]["path"] = str(SAMPLE)
    demo["train"]["max_steps"] = a.sft_steps
    if a.sft:  # the SFT run of an earlier round (its figures kept beside it); evaluated again on these checks
        sft_dir = Path(a.sft)
        sft = json.loads((sft_dir / "bench-sft.json").read_text(encoding="utf-8"))
    else:
        sft_dir = work / "sft"
        sft = train(demo, sft_dir)
        (sft_dir / "bench-sft.json").write_text(json.dumps(sft), encoding="utf-8")
    before = evaluate(sft_dir, "base", a.rows, checks, a.tokens)

    from studio.config import PRESETS
    grpo_cfg = {**demo, "name": "pirate-grpo", "checks": CHECKS,
                "lora": {**demo["lora"], **PRESETS["grpo_quick"]["lora"]},
                "train": {**demo["train"], **PRESETS["grpo_quick"]["train"], "max_steps": a.grpo_steps,
                          "start_from": str(sft_dir), "eval_steps": 0,
                          **({"learning_rate": a.lr} if a.lr else {})}}
    grpo = train(grpo_cfg, work / "grpo")
    after = evaluate(work / "grpo", str(sft_dir), a.rows, checks, a.tokens)

    result = {"time": now(), "machine": machine(), "work": str(work), "checks": CHECKS, "sft": sft, "grpo": grpo,
              "grpo_settings": grpo_cfg["train"], "eval_base_vs_sft": {"sides": before["sides"],
                                                                       "summary": before["summary"]},
              "eval_sft_vs_grpo": {"sides": after["sides"], "summary": after["summary"]}}
    out = ROOT / "bench" / "results" / f"grpo_demo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, result)
    print(f"SFT: {sft['steps']} steps in {sft['train_s']} s; GRPO: {grpo['steps']} steps in {grpo['train_s']} s "
          f"({grpo['s_per_step']} s/step), peak RSS {grpo['peak_rss_gb']} GB")
    print("base -> SFT:", *before["summary"], sep="\n  ")
    print("SFT -> GRPO:", *after["summary"], sep="\n  ")
    print(out)


if __name__ == "__main__":
    main()
