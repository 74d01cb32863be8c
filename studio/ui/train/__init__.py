"""Train tab: the settings form, Start / Stop / Resume, live progress and charts, the log, earlier runs.

The trainer runs in its own process (`studio train <run>/config.yaml --output <run>`); this tab only
creates the run folder, starts that command, and reads back status.json, metrics.jsonl and train.log
every 2 s (gr.Timer). Which run a browser is watching is per-browser gr.State; reloading the page
re-attaches to the run that is training (or the newest one).

Modules: `layout` (TrainTab, build; the form itself is studio.ui.settings), `handlers` (the run on screen, Start /
Stop / Resume), `curves` (one run's charts), `compare` (earlier runs and their comparison), `wiring` (one function
per feature, and `wire`). Siblings import each other by module, never through this package.
"""
