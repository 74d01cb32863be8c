"""The web UI: a leaf over the core. Delete this package and the CLI, the trainer and their tests still work.

Only modules in this package import gradio. Each tab lives in its own module with a `build()` that returns
its components as a small dataclass, plain handler functions (tested without a browser), and a `wire()`
that attaches the events; `app.py` builds the tabs and wires them together.
"""
