"""The `glm47-router` command: the Rust HTTP router, run from Python.

`glm47-router --worker-addr tcp://127.0.0.1:5557 --model-dir DIR` and
`python -m glm47.router ...` both end up here; see `--help` for every flag.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Runs the router with this process's command line until SIGINT or SIGTERM."""
    from glm47 import _native

    _native.router_main(sys.argv)


if __name__ == "__main__":
    main()
