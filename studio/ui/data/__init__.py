"""Data tab: bring a file (upload or bundled sample), check how it was read, fix the column mapping.

Shows the detected format, rows used/skipped and why, a preview, the problems as a table, the token
lengths under the chosen model's chat template with the cutoff marked, and one training example with
the tokens the loss is computed on highlighted. The checked settings go to the Train tab through
`DataTab.state` (a DataSettings as a dict), never through process-global state.

A file of preference pairs (prompt, chosen, rejected: `studio.data.read_preferences`) is shown as such: pairs
found, skipped and why, ties and both-bad votes counted apart, one pair, and the token lengths of prompt + chosen
and prompt + rejected.
It trains the DPO stage on top of an SFT run, which `DataTab.preference` tells the Train tab (`preference_state`):
DataSettings has no field for it, so `DataTab.state` stays a plain DataSettings dict.

Modules: `layout` (DataTab, build), `view` (what is shown for a file, as plain values), `handlers` (reading and
checking a file, with the tab's caches), `origin` (where the file comes from: a sample, an upload, or after a
reload the data of the run the Train tab attached to), `wiring` (the events), `checks` and `checks_panel` (the
Checks panel: checks edited as a form and as YAML, scored on the file's own answers, "Try it"; its handlers, then
its layout and events).
Siblings import each other by module, never through this package.
"""
