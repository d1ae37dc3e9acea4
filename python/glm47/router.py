"""The `glm47-router` command: the Rust HTTP router, run from Python.

`glm47-router --worker-addr tcp://127.0.0.1:5557 --model-dir DIR` and
`python -m glm47.router ...` both end up here; see `--help` for every flag.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> None:
    """Runs the router with `argv` (default: this process's command line) until SIGINT or SIGTERM.

    An invalid command line exits with status 2 (after printing the usage), a failure to start or
    serve with status 1.
    """
    from glm47 import _native

    # The router handles SIGINT itself (graceful shutdown); Python must not also turn it into a
    # KeyboardInterrupt when the call returns.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _native.router_main(["glm47-router", *(sys.argv[1:] if argv is None else argv)])
    except RuntimeError as e:
        print(f"glm47-router: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
