#!/usr/bin/env python
"""Start QLoRA Studio in the browser: `python launch.py` then open http://127.0.0.1:7860.

The same as `studio ui`. Binding anything but 127.0.0.1 needs a password: --auth-file FILE (one line
user:password), STUDIO_AUTH=user:password, or --auth user:password (visible in the process list).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="QLoRA Studio web UI")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs a password)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password, required when --host is not loopback; other users "
                   "can read it in the process list, so prefer --auth-file or STUDIO_AUTH")
    p.add_argument("--auth-file", default=None, metavar="PATH",
                   help="a file (chmod 600) holding one line user:password; else $STUDIO_AUTH=user:password")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="comma-separated extra host names the server answers to (default $STUDIO_ALLOWED_HOSTS; "
                        "localhost, 127.0.0.1, [::1] and --host always)")
    p.add_argument("--runs-dir", default=None, help="where run folders live (default $STUDIO_HOME/runs)")
    a = p.parse_args(argv)
    from studio.ui.app import main as ui_main  # after parsing: --help answers without importing gradio
    return ui_main(host=a.host, port=a.port, auth=a.auth, runs_dir=a.runs_dir, auth_file=a.auth_file,
                   allowed_hosts=a.allowed_hosts) or 0


if __name__ == "__main__":
    sys.exit(main())
