"""`python -m glm47.worker`: load the model, build the engine, serve routers over ZeroMQ."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from functools import partial

import zmq

from glm47.system import SUPERVISED_ENV
from glm47.worker.build import build, check_split, make_runner
from glm47.worker.cli_args import parse_args
from glm47.worker.model.parallel import SINGLE
from glm47.worker.service import EngineFailure, Service, bind
from glm47.worker.tp_worker import (
    Followers,
    StepMirror,
    check_devices,
    exit_now,
    exit_now_with,
    free_port,
    init_rank,
    rank_device,
)

log = logging.getLogger("glm47.worker")

# Young-generation threshold of the cyclic GC while serving: a decode step of hundreds of requests
# allocates thousands of short-lived containers, so the default (700) collects several times a step.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Once the model and engine are built: move every object alive now out of the collector's
    reach (`gc.freeze`: full collections no longer walk the model's modules and tensors) and
    collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGINT/SIGTERM (exit 0) or an engine failure (exit 1)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get(SUPERVISED_ENV) == "1":
        # `glm47 serve` handles the terminal's Ctrl-C (it started this process with SIGINT
        # ignored) and stops it with SIGTERM; while the model loads, that ends it through the
        # clean-up below
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _interrupt)
    followers: Followers | None = None
    mirror: StepMirror | None = None
    tp = SINGLE
    try:
        bound = bind(args.listen)
    except zmq.ZMQError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc)
        return 1
    try:
        size = args.engine.tp
        if size > 1:
            check_devices(args.engine.device, size)
            check_split(args.engine, size)
            port = free_port()
            followers = Followers(
                partial(make_runner, args), size, args.engine.device, port, args.log_level
            )
            followers.watch(exit_now)
            tp = init_rank(0, size, rank_device(args.engine.device, 0), port)
            mirror = StepMirror(tp)
            log.info("tensor parallelism over %d ranks: this process is rank 0", size)
        engine, ready = build(args, tp, mirror)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        log.error("cannot start the worker: %s", exc)
        if followers is not None:
            followers.stop(None, timeout_s=0.0)
        return 1
    except KeyboardInterrupt:  # stopped while loading: the followers must not outlive it
        log.info("stopped while loading")
        if followers is not None:
            followers.stop(None, timeout_s=0.0)
            exit_now_with(0)  # past the group's teardown (see tp_worker)
        return 0
    except BaseException:
        if followers is not None:
            followers.stop(None, timeout_s=0.0)
        raise
    service = Service(engine, ready, bound)
    tune_gc()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: stop.set())
    failed = False
    try:
        service.serve(stop)
    except EngineFailure:
        failed = True
    finally:
        service.close()
        if followers is not None:
            # After a failure a follower may be inside a step that never completes: no message.
            followers.stop(None if failed else mirror, timeout_s=0.0 if failed else 30.0)
    if not failed:
        log.info("worker %s stopped", ready.worker_id)
    if followers is not None:
        exit_now_with(1 if failed else 0)  # past the group's teardown (see tp_worker)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
