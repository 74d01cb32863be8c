#!/usr/bin/env python
"""Start QLoRA Studio in the browser: `python launch.py` then open http://127.0.0.1:7860.

The same as `studio ui` (its options: `python launch.py --help`). Binding anything but 127.0.0.1 needs a
password: --auth-file FILE (one line user:password), STUDIO_AUTH=user:password, or --auth user:password
(visible in the process list). Behind a reverse proxy: FORWARDED_ALLOW_IPS=<the proxy's address> (else no
X-Forwarded-For is believed) and --allowed-hosts https://<the proxy's name> (else its pages' Origin is refused).
Uploads are capped at the data size limit (studio.data.limits.MAX_DATA_BYTES, 500 MB).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from studio.cli import main as cli_main  # one parser for `studio ui` and this file
    return cli_main(["ui", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
