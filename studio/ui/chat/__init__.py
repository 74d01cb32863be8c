"""Chat tab: one prompt, two panes with the same settings — by default Base (adapter off) on the left and
Tuned (the chosen run's adapter on) on the right; the left pane can instead hold another adapter of the same
base model (another checkpoint, or another run), to compare two adapters with each other.

studio.chat keeps ONE base model in memory; Base is that model inside `disable_adapter()`, so the panes
differ only by the LoRA update; a second adapter is only a second set of LoRA weights on the same base.
The browser's engine handles live in gr.State. While a run is training, generation uses one thread so the
trainer keeps its pace.

Blind A/B: two more panes, titled only "A" and "B", take the same two sides in an order drawn for each prompt; the
order lives in a gr.State on the server, so nothing on the page says which is which until the vote. Votes go to
the right-hand (tuned) run's preferences.jsonl (studio.runs.judgements), the preference data a DPO run starts
from; the same blind voting steps through the held-out comparison's rows, and 👍/👎 on any answer goes to
feedback.jsonl.

Modules: `layout` (ChatTab, build), `handlers` (the side-by-side chat), `votes` (blind A/B, 👍/👎, training on
them), `heldout` (the held-out comparison and its blind votes), `wiring` (one function per feature, and `wire`).
Siblings import each other by module, never through this package.
"""
