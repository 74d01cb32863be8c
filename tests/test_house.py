"""The house (DESIGN.md): every studio module imports on its own in a fresh interpreter, the package has no import
cycle (package re-exports counted), the leaves import nothing of the studio, only studio.ui imports gradio, and
the core imports no heavy library until it needs one."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PKG = ROOT / "studio"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, mod: str, known: set[str]) -> set[str]:
    """The studio modules a module imports, at the top or inside a function alike (a lazy import is still one)."""
    here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            # `from package import submodule` depends on the submodule; `from package import name`, on the package
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod:
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    # A package's __init__ that re-exports its children depends on them: that edge stays (house_check drops it, which
    # hides a cycle that runs through a re-export: A -> package -> child -> A)
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, comps, n = {}, {}, set(), [], [], 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = n
        n += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = n
                    n += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def test_no_import_cycle_even_through_package_reexports():
    graph = _graph()
    assert _cycles(graph) == []
    # and the check itself finds one when there is one
    assert _cycles({**graph, "studio.env.io": graph["studio.env.io"] | {"studio.runs.layout"}})


def test_the_leaves_import_nothing_of_the_studio_and_only_the_ui_imports_gradio():
    graph = _graph()
    checks = [m for m in graph if m.startswith("studio.checks.")]  # the config validates with them
    assert checks
    env = [m for m in graph if m.startswith("studio.env.")]  # paths, ranks, devices, io, procs, safeyaml
    assert {"studio.env.paths", "studio.env.io", "studio.env.safeyaml"} <= set(env)
    for leaf in (*env, "studio.stages", "studio.train.speed", *checks):
        assert graph[leaf] - {"studio.env", "studio.train", "studio.checks", *checks, *env} == set(), leaf
    for mod, path in _modules().items():
        if not mod.startswith("studio.ui"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
                {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not any(n == "gradio" or n.startswith("gradio.") for n in names), mod


_EACH_ALONE = r"""
import os, sys, traceback
import numpy, pandas, yaml, psutil  # third-party libraries load once; every studio module is new to each child
if {ui!r}:
    import gradio
failed = []
for mod in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(mod)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(mod)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each studio module imported first, in a process where no other studio module was loaded: a cycle that only
    shows from one entry point fails here, whichever module it is."""
    mods = [m for m in _modules() if not m.endswith("__main__")]
    if not hasattr(sys.modules["os"], "fork"):  # Windows: one interpreter per module (slower, same check)
        for m in mods:
            res = subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True, text=True, cwd=ROOT)
            assert res.returncode == 0, (m, res.stderr[-2000:])
        return
    res = subprocess.run([sys.executable, "-c", _EACH_ALONE.format(ui=True), *mods], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0 and "FAILED []" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


def test_the_core_imports_no_heavy_library():
    """studio --help, the config, the registry, the run folder and the memory estimate load without torch,
    transformers, peft, trl or gradio (DESIGN rule 8)."""
    code = ("import sys, studio.cli, studio.config, studio.stages, studio.runs, studio.memory, studio.env.devices, "
            "studio.checks, studio.evals.rows, studio.evals.preflight, studio.evals.evaluate; "
            "studio.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'gradio', 'bitsandbytes') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]
