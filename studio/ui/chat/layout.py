"""The Chat tab's components: `build()` lays them out and returns them as a ChatTab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio import chat

from ..common import field_input
from .handlers import BASE, BASE_LABEL
from .heldout import COLUMN_WIDTHS, COMPARE_COLUMNS
from .votes import PANE_A, PANE_B, TRAIN_HELP, VOTES, train_readiness


def default_rows() -> int:
    """Held-out rows compared by default: 8 on a GPU; 3 on a CPU, where the tiny demo's 3 rows took 124 s."""
    from studio.env.devices import gpus_present
    return 8 if gpus_present() else 3


LEAD = ("Ask once, get two answers: **Base** is the model before training (the adapter switched off), **Tuned** has "
        "your run's adapter on. Same prompt, same settings, same random seed. To compare two adapters instead, pick "
        "another checkpoint or run above the Base pane. With **Blind A/B** on, Base and Tuned answer as A and B in a "
        "random order; your votes are saved with the run and can train it further (DPO).")
BLIND_NOTE = ("A and B are Base and Tuned in a random order for each prompt. Switch Blind A/B off to change what is "
              "compared.")
COMPARE_NOTE = ("Runs the run's held-out rows (never trained on) through Base and Tuned and measures the loss of "
                "the reference answers under each. Cancel stops it and keeps the rows answered so far. Where the "
                "reference answer is short (at most "
                f"{chat.SHORT_REFERENCE_WORDS} words), each generated answer is also scored against it, as SQuAD does "
                "after lower-casing and dropping punctuation, articles and extra spaces: **EM** (exact match, 1 or 0) "
                "and **F1** (word overlap, 0–1); **closer** names the side with the higher F1. Longer references are "
                "not scored word for word.")


@dataclass
class ChatTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    against: gr.Dropdown  # above the Base pane: BASE or "RUN_DIR::ADAPTER" (see studio.ui.chat.handlers)
    refresh: gr.Button
    status: gr.Markdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number
    base: gr.Chatbot  # the Base pane (left)
    tuned: gr.Chatbot  # the Tuned pane (right)
    prompt: gr.Textbox
    send: gr.Button
    clear: gr.Button
    n: gr.Slider
    compare: gr.Button
    cancel: gr.Button  # shown while a comparison runs
    stats: gr.Markdown
    table: gr.Dataframe
    csv: gr.File
    engine: gr.State
    # the left pane "Open in Chat" chose for a run, {"run", "against"}, kept on the server; a pick of the user's ends it
    pair: gr.State
    # blind A/B
    blind: gr.Checkbox
    open_panes: gr.Column  # the Base and Tuned pickers above their panes, hidden in blind mode
    blind_panes: gr.Column  # pane_a + pane_b, shown in blind mode
    pane_a: gr.Chatbot
    pane_b: gr.Chatbot
    vote_box: gr.Column
    vote_buttons: list  # [A is better, B is better, Tie, Both bad] (gr.Button), in VOTES order
    edit: gr.Textbox
    reveal: gr.Markdown
    rates: gr.Markdown
    train_votes: gr.Button
    train_ratings: gr.Button
    train_votes_status: gr.Markdown
    poll: gr.Timer  # re-reads the run's vote and rating counts: another browser may vote on the same run
    feedback_seen: gr.State  # the vote and rating files' sizes and times the page shows, so idle ticks send nothing
    pending: gr.State  # the blind pair on show: prompt, answers, which model is A (never sent to the page)
    shown: gr.State  # what the open panes show (shown_info), for 👍/👎
    # blind votes on the held-out rows
    hv_start: gr.Button
    hv_box: gr.Column
    hv_prompt: gr.Textbox
    hv_a: gr.Textbox
    hv_b: gr.Textbox
    hv_buttons: list  # in VOTES order
    hv_note: gr.Markdown
    hv: gr.State  # the compared rows, their A/B order and the row on show (never sent to the page)
    stop: gr.State  # the running comparison's threading.Event, which Cancel sets

    def generation(self) -> list:
        """The generation settings' inputs, in settings_from's order."""
        return [self.system_prompt, self.temperature, self.top_p, self.max_new_tokens, self.seed]


