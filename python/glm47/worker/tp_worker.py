"""Tensor-parallel ranks of one worker (`--tp N`): starting them, and what the ranks say to each
other.

Rank 0 is the worker process the router talks to: it runs the engine (scheduler, sampler,
grammars) and its own part of the model. It starts ranks 1..N-1 as child processes, each on its
own GPU (`cuda:i` counted from the worker's device; the CPU with gloo when the worker runs there).
Every rank builds the same runner, in step. Then, before each forward pass, rank 0 sends the
other ranks the step's layout (`StepMirror.announce`: the sequences' tokens, positions and page
tables over a gloo group) and, when some were fed from the last step's samples (which exist only
on rank 0's device), its input token ids (a broadcast over the device group); each follower lays out the same
inputs, takes the ids and runs the same forward pass, whose all-reduces join rank 0's. The
followers sample nothing: rank 0 holds the sums, so its logits are the whole model's. With MTP,
rank 0 also announces each drafting round (`announce_drafts`: the sequences and their rows); every
rank runs the drafter over its own copy of the last step's hidden states, which the all-reduces
made equal on every rank, so each computes the same greedy drafts without being sent them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, NoReturn

import torch

from glm47.worker.batch import DraftInput, ScheduledBatch, ScheduledSeq
from glm47.worker.model.parallel import TensorParallel
from glm47.worker.step_inputs import StepInputs

log = logging.getLogger(__name__)

# How long a device collective may wait for the other ranks (their start-up included: each loads
# its part of the checkpoint and captures its graphs).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# The host group's: a follower waits there for rank 0's next step for as long as the server idles.
# (A rank that dies closes its connections, which ends the others' waits at once.)
HOST_WAIT_TIMEOUT = timedelta(days=365)

# A step's layout as the followers need it: per sequence (rid, token_ids, start_pos, pages,
# sample, draft_ids), where pages is the whole page list, or (when the sequence was in the last
# announced step with the same list) a tuple of the pages appended since.
SeqLayout = tuple[str, list[int], int, "list[int] | tuple[int, ...]", bool, list[int]]


def rank_device(device: str, rank: int) -> str:
    """Rank `rank`'s device: the CPU for every rank, else the GPU `rank` places after the worker's
    (`cuda` is `cuda:0`)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return device
    return f"cuda:{(dev.index or 0) + rank}"


def check_devices(device: str, size: int) -> None:
    """Raises ValueError when the worker's device leaves fewer than `size` GPUs for the ranks."""
    dev = torch.device(device)
    if dev.type != "cuda" or size == 1:
        return
    have = torch.cuda.device_count()
    if (dev.index or 0) + size > have:
        raise ValueError(
            f"--tp {size} from {device} needs GPUs {dev.index or 0}..{(dev.index or 0) + size - 1};"
            f" {have} visible"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_rank(
    rank: int, size: int, device: str, port: int, backend: str | None = None
) -> TensorParallel:
    """Join the group (NCCL on GPUs, gloo on the CPU; `backend` overrides: gloo on GPUs stages
    the device collectives through host memory) and make a gloo group for host messages."""
    import torch.distributed as dist

    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    backend = backend or ("nccl" if on_gpu else "gloo")
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    host = dist.new_group(backend="gloo", timeout=HOST_WAIT_TIMEOUT)
    staged = on_gpu and backend == "gloo"
    return TensorParallel(rank, size, dist.group.WORLD, host, staged)


class _PageLists:
    """Rank 0's record of the page lists the followers hold, so that a step sends only the pages
    a running sequence gained (a running request's list only grows, by appending; the scheduler
    replaces the list when the request leaves the running batch)."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[list[int], int]] = {}  # rid -> (list, pages sent)

    def layout(self, batch: ScheduledBatch) -> list[SeqLayout]:
        """The step's layout; the record keeps the step's sequences only."""
        previous, self._sent = self._sent, {}
        return [
            (s.rid, s.token_ids, s.start_pos, self.encode(s.rid, s.page_ids, previous), s.sample,
             s.draft_ids)
            for s in batch.seqs
        ]  # fmt: skip

    def encode(
        self, rid: str, pages: list[int], known: dict[str, tuple[list[int], int]] | None = None
    ) -> list[int] | tuple[int, ...]:
        """`pages` whole, or as the tuple of pages appended to the list the followers hold."""
        held = (self._sent if known is None else known).get(rid)
        self._sent[rid] = (pages, len(pages))
        if held is not None and held[0] is pages and len(pages) >= held[1]:
            return tuple(pages[held[1] :])
        return pages


class _FollowerPages:
    """A follower's page lists, kept from step to step and extended in place (its runner's page
    tables then copy only the new pages, as rank 0's do)."""

    def __init__(self) -> None:
        self._lists: dict[str, list[int]] = {}

    def batch(self, layout: list[SeqLayout]) -> ScheduledBatch:
        previous, self._lists = self._lists, {}
        seqs = [
            ScheduledSeq(rid, ids, start, self.decode(rid, pages, previous), sample,
                         draft_ids=drafts)
            for rid, ids, start, pages, sample, drafts in layout
        ]  # fmt: skip
        return ScheduledBatch(seqs)

    def decode(
        self,
        rid: str,
        pages: list[int] | tuple[int, ...],
        known: dict[str, list[int]] | None = None,
    ) -> list[int]:
        """The list `_PageLists.encode` describes, kept for the next step."""
        if isinstance(pages, tuple):
            held = (self._lists if known is None else known)[rid]
            held.extend(pages)
        else:
            held = pages
        self._lists[rid] = held
        return held


class StepMirror:
    """Rank 0's side: announces each forward pass to the other ranks (`ModelRunner.mirror`)."""

    def __init__(self, tp: TensorParallel) -> None:
        self.tp = tp
        self._pages = _PageLists()

    def announce(self, inputs: StepInputs) -> None:
        import torch.distributed as dist

        if inputs.batch is None:
            raise ValueError("a forward pass under tensor parallelism needs its batch")
        layout = self._pages.layout(inputs.batch)
        fed = any(s.fed for s in inputs.batch.seqs)  # ids only on this device: sent after
        dist.broadcast_object_list([("step", (layout, fed))], src=0, group=self.tp.host_group)
        if fed:
            self.tp.broadcast(inputs.input_ids)

    def announce_drafts(self, items: list[DraftInput]) -> None:
        """A drafting round: its sequences, their page lists as the steps send them."""
        import torch.distributed as dist

        body = [(replace(it, page_ids=[]), self._pages.encode(it.rid, it.page_ids)) for it in items]
        dist.broadcast_object_list([("draft", body)], src=0, group=self.tp.host_group)

    def stop(self) -> None:
        """Tells the other ranks to leave their loop."""
        import torch.distributed as dist

        dist.broadcast_object_list([None], src=0, group=self.tp.host_group)


@torch.inference_mode()
def follow(runner: Any, tp: TensorParallel) -> int:
    """A follower's loop: run each forward pass rank 0 announces, until it says stop. Returns the
    passes run."""
    import torch.distributed as dist

    steps = 0
    pages = _FollowerPages()
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=tp.host_group)
        if box[0] is None:
            return steps
        kind, body = box[0]
        if kind == "draft":
            items = [replace(it, page_ids=pages.decode(it.rid, p)) for it, p in body]
            runner.propose_drafts(items)
            continue
        layout, fed = body
        inputs = runner.prepare(pages.batch(layout))
        if fed:
            tp.broadcast(inputs.input_ids)
        runner.follow(inputs)
        steps += 1


