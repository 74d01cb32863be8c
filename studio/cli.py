"""`studio ui | train | data | checks | eval | runs | sweep | models | config | export | precision`: what the UI
uses, from a shell.

Heavy libraries are imported inside the commands, so `studio --help` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_runs import add_run_commands, data_path as _data_path, fail as _fail


def cmd_train(a) -> int:
    from .config import RunConfig
    from .runs import RunError, check_output, runs_root, slug
    from .env import ranks
    from .runs import group
    from .train.lifecycle import run

    try:
        cfg = RunConfig.load(a.config)
        cfg.ready_to_train()
        from .models.catalog import source_problem  # a model's own code runs only when the config says so
        if problem := source_problem(cfg.model.source, cfg.model.trust_remote_code):
            raise ValueError(problem)
    except ValueError as e:
        return _fail(str(e))
    if a.output:
        out = Path(a.output)
    else:
        import time
        out = runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(cfg.name)}"
    try:
        if a.max_steps is not None:
            cfg = cfg.replace(train={"max_steps": a.max_steps})
        if a.devices is not None:
            cfg = cfg.replace(train={"devices": a.devices})
        if not ranks.in_group():  # the group's parent checked the paths; its ranks only train
            check_output(out, Path(a.config), a.resume)
        cfg = cfg.replace(data={"path": _data_path(cfg.data.path, Path(a.config))})
        n = 1 if ranks.in_group() else group.resolve_devices(cfg)
    except (RunError, ValueError) as e:
        return _fail(str(e))
    if ranks.is_main():
        print(f"Run folder: {out}", file=sys.stderr)
    if n > 1:  # this process becomes the group's parent; each rank runs this command again, inside the group
        args = ["train", str(a.config), "--output", str(out), "--devices", str(n)]
        args += (["--resume"] if a.resume else []) + ([f"--max-steps={a.max_steps}"] if a.max_steps is not None else [])
        return group.launch_group(cfg, out, n, args)
    return run(cfg, out, resume=a.resume)


def cmd_ui(a) -> int:
    try:
        from .ui.app import main as ui_main
    except ImportError as e:
        return _fail(f"The web UI is not available ({e}).")
    return ui_main(host=a.host, port=a.port, auth=a.auth, runs_dir=a.runs_dir, auth_file=a.auth_file,
                   allowed_hosts=a.allowed_hosts, trusted_proxy=a.trusted_proxy) or 0


def cmd_data(a) -> int:
    from . import data
    from .config import ColumnMapping

    if a.max_length < 1:
        return _fail(f"--max-length must be a whole number above 0 (got {a.max_length}).")
    def show(s: str) -> str:  # a lone surrogate in a column or role name must not crash print()
        return s.encode("utf-8", "backslashreplace").decode("utf-8")

    try:
        # streamed: the same rules, counts and issues as training's read_examples, in memory that does not grow
        # with the file (a 200 MB CSV: 18.7 s and 2.0 GB read whole, 15.7 s and 194 MB streamed); keeps the
        # issues it prints and a TOKEN_SAMPLE-example reservoir sample for --tokens
        report = data.scan_examples(a.file, format=a.format, columns=ColumnMapping(), system_prompt="",
                                    skip_invalid=True, keep_issues=a.show if a.show >= 0 else None)
    except data.DataError as e:
        return _fail(show(str(e)))
    print(show(report.summary()))
    for issue in report.issues[: a.show]:
        where = ("file" if issue.row is None else f"row {issue.row}") + (
            f", column '{issue.column}'" if issue.column else "")
        print(show(f"  [{issue.severity}] {where}: {issue.problem} -> {issue.fix}"))
    if report.n_issues > a.show:
        print(f"  ... and {report.n_issues - a.show} more")
    if a.tokens:
        from .models import ModelError, load_tokenizer, resolve_source
        try:
            tok = load_tokenizer(resolve_source(a.model))
        except (ModelError, OSError, ValueError) as e:
            return _fail(str(e))
        examples, rows = report.sample, report.sample_rows
        st = data.token_stats(examples, tok, a.max_length, rows)
        of = f" (a random sample of {len(examples):,} of {report.n_used:,})" if len(examples) < report.n_used else ""
        print(f"Tokens per example{of}: median {st.p50}, p95 {st.p95}, max {st.max}; {st.pct_over:.1f}% over "
              f"{a.max_length}; {st.trained_tokens} of {st.total_tokens} tokens are trained on (assistant turns).")
    return 0


def cmd_models(a) -> int:
    """fetch-demo; list: the models here and the popular ones; fit: the fit table of a config's (or preset's)
    settings."""
    from .config import RunConfig, preset
    from .models import ModelError, catalog, fetch_demo, fit
    try:
        if a.action == "fetch-demo":
            print(fetch_demo(force=a.force))
        elif a.action == "list":
            print(catalog.text_table([m.row() for m in catalog.catalog(a.folder)]))
        else:
            cfg = RunConfig.load(a.config) if a.config else preset(a.preset)
            models = [m for m in catalog.catalog(a.folder) if m.source in a.model] if a.model else catalog.popular()
            print(fit.settings_line(cfg, a.config or f"{a.preset} preset"))
            print(fit.table_text(fit.fit_table(cfg, models, a.card)))
    except (ModelError, ValueError, OSError) as e:
        return _fail(str(e))
    return 0


def cmd_precision(a) -> int:
    """The CPU precision probe's figures for a model's width (what `compute_dtype: auto` trains in on this CPU), from
    the cache or measured; --remeasure measures again and replaces them."""
    from .models.precision import CACHE, cpu_flags, cpu_precision
    from .models.shape import model_shape
    from .models.source import ModelError
    from .env.paths import studio_home
    try:
        width = int(model_shape(a.model)["hidden_size"])
    except (ModelError, OSError, ValueError, KeyError) as e:
        return _fail(f"Cannot read the width of model '{a.model}': {e}")
    if a.threads is not None and a.threads < 1:
        return _fail(f"--threads must be 1 or more (got {a.threads}).")
    name, flags = cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    print(f"CPU: {name}; native bf16: {', '.join(native) if native else 'no (AVX512-BF16/AMX not listed)'}")
    got = cpu_precision(width, threads=a.threads, remeasure=a.remeasure)
    print(got.line())
    where = studio_home() / CACHE
    if got.cached:
        print(f"Read from {where}. `studio precision --remeasure` measures again on a quiet machine.")
    elif not got.unsteady:
        print(f"Kept in {where}: later runs on this machine use it.")
    return 0


def cmd_config(a) -> int:
    from .config import PRESETS, RunConfig, preset
    try:
        if a.action == "preset":
            changes = {"data": {"path": a.data}} if a.data else {}
            cfg = preset(a.name, **changes)
            if a.model:
                cfg = cfg.replace(model={"source": a.model})
            print(cfg.to_yaml(), end="")
        elif a.action == "check":
            cfg = RunConfig.load(a.file)
            cfg.ready_to_train()
            print(f"{a.file}: valid ({cfg.name}; model {cfg.model.source}; data {cfg.data.path or '-'})")
        elif a.action == "presets":
            print("\n".join(PRESETS))
    except ValueError as e:
        return _fail(str(e))
    return 0


def cmd_export(a) -> int:
    try:
        from . import export
    except ImportError as e:
        return _fail(f"Export is not available ({e}).")
    from .export.llamacpp import GGUFError
    from .models import ModelError
    from .runs import RunError, find_run
    try:
        run_dir = find_run(a.run, a.runs_dir)
        if a.gguf and a.gguf.lower() != "auto":
            from .export.gguf import pick_quant
            pick_quant(a.gguf, 0)  # a typo in the type is refused before anything is written
        if a.merged and a.merged_out:
            from .export.safety import check_dest
            check_dest(Path(a.merged_out).expanduser())  # a user's folder is refused before the zip is written
        path = export.export_adapter_zip(run_dir, Path(a.out) if a.out else None, a.checkpoint)
        print(path)
        if a.merged:
            print(export.export_merged(run_dir, Path(a.merged_out) if a.merged_out else None, a.checkpoint))
        if a.gguf:
            _export_gguf(run_dir, a)
    except (RunError, ModelError, ValueError, FileNotFoundError, GGUFError) as e:
        return _fail(str(e))
    return 0


def _export_gguf(run_dir: Path, a) -> None:
    from .export.gguf import export_gguf

    def say(frac: float, desc: str) -> None:
        print(f"[{frac * 100:3.0f}%] {desc}", file=sys.stderr, flush=True)

    r = export_gguf(run_dir, a.gguf, a.checkpoint, Path(a.gguf_out) if a.gguf_out else None, progress=say)
    for s in r.stages:
        size = f"  {s.file} {s.size / 2**20:,.1f} MB" if s.file and s.size else ""
        print(f"  {s.seconds:7.1f} s  {s.name}{size}", file=sys.stderr)
    print(r.summary, file=sys.stderr)
    print(r.verdict, file=sys.stderr)
    print(r.adapter_summary, file=sys.stderr)
    print(r.zip or r.folder)


def cmd_checks(a) -> int:
    from .evals.preflight import cli
    return cli(a)


def cmd_eval(a) -> int:
    from .evals.evaluate import cli
    return cli(a)


def _add_export_command(sub) -> None:
    """`studio export`: the adapter zip with its model card, and optionally the merged model and GGUF files."""
    s = sub.add_parser("export", help="zip a run's adapter with a model card (optionally a merged model, GGUF files)")
    s.add_argument("run", help="run id or folder")
    s.add_argument("--out", default=None, help="a .zip path or a folder (default: RUN/exports/)")
    s.add_argument("--checkpoint", default="adapter",
                   help="which adapter: 'adapter' (the final one), 'best' (lowest eval loss) or checkpoint-N")
    s.add_argument("--merged", action="store_true", help="also write the merged full model")
    s.add_argument("--merged-out", default=None, help="folder for the merged model (default: RUN/exports/merged/)")
    s.add_argument("--gguf", nargs="?", const="auto", default=None, metavar="TYPE",
                   help="also write GGUF files + Ollama Modelfiles, checked in llama-server: auto (Q8_0 below 1B "
                        "parameters, Q4_K_M from 1B), q8_0, q4_k_m, q5_k_m, q6_k, q4_0, f16, bf16, f32; needs "
                        "the extra qlora-studio[gguf]")
    s.add_argument("--gguf-out", default=None,
                   help="folder to put the GGUF export (a subfolder and its .zip) in (default: RUN/exports/)")
    s.add_argument("--runs-dir", default=None)
    s.set_defaults(fn=cmd_export)


def _add_check_commands(sub) -> None:
    """`studio checks` (the data's own answers scored) and `studio eval` (base vs tuned on the checks)."""
    s = sub.add_parser("checks", help="score a data file's own answers with checks (what a good answer is), before "
                                      "any training: the pass rate of each and the first rows that fail")
    s.add_argument("file", help="the data file (CSV/JSON/JSONL/Parquet) whose answers are the references")
    s.add_argument("--checks", required=True, metavar="YAML",
                   help="a YAML file of checks (a list, or a mapping with checks:), e.g. a run's config.yaml")
    s.add_argument("--format", default="auto", help="how rows are read (as for studio data)")
    s.add_argument("--show", type=int, default=3, help="how many failing rows to show per check")
    s.set_defaults(fn=cmd_checks)

    s = sub.add_parser("eval", help="answer a run's held-out prompts with the base and the tuned model and score both "
                                    "with checks; writes RUN/evals/<time>.json (its path is the last line)")
    s.add_argument("run", help="run id or folder")
    s.add_argument("--checks", default=None, metavar="YAML", help="a YAML file of checks (default: the run's own)")
    s.add_argument("--against", default="base", help="the other side: 'base' (default) or another run's id/folder")
    s.add_argument("--rows", type=int, default=None,
                   help="how many rows (default: every held-out row, up to 50; training rows when it kept none)")
    s.add_argument("--checkpoint", default="adapter", help="the tuned side's adapter: 'adapter', 'best' or "
                                                           "checkpoint-N")
    s.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    s.add_argument("--runs-dir", default=None)
    s.set_defaults(fn=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="QLoRA Studio: fine-tune open-weight LLMs on your data.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ui", help="start the web UI (127.0.0.1:7860)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs a password)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--auth", default=None, help="user:password, required when --host is not loopback; other users "
                   "can read it in the process list, so prefer --auth-file or STUDIO_AUTH")
    s.add_argument("--auth-file", default=None, metavar="PATH",
                   help="a file (chmod 600) holding one line user:password; else $STUDIO_AUTH=user:password")
    s.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="comma-separated extra host names the server answers to, or origins whose pages may call "
                        "it (host:port or https://proxy.lan) (default $STUDIO_ALLOWED_HOSTS; localhost, 127.0.0.1, "
                        "[::1] and --host always)")
    s.add_argument("--trusted-proxy", default=None, metavar="ADDRS",
                   help="the reverse proxy address(es) whose X-Forwarded-For names the client (default "
                        "$FORWARDED_ALLOW_IPS, else none: the TCP peer is the client)")
    s.add_argument("--runs-dir", default=None, help="where run folders live (default $STUDIO_HOME/runs)")
    s.set_defaults(fn=cmd_ui)

    s = sub.add_parser("train", help="train one run from a config file (what the UI starts)")
    s.add_argument("config", help="a run config YAML (see `studio config preset quick`)")
    s.add_argument("--output", help="run folder to write into (default: a new folder under the runs dir)")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    s.add_argument("--devices", type=int, default=None,
                   help="override train.devices: processes (one per GPU; 0 = every GPU); above 1 the run is "
                        "launched through accelerate (torchrun on a machine without GPUs)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("data", help="check a dataset file: format, problems, token lengths")
    s.add_argument("file")
    s.add_argument("--format", default="auto")
    s.add_argument("--show", type=int, default=20, help="how many problems to list")
    s.add_argument("--tokens", action="store_true", help="also count tokens with the model's chat template")
    s.add_argument("--model", default="demo")
    s.add_argument("--max-length", type=int, default=512)
    s.set_defaults(fn=cmd_data)

    add_run_commands(sub)

    s = sub.add_parser("models", help="model utilities")
    s.add_argument("action", choices=["fetch-demo", "list", "fit"])
    s.add_argument("--force", action="store_true")
    s.add_argument("--folder", action="append", default=[], help="list/fit: a local model folder to include too")
    s.add_argument("--config", default=None, help="fit: the run config whose settings to size (default: --preset)")
    s.add_argument("--preset", default="balanced", help="fit: the preset to size when no --config (default balanced)")
    s.add_argument("--card", type=float, action="append", default=None,
                   help="fit: a GPU card size in GB, repeatable (default: this GPU, else 8 12 16 24)")
    s.add_argument("--model", action="append", default=[], help="fit: a model (source) to size instead of the popular")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("precision", help="which precision this CPU trains fastest in (the probe behind compute_dtype "
                                         "auto), cached or measured again")
    s.add_argument("--model", default="demo", help="the model whose width is probed (default: demo)")
    s.add_argument("--threads", type=int, default=None, help="torch threads to probe on (default: one per core)")
    s.add_argument("--remeasure", action="store_true", help="measure again and replace the kept figures")
    s.set_defaults(fn=cmd_precision)

    s = sub.add_parser("config", help="write or check run configs")
    s.add_argument("action", choices=["preset", "check", "presets"])
    s.add_argument("name", nargs="?", default="quick", help="preset name (with preset)")
    s.add_argument("--data", default=None, help="dataset file for the preset")
    s.add_argument("--model", default=None, help="model source for the preset")
    s.add_argument("--file", default=None, help="config to check (with check)")
    s.set_defaults(fn=cmd_config)

    _add_export_command(sub)

    _add_check_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI; a reader that goes away early (`studio runs list | head`) ends it quietly with exit code 1."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        # the Python docs' recipe (library/signal.html, "Note on SIGPIPE"): later writes, the interpreter's own
        # flush at exit included, go to devnull
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "runs" and a.action not in ("list", "queue") and not a.run:
        return _fail("give a run id or folder (see `studio runs list`).")
    if a.command == "config" and a.action == "check" and not a.file:
        return _fail("give the config with --file.")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
