"""The trainer, a program of its own (`studio train CONFIG --output RUN`), along torchtune's setup steps:

- recipe: device, data, model, adapter, training arguments, trainer (`build_trainer`);
- sft / preference: the glue that builds each kind of stage's TRL trainer (studio.stages names it);
- lifecycle: one run from start to its final status (`run`): the trainer lock, signals, resume, the summary;
- failure: an exception as a sentence that says what to change;
- callback: the trainer's events into the run folder (metrics.jsonl, status.json), stop requests, the best checkpoint;
- speed: the speed levers, each a named switch.

Nothing is imported here: the config reads the levers' names from `speed` without loading the trainer.
"""