def _follower_main(
    build: Callable[[TensorParallel], Any],
    rank: int,
    size: int,
    device: str,
    port: int,
    log_level: str,
    parent: int,
) -> None:
    """A follower process: join the group, build the runner (as rank 0 does), follow. It ignores
    SIGINT (a terminal's Ctrl-C reaches the whole process group; rank 0 decides): it stops when
    rank 0 says so, is terminated by it, or finds it gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [tp{rank}]: %(message)s",
    )
    _exit_with_parent(parent)
    tp = init_rank(rank, size, device, port)
    follow_and_exit(build(tp), tp)


def follow_and_exit(runner: Any, tp: TensorParallel) -> None:
    """`follow`, then end the process without tearing the group down: rank 0 may be gone
    already, and gloo aborts a process when a peer's connections close under its teardown."""
    steps = follow(runner, tp)
    log.info("tensor-parallel rank %d stopped after %d forward passes", tp.rank, steps)
    exit_now_with(0)


def _exit_with_parent(parent: int) -> None:
    """End this process when rank 0's process (`parent`) is gone (killed, say, where it could not
    say stop): a follower inside a device collective would otherwise wait for it until the
    timeout."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=run, name="glm47-tp-parent", daemon=True).start()


class Followers:
    """Ranks 1..size-1 as child processes (spawned: CUDA needs fresh processes)."""

    def __init__(
        self,
        build: Callable[[TensorParallel], Any],
        size: int,
        device: str,
        port: int,
        log_level: str = "info",
    ) -> None:
        """`build(tp)` makes a rank's runner; it must pickle (a module-level function, or a
        partial of one over plain data)."""
        ctx = multiprocessing.get_context("spawn")
        self.procs = [
            ctx.Process(
                target=_follower_main,
                args=(build, rank, size, rank_device(device, rank), port, log_level, os.getpid()),
                name=f"glm47-tp{rank}",
                daemon=True,
            )
            for rank in range(1, size)
        ]
        for proc in self.procs:
            proc.start()
        self._stopping = threading.Event()

    def watch(self, on_exit: Callable[[str], None]) -> None:
        """Calls `on_exit(reason)` from a thread if a follower exits before `stop`: rank 0 would
        otherwise wait for it in its next collective forever."""

        def run() -> None:
            while not self._stopping.wait(1.0):
                for proc in self.procs:
                    if not proc.is_alive() and not self._stopping.is_set():
                        on_exit(f"tensor-parallel rank {proc.name} exited ({proc.exitcode})")
                        return

        threading.Thread(target=run, name="glm47-tp-watch", daemon=True).start()

    def stop(self, mirror: StepMirror | None, timeout_s: float = 30.0) -> None:
        """Ask the followers to leave (with `mirror`, while the group still works), then reap
        them: those not gone within `timeout_s` are killed."""
        self._stopping.set()
        if mirror is not None and all(p.is_alive() for p in self.procs):
            try:
                mirror.stop()
            except RuntimeError as err:
                log.warning("could not tell the tensor-parallel ranks to stop: %s", err)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()


def exit_now(reason: str) -> None:
    """The watch's answer to a lost rank: say so and end the worker (the router sees it go)."""
    log.error("%s: the worker cannot go on without it; exiting", reason)
    exit_now_with(1)


def exit_now_with(code: int) -> NoReturn:
    """End a process of a tensor-parallel group with `code`, its logs flushed, without the
    interpreter's teardown: gloo aborts a process whose group is torn down while a peer's
    connections close (every rank ends this way once the others are gone or going)."""
    logging.shutdown()
    os._exit(code)