def _vote_row(prefix: str, interactive: bool = False) -> list[gr.Button]:
    with gr.Row():
        return [gr.Button(text, size="sm", interactive=interactive, elem_id=f"{prefix}-{kind.replace('_', '-')}",
                          variant="secondary") for kind, text in VOTES]


def _top() -> dict:
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", info="Runs with a saved adapter or checkpoint, by name.",
                          elem_id="chat-run", scale=4)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90)
        blind = gr.Checkbox(False, label="Blind A/B", elem_id="chat-blind", scale=3,
                            info="Hide which model answers where: Base and Tuned answer as A and B, in a random "
                                 "order for each prompt. Vote for the better answer; then you see which was which.")
    return dict(run=run, refresh=refresh, blind=blind)


def _generation() -> dict:
    # every label, range, step and help text comes from studio.config.GenSettings
    with gr.Accordion("Generation settings (used by both panes)", open=False), gr.Row():
        system_prompt = field_input("gen", "system_prompt", lines=2, scale=3)
        with gr.Column(scale=2):
            temperature = field_input("gen", "temperature")
            top_p = field_input("gen", "top_p")
        with gr.Column(scale=2):
            max_new_tokens = field_input("gen", "max_new_tokens")
            seed = field_input("gen", "seed")
    return dict(system_prompt=system_prompt, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                seed=seed)


def _panes() -> dict:
    # each pane's picker in the same two-column row shape as the panes, so it sits directly above its own pane
    with gr.Column() as open_panes:
        # a Column each: two dropdowns side by side would be merged into one gap-less form, 8 px off the panes
        with gr.Row(equal_height=True):
            with gr.Column():
                against = gr.Dropdown(choices=[(BASE_LABEL, BASE)], value=BASE, label="Base pane",
                                      elem_id="chat-against",
                                      info="The base model (adapter off), or another adapter of the same base model.")
            with gr.Column():
                checkpoint = gr.Dropdown(choices=[], label="Tuned pane", elem_id="chat-checkpoint",
                                         info="The run's final adapter or an earlier checkpoint (★ = lowest eval "
                                              "loss, chosen first when it is an earlier checkpoint).")
        with gr.Row(equal_height=True):
            base = gr.Chatbot(label="Base (adapter off)", height=380, elem_id="chat-base", elem_classes="studio-pane",
                              placeholder="The Base answers appear here.", feedback_options=("Like", "Dislike"))
            tuned = gr.Chatbot(label="Tuned (adapter on)", height=380, elem_id="chat-tuned",
                               elem_classes="studio-pane", placeholder="The Tuned answers appear here.",
                               feedback_options=("Like", "Dislike"))
    # neutral ids, titles and placeholders: nothing here may say which side is the adapter before the vote
    with gr.Column(visible=False) as blind_panes:
        gr.Markdown(BLIND_NOTE)
        with gr.Row(equal_height=True):
            pane_a = gr.Chatbot(label=PANE_A, height=380, elem_id="chat-pane-a", elem_classes="studio-pane",
                                placeholder="Answer A appears here.", feedback_options=("Like", "Dislike"))
            pane_b = gr.Chatbot(label=PANE_B, height=380, elem_id="chat-pane-b", elem_classes="studio-pane",
                                placeholder="Answer B appears here.", feedback_options=("Like", "Dislike"))
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something, e.g. “Why is the sky blue?” — Enter sends", show_label=False,
                            scale=6, elem_id="chat-prompt", lines=1, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0, min_width=80)
    return dict(open_panes=open_panes, against=against, checkpoint=checkpoint, base=base, tuned=tuned,
                blind_panes=blind_panes, pane_a=pane_a, pane_b=pane_b, prompt=prompt, send=send, clear=clear)


