#!/usr/bin/env python
"""Start QLoRA Studio in the browser: `python launch.py` then open http://127.0.0.1:7860.

The same as `studio ui`. Binding anything but 127.0.0.1 needs --auth user:password.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="QLoRA Studio web UI")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password, required when --host is not loopback")
    p.add_argument("--runs-dir", default=None, help="where run folders live (default $STUDIO_HOME/runs)")
    a = p.parse_args(argv)
    from studio.ui.app import main as ui_main  # after parsing: --help answers without importing gradio
    return ui_main(host=a.host, port=a.port, auth=a.auth, runs_dir=a.runs_dir) or 0


if __name__ == "__main__":
    sys.exit(main())
