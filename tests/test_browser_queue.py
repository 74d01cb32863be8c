"""The queue in real Chromium: while a run trains, "Queue it" queues two more; Stop asks whether the queue stops too
("this run only"); the UI server is killed and started again; the queued runs still start by themselves, in order,
one at a time, and the page shows the queue emptying."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from studio import runs
from studio.runs import events, queue
from tests.helpers import chromium_page, launch_app, stop_process, tab

pytestmark = [pytest.mark.browser, pytest.mark.train]


def _form(page, tiny_model_dir, name: str, steps: int) -> None:
    page.locator("#run-name input, #run-name textarea").first.fill(name)
    for elem, value in (("#train-max-steps", steps), ("#train-max-length", 128), ("#train-learning-rate", 0.01)):
        box = page.locator(f"{elem} input[type=number]").first
        box.fill(str(value))
        box.press("Tab")
    time.sleep(1.0)  # let the change events land before a button reads the form


def _end_everything(runs_dir) -> None:
    """No worker or trainer of this test outlives it: only the recorded processes themselves are signalled."""
    queue.set_paused(True, runs_dir)
    w = queue.worker_holder(runs_dir)
    if w:
        os.kill(w["pid"], signal.SIGTERM)
    for d in runs_dir.glob("*"):
        st = events.read_status(d)
        pid = runs.process.trainer_pid(st) if st.get("state") in events.ACTIVE_STATES else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)


def test_queue_it_while_training_survives_a_server_restart(tiny_model_dir, tmp_path, artifacts):
    from playwright.sync_api import expect

    runs_dir = tmp_path / "runs"
    port, server, log = launch_app(tmp_path, [])
    try:
        with chromium_page(f"http://127.0.0.1:{port}/", artifacts / "queue-last.png") as (page, errors):
            expect(page.locator("#data-summary")).to_contain_text("rows will be used", timeout=90_000)
            tab(page, "2 · Train")
            expect(page.locator("#train-data")).to_contain_text("Training data:", timeout=30_000)
            page.get_by_label("Quick try (CPU, minutes)").check()
            model = page.locator("#model-source input")
            model.fill(str(tiny_model_dir))
            model.press("Enter")
            _form(page, tiny_model_dir, "first", 1000)  # long: it is stopped below
            expect(page.locator("#train-queue")).to_be_hidden()  # nothing trains: Start, not Queue it
            page.locator("#train-start").click()
            expect(page.locator("#train-queue")).to_be_visible(timeout=30_000)  # a run trains: Queue it appears
            for name in ("second", "third"):
                _form(page, tiny_model_dir, name, 2)
                page.locator("#train-queue").click()
                # the queue panel (the click's output, and the 2 s timer's) lists it; the click's notice once lost
                # its update in 1 of 4 runs here while the timer's events ran, so the panel is what is asserted
                expect(page.locator("#queue-table")).to_contain_text(name, timeout=30_000)
            expect(page.locator("#queue-table")).to_contain_text("third", timeout=10_000)
            shown = page.locator("#queue-table").inner_text()
            assert 0 <= shown.index("second") < shown.index("third"), shown  # in the order queued
            page.screenshot(path=str(artifacts / "queue-1.png"), full_page=True)
            # Stop with runs waiting asks whether the queue stops too; "this run only": the next one starts
            page.locator("#train-stop").click()
            expect(page.locator("#stop-ask")).to_be_visible(timeout=10_000)
            expect(page.locator("#stop-ask")).to_contain_text("2 run(s) wait in the queue")
            page.locator("#stop-one").click()
            expect(page.locator("#train-notice")).to_contain_text("Stopping", timeout=10_000)
            # the page follows the queue: once 'first' has ended, it shows the run that trains next
            expect(page.locator("#train-progress")).to_contain_text("second", timeout=120_000)
            assert not errors, errors

        server.send_signal(signal.SIGKILL)  # the server dies; the queue's worker is not its child to die with it
        server.wait(30)
        made = {runs.run_name(d): d for d in runs_dir.iterdir() if runs.is_run(d)}
        assert set(made) == {"first", "second", "third"}
        assert runs.status(made["third"])["state"] == "queued"

        port, server, log = launch_app(tmp_path, [])
        with chromium_page(f"http://127.0.0.1:{port}/", artifacts / "queue-last.png") as (page, errors):
            tab(page, "2 · Train")
            deadline = time.time() + 300
            while any(runs.status(d)["state"] in events.ACTIVE_STATES for d in made.values()):
                assert time.time() < deadline, {n: runs.status(d) for n, d in made.items()}
                time.sleep(1)
            # the page follows: the queue panel empties and the newest run shows finished
            expect(page.locator("#queue-panel")).to_be_hidden(timeout=30_000)
            expect(page.locator("#runs-table")).to_contain_text("third", timeout=30_000)
            page.screenshot(path=str(artifacts / "queue-2.png"), full_page=True)
            assert not errors, errors
        spans = {n: (events.read_status(d)["started"], events.read_status(d)["updated"]) for n, d in made.items()}
        assert [runs.status(made[n])["state"] for n in ("first", "second", "third")] == \
            ["stopped", "finished", "finished"], {n: json.dumps(runs.status(d))[:300] for n, d in made.items()}
        assert spans["first"][1] <= spans["second"][0] and spans["second"][1] <= spans["third"][0], spans
    finally:
        _end_everything(runs_dir)
        stop_process(server)