def _vote_box() -> dict:
    with gr.Column(visible=False, elem_id="chat-vote") as vote_box:
        vote_buttons = _vote_row("chat-vote")
        edit = gr.Textbox(label="Improve the better answer before saving (optional)", lines=2, elem_id="chat-vote-edit",
                          info="Type the answer as it should have been: it is saved as the better answer of the pair.")
        reveal = gr.Markdown(elem_id="chat-vote-reveal")
    return dict(vote_box=vote_box, vote_buttons=vote_buttons, edit=edit, reveal=reveal)


def _heldout() -> dict:
    with gr.Accordion("Compare on held-out prompts", open=False, elem_id="chat-compare"):
        gr.Markdown(COMPARE_NOTE)
        with gr.Row():
            n = gr.Slider(1, 32, value=default_rows(), step=1, label="Rows to compare", scale=3,
                          elem_id="chat-compare-n", info="Each row is answered twice; on a CPU a row can take a "
                                                         "minute, so 3 rows is the default there, 8 on a GPU.")
            compare = gr.Button("Compare", variant="secondary", scale=1, elem_id="chat-compare-button")
            cancel = gr.Button("Cancel", variant="stop", scale=1, visible=False, elem_id="chat-compare-cancel")
            hv_start = gr.Button("Vote on these rows blind", interactive=False, scale=1, elem_id="chat-hv-start")
        with gr.Column(visible=False, elem_id="chat-hv") as hv_box:
            gr.Markdown("Each row's two answers as A and B, in a random order for each row; the table comes back "
                        "after the last row.")
            hv_prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, max_lines=8, elem_id="chat-hv-prompt")
            with gr.Row(equal_height=True):
                hv_a = gr.Textbox(label=PANE_A, interactive=False, lines=4, max_lines=14, elem_id="chat-hv-a")
                hv_b = gr.Textbox(label=PANE_B, interactive=False, lines=4, max_lines=14, elem_id="chat-hv-b")
            hv_buttons = _vote_row("chat-hv-vote")
        hv_note = gr.Markdown(elem_id="chat-hv-note")
        stats = gr.Markdown()
        table = gr.Dataframe(pd.DataFrame(columns=COMPARE_COLUMNS), interactive=False, wrap=True, max_height=480,
                             column_widths=COLUMN_WIDTHS,
                             elem_id="chat-compare-table")
        csv = gr.File(label="Download as CSV", interactive=False, visible=False)
    return dict(n=n, compare=compare, cancel=cancel, hv_start=hv_start, hv_box=hv_box, hv_prompt=hv_prompt,
                hv_a=hv_a, hv_b=hv_b, hv_buttons=hv_buttons, hv_note=hv_note, stats=stats, table=table, csv=csv)


def _train_on_feedback() -> dict:
    (votes_text, _), (ratings_text, _) = train_readiness(None)
    with gr.Row(equal_height=True):
        rates = gr.Markdown(elem_id="chat-vote-rates")
        with gr.Column(scale=0, min_width=300):
            # disabled until the run has enough (wiring.feedback_view); the text says how many of how many
            train_votes = gr.Button(votes_text, size="sm", elem_id="chat-train-votes", interactive=False)
            train_ratings = gr.Button(ratings_text, size="sm", elem_id="chat-train-ratings", interactive=False)
            gr.Markdown(TRAIN_HELP, elem_classes="studio-help", elem_id="chat-train-help")
            train_votes_status = gr.Markdown(elem_id="chat-train-votes-status")
    return dict(rates=rates, train_votes=train_votes, train_ratings=train_ratings,
                train_votes_status=train_votes_status, poll=gr.Timer(5))


def build() -> ChatTab:
    gr.Markdown(LEAD, elem_classes="studio-lead")
    # in the page's order: each part makes its components where they show
    top = _top()
    generation = _generation()
    panes = _panes()
    votes = _vote_box()
    status = gr.Markdown(elem_id="chat-status")
    heldout = _heldout()
    train = _train_on_feedback()
    return ChatTab(**top, **generation, **panes, **votes, status=status, **heldout, **train,
                   engine=gr.State(None), pair=gr.State(None), pending=gr.State(None), shown=gr.State(None),
                   hv=gr.State(None), stop=gr.State(None), feedback_seen=gr.State(None))
