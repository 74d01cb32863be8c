"""`studio runs ...` (list, status, stop, resume, delete, compare, queue) and `studio sweep`: the CLI of the run
folders, the queue and sweeps (studio.runs)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def data_path(path: str, config: Path) -> str:
    """The config's data file, checked before any model loads. A relative path is read from the config file's
    folder when the file is there, else from the current directory."""
    if not path.strip():
        raise ValueError(f"{config} names no data file: set data.path to a CSV/JSON/JSONL/Parquet file.")
    p = Path(path).expanduser()
    if not p.is_absolute() and (config.parent / p).is_file():
        p = config.parent / p
    if not p.is_file():
        raise ValueError(f"Data file {p} does not exist{' or is a folder' if p.is_dir() else ''} (data.path in "
                         f"{config}; a relative path is read from the config file's folder, then from the current "
                         f"directory).")
    return str(p.resolve())


def cmd_runs(a) -> int:
    from . import runs
    from .runs import queue
    from .runs.events import ACTIVE_STATES
    try:
        if a.action == "list":
            rows = runs.list_runs(a.runs_dir)
            if not rows:
                print("No runs yet.")
            for r in rows:
                loss = f"{r['loss']:.4f}" if isinstance(r["loss"], (int, float)) else "-"
                print(f"{r['id']:<45} {r['state']:<9} step {r['step'] or 0:>5}/{r['max_steps'] or '?':<5} loss {loss}")
            return 0
        if a.action == "compare":
            return _compare([runs.find_run(r, a.runs_dir) for r in [a.run, *a.more]])
        if a.action == "queue":
            return cmd_queue(a)
        run_dir = runs.find_run(a.run, a.runs_dir)
        if a.action == "status":
            st = runs.status(run_dir)
            best = runs.best_adapter(run_dir)
            if best is not None:  # the adapter with the lowest eval loss, what Chat and Export pick by default
                st.update(best_adapter=best.name, best_step=best.step, best_eval_loss=best.eval_loss)
            print(json.dumps(st, indent=1))
        elif a.action == "stop":
            st = runs.status(run_dir)  # a trainer that is gone (its pid recycled or all) is not signalled
            if st.get("state") not in ACTIVE_STATES:
                print(f"{run_dir.name} is not running ({st.get('state')}); nothing was signalled. "
                      f"{st.get('error') or ''}".rstrip())
            else:
                if a.queue:  # the run that trains finishes its step; the queued ones wait
                    queue.set_paused(True, a.runs_dir)
                print(f"{run_dir.name}: {runs.stop(run_dir, wait=a.wait).get('state')}"
                      + (" (the queue is paused: `studio runs queue resume` goes on)" if a.queue else ""))
        elif a.action == "resume":
            proc = runs.resume(run_dir, a.runs_dir)
            print(f"Resumed {run_dir.name} (pid {proc.pid}); follow it in {run_dir / 'train.log'}")
        elif a.action == "delete":
            runs.delete_run(run_dir, a.runs_dir)
            print(f"Deleted {run_dir}")
        return 0
    except (runs.RunError, ValueError) as e:
        return fail(str(e))


def _compare(run_dirs) -> int:
    """Print the settings that differ between runs and their results, one column per run."""
    from . import runs
    if len(run_dirs) < 2:
        return fail("give two or more runs to compare (ids or folders).")
    keys, rows = runs.compare(run_dirs)
    for r in rows:
        if r.get("error"):
            print(f"Left out {r['id']}: {r['error']}", file=sys.stderr)
    rows = [r for r in rows if not r.get("error")]
    if not rows:
        return fail("none of these runs could be read; see the lines above.")
    width = max(len(k) for k in [*keys, "best eval loss", "peak memory GB"]) + 2

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
    print("".ljust(width) + "".join(cell(r["id"])[:28].ljust(30) for r in rows))
    if not keys:
        print("(the runs have the same settings)")
    for k in [*keys, "state", "step", "final train loss", "final eval loss", "best eval loss", "best at",
              "tokens/s", "wall s", "peak memory GB"]:
        print(k.ljust(width) + "".join(cell(r[k])[:28].ljust(30) for r in rows))
    return 0



def cmd_queue(a) -> int:
    """`studio runs queue [list] | CFG | cancel|up|next RUN | pause | resume | --worker`."""
    from . import runs
    from .runs import queue
    what = a.run or "list"
    if a.worker:
        return queue.work(a.runs_dir, say=lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True))
    if what in ("cancel", "up", "next"):
        if not a.more:
            return fail(f"give the run to {what}: `studio runs queue {what} RUN` (ids from `studio runs queue`).")
        run_dir = runs.find_run(a.more[0], a.runs_dir)
        if what == "cancel":
            queue.cancel(run_dir, a.runs_dir)
            print(f"Cancelled {run_dir.name}: it stays in the run list as stopped, nothing trained.")
        else:
            print(f"{run_dir.name} is now #{queue.move(run_dir, 'front' if what == 'next' else 'up', a.runs_dir)}.")
        return 0
    if what in ("pause", "resume"):
        queue.set_paused(what == "pause", a.runs_dir)
        print("The queue is paused: the run that trains finishes, the next waits." if what == "pause" else
              "The queue goes on.")
        return 0
    if what == "list":
        return _print_queue(a.runs_dir)
    from .config import RunConfig
    cfg = RunConfig.load(what)
    cfg = cfg.replace(data={"path": data_path(cfg.data.path, Path(what))})
    run_dir, pos = queue.queue_run(cfg, a.runs_dir)
    print(f"Queued {run_dir.name} as #{pos}; it trains when the runs before it have ended "
          f"(`studio runs queue` shows the queue).")
    return 0


def _print_queue(root) -> int:
    from .runs import active_run, queue, run_name
    busy = active_run(root)
    print(f"Training: {busy.name}" if busy else "Training: nothing")
    waiting = queue.queued(root)
    for i, d in enumerate(waiting, 1):
        print(f"#{i:<3} {d.name:<45} {run_name(d)}")
    if not waiting:
        print("The queue is empty.")
    elif queue.is_paused(root):
        print("The queue is paused: `studio runs queue resume` goes on.")
    elif queue.worker_holder(root) is None:
        queue.ensure_worker(root)  # a worker gone with its machine's restart: the queue must go on
    return 0


def cmd_sweep(a) -> int:
    """`studio sweep CFG --set KEY=v1,v2[,..] [--set KEY2=...]`: a grid queued as runs, waited for, its table
    printed; `--trials N` with ranges (KEY=LOW:HIGH) searches with Optuna; `--list`, `--show ID [--longer STEPS]`."""
    from .runs import RunError, sweep, tune
    try:
        if a.list:
            for s in sweep.sweeps(a.runs_dir):
                print(f"{s['id']}  {s['base']:<24} {len(s['runs'])} runs  {', '.join(s['keys'])}")
            return 0
        if a.show:
            s = sweep.find_sweep(a.show, a.runs_dir)
            if a.longer:
                run_dir, pos = sweep.train_longer(s, a.longer, a.runs_dir)
                print(f"Queued {run_dir.name} (#{pos}): the winner's settings, {a.longer} steps.")
                return 0
            return _print_sweep(s)
        if not a.config:
            return fail("give a run config: studio sweep CFG --set train.learning_rate=1e-4,2e-4 (see --help).")
        from .config import RunConfig
        cfg = RunConfig.load(a.config)
        cfg = cfg.replace(data={"path": data_path(cfg.data.path, Path(a.config))})
        specs = dict(_key_value(s) for s in a.set)
        if a.trials:
            missing = tune.optuna_missing()
            if missing:
                return fail(missing)
            sid, _ = tune.search(cfg, tune.parse_ranges(specs), a.trials, a.runs_dir,
                                 say=lambda s: print(s, flush=True))
            return _print_sweep(sweep.find_sweep(sid, a.runs_dir))
        sid, made = sweep.queue_sweep(cfg, sweep.parse_axes(specs), a.runs_dir)
        print(f"Sweep {sid}: queued {len(made)} runs; they train one after another.", flush=True)
        if a.no_wait:
            print(f"Follow it with `studio sweep --show {sid}`.")
            return 0
        return _wait_sweep(sid, a.runs_dir)
    except (RunError, ValueError) as e:
        return fail(str(e))


def _key_value(text: str) -> tuple[str, str]:
    key, eq, values = text.partition("=")
    if not eq or not key.strip() or not values.strip():
        raise ValueError(f"--set {text[:60]}: write KEY=VALUES, e.g. --set train.learning_rate=1e-4,2e-4,5e-4.")
    return key.strip(), values.strip()


def _wait_sweep(sid: str, root) -> int:
    from .runs import sweep
    from .runs.process import status
    seen: dict[str, str] = {}
    try:
        while True:
            s = sweep.find_sweep(sid, root)
            for d in s["runs"]:
                state = status(d).get("state", "?")
                if seen.get(d.name) != state:
                    seen[d.name] = state
                    print(f"{time.strftime('%H:%M:%S')} {d.name}: {state}", flush=True)
            if not sweep.active(s):
                return _print_sweep(s)
            time.sleep(2)
    except KeyboardInterrupt:
        print(f"\nStopped waiting; the sweep goes on in the queue. `studio sweep --show {sid}` prints its table, "
              f"`studio runs queue` shows what waits.")
        return 130


def _print_sweep(s: dict) -> int:
    from .runs import sweep
    rows = sweep.table(s)
    cols = [*s["keys"], "state", "best eval loss", "check score", "tokens/s", "wall s"]
    width = max(len(r["name"]) for r in rows) + 2 if rows else 10
    print(f"Sweep {s['id']} ({s['base']}), best first:")
    print("  " + "run".ljust(width) + "".join(c.split(".")[-1][:15].ljust(16) for c in cols))
    for r in rows:
        cells = [sweep.fmt(r[c]) if isinstance(r[c], float) and c in s["keys"] else
                 (f"{r[c]:.4g}" if isinstance(r[c], float) else ("-" if r[c] is None else str(r[c]))) for c in cols]
        print(("* " if r["winner"] else "  ") + r["name"].ljust(width) + "".join(c[:15].ljust(16) for c in cells))
    best = [r for r in rows if r["winner"]]
    if best:
        print(f"* the winner: {best[0]['name']} ({best[0]['id']}). Train it longer: "
              f"studio sweep --show {s['id']} --longer STEPS")
    return 0


def add_run_commands(sub) -> None:
    s = sub.add_parser("runs", help="list, inspect, stop, resume, delete, compare or queue runs")
    s.add_argument("action", choices=["list", "status", "stop", "resume", "delete", "compare", "queue"])
    s.add_argument("run", nargs="?", default=None, help="run id or folder; with queue: list (default), a config to "
                                                        "queue, cancel|up|next RUN, pause or resume")
    s.add_argument("more", nargs="*", default=[], help="with compare: more runs; with queue cancel|up|next: the run")
    s.add_argument("--runs-dir", default=None)
    s.add_argument("--wait", type=float, default=0.0, help="with stop: seconds to wait for the trainer to end")
    s.add_argument("--queue", action="store_true", help="with stop: pause the queue too (the next run waits)")
    s.add_argument("--worker", action="store_true", help="with queue: run the queue's worker in this process (the "
                                                         "studio starts one itself when runs wait)")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("sweep", help="queue a grid of settings (or an Optuna search with --trials) and rank the runs")
    s.add_argument("config", nargs="?", default=None, help="the run config the sweep starts from")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUES",
                   help="a setting and its values, e.g. train.learning_rate=1e-4,2e-4,5e-4 (grid: 2-5 values, at most "
                        "2 settings, 12 runs) or, with --trials, a range train.learning_rate=1e-5:1e-3")
    s.add_argument("--trials", type=int, default=0, help="search with Optuna over the --set ranges, this many trials")
    s.add_argument("--no-wait", action="store_true", help="queue the grid and return (the queue trains it)")
    s.add_argument("--list", action="store_true", help="list the sweeps")
    s.add_argument("--show", default=None, metavar="ID", help="print a sweep's table")
    s.add_argument("--longer", type=int, default=0, metavar="STEPS", help="with --show: queue the winner again with "
                                                                           "this many steps")
    s.add_argument("--runs-dir", default=None)
    s.set_defaults(fn=cmd_sweep)
