"""The web UI: a leaf over the core. Delete this package and the CLI, the trainer and their tests still work.

Only modules in this package import gradio. Each tab is a package (`chat`, `data`, `train`, `export`) of the same
shape: `layout` (a `build()` that returns the tab's components as a small dataclass), handlers (plain functions,
tested without a browser) and `wiring` (one function per feature, and a `wire()` that calls them). `app.py` builds
the tabs and wires them together; `guard`, `common` (widgets), `charts` and `settings` (the Train tab's form) are
shared modules.
"""
