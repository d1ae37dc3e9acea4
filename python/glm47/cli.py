"""The `glm47` command: serve, make-tiny-model, worker, router, bench, bfcl."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _serve(argv: list[str]) -> int:
    from glm47.serve import main as serve_main

    return serve_main(argv)


def _make_tiny_model(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="glm47 make-tiny-model",
        description="Write a complete model directory of the GLM-4.7-Flash architecture "
        "with tiny dimensions and random weights.",
    )
    parser.add_argument("dir", help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of weights and tokenizer")
    args = parser.parse_args(argv)
    from glm47.worker.model.tiny import make_tiny_model

    make_tiny_model(args.dir, seed=args.seed)
    print(f"wrote tiny model to {args.dir}")
    return 0


def _worker(argv: list[str]) -> int:
    from glm47.worker.__main__ import main as worker_main

    return worker_main(argv)


def _router(argv: list[str]) -> int:
    from glm47.router import main as router_main

    router_main(argv)
    return 0


def _bench(argv: list[str]) -> int:
    from glm47.bench.cli import main as bench_main

    return bench_main(argv)


def _bfcl(argv: list[str]) -> int:
    from glm47.bench.bfcl import main as bfcl_main

    return bfcl_main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "serve": (_serve, "start a worker and the router together (the usual way to run glm47)"),
    "make-tiny-model": (_make_tiny_model, "write a tiny random model directory"),
    "worker": (_worker, "run only the GPU worker (listens on --listen)"),
    "router": (_router, "run only the HTTP router (connects to --worker-addr)"),
    "bench": (_bench, "benchmark an OpenAI-compatible endpoint"),
    "bfcl": (
        _bfcl,
        "function-calling accuracy (BFCL single-turn) of an OpenAI-compatible endpoint",
    ),
}


def _usage() -> str:
    lines = ["usage: glm47 COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\nRun `glm47 COMMAND --help` for the flags of a command.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"glm47: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return command[0](args[1:])


if __name__ == "__main__":
    sys.exit(main())
