"""`glm47 serve`: run the worker (one per data-parallel replica, `--dp N`) and one router as child
processes and supervise them.

The command line is split between them (`serve_flags`): the router's flags go to the router, `--host` and
`--port` to the router, `--model-dir` to all, everything else to the workers (which reject what
they do not know). Without `--model-dir`, the built-in tiny model is written once into the cache
folder and served on the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glm47.serve_flags import ROUTER_FLAGS, ROUTER_SWITCHES, split_args
from glm47.system import SUPERVISED_ENV, raise_open_file_limit

log = logging.getLogger("glm47.serve")

CACHE_DIR_ENV = "GLM47_CACHE_DIR"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass(frozen=True)
class ServePlan:
    """The command lines `glm47 serve` starts (one worker per data-parallel replica, then the
    router), each worker's extra environment, and where the router answers."""

    worker_cmds: list[list[str]]
    worker_envs: list[dict[str, str]]
    router_cmd: list[str]
    health_url: str
    startup_timeout_s: float
    router_grace_s: float = 10.0  # how long the router may take to stop before it is killed


def default_cache_dir() -> Path:
    """Where the built-in tiny model is kept (`$GLM47_CACHE_DIR`, else ~/.cache/glm47)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "glm47")


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Write the built-in tiny model into `cache_dir` once; return its directory."""
    model_dir = cache_dir / "tiny-model"
    if (model_dir / "config.json").exists():
        return model_dir
    from glm47.worker.model.tiny import make_tiny_model

    partial = cache_dir / f"tiny-model.partial-{os.getpid()}"
    make_tiny_model(str(partial), seed=0)
    try:
        partial.rename(model_dir)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(partial, ignore_errors=True)
    return model_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _router_grace_s(router_args: list[str]) -> float:
    """How long the router may take to stop: its `--shutdown-timeout` drain, the 2 s its
    connections get to send their last errors, and a margin."""
    drain = 5.0
    for arg in router_args:
        if arg.startswith("--shutdown-timeout="):
            try:
                drain = float(arg.partition("=")[2])
            except ValueError:
                pass  # the router refuses it and exits
    return drain + 2.0 + 3.0


def plan(argv: list[str]) -> ServePlan:
    """Parse `glm47 serve` arguments into the worker and router command lines."""
    parser = argparse.ArgumentParser(
        prog="glm47 serve",
        description="Start a glm47 worker and router. Flags not listed here go to the worker "
        "(see `glm47 worker --help`); --log-level goes to both; router flags: "
        + ", ".join(sorted(set(ROUTER_FLAGS.values()) | set(ROUTER_SWITCHES.values()))),
    )
    parser.add_argument(
        "--model-dir",
        "--model_dir",
        "--model",
        "--model-path",
        dest="model_dir",
        default=None,
        help="model directory (default: the built-in tiny model, on the CPU)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument(
        "--worker-listen",
        default=None,
        help="address the worker binds (default: a free local TCP port)",
    )
    parser.add_argument(
        "--dp",
        "--dp-size",
        "--data-parallel-size",
        dest="dp",
        type=int,
        default=1,
        help="data-parallel replicas: one worker each, on its own GPU (the i-th of "
        "CUDA_VISIBLE_DEVICES, else GPU i), behind one router",
    )
    parser.add_argument(
        "--tp",
        "--tp-size",
        "--tensor-parallel-size",
        dest="tp",
        type=int,
        default=1,
        help="tensor-parallel GPUs of each worker (with --dp, replica i takes GPUs "
        "i*tp .. i*tp+tp-1)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for the server to become ready",
    )
    args, rest = parser.parse_known_args(argv)
    router_args, worker_args = split_args(rest)
    if args.port == 0:
        parser.error("--port 0: serve waits for the server on its port; give a fixed one")

    model_dir = args.model_dir
    if model_dir is None:
        model_dir = str(ensure_tiny_model(default_cache_dir()))
        if not any(a.split("=")[0] == "--device" for a in worker_args):
            worker_args += ["--device", "cpu"]
    if args.dp < 1:
        parser.error(f"--dp {args.dp}: need at least one replica")
    if args.tp < 1:
        parser.error(f"--tp {args.tp}: need at least one rank")
    if args.tp > 1:
        worker_args += ["--tp", str(args.tp)]
    if args.dp > 1 and args.worker_listen:
        parser.error("--worker-listen names one worker's address: leave it out with --dp above 1")
    if args.worker_listen and args.worker_listen.rpartition(":")[2] in ("0", "*"):
        parser.error("--worker-listen needs a fixed port: the router connects to that address")
    listens = [args.worker_listen or f"tcp://127.0.0.1:{free_port()}" for _ in range(args.dp)]
    # the worker binds what was given; the router connects to it on this machine
    connects = [_local_connect(listen) for listen in listens]
    py = sys.executable
    worker_cmds = [
        [py, "-m", "glm47.worker", "--listen", listen, "--model-dir", model_dir, *worker_args]
        for listen in listens
    ]
    router_cmd = [py, "-m", "glm47.router"]
    for connect in connects:
        router_cmd += ["--worker-addr", connect]
    router_cmd += [
        "--model-dir",
        model_dir,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    probe_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if ":" in probe_host and not probe_host.startswith("["):
        probe_host = f"[{probe_host}]"  # an IPv6 address in a URL
    return ServePlan(
        worker_cmds=worker_cmds,
        worker_envs=_replica_envs(args.dp, parser, args.tp),
        router_cmd=router_cmd + router_args,
        health_url=f"http://{probe_host}:{args.port}/health",
        startup_timeout_s=args.startup_timeout,
        router_grace_s=_router_grace_s(router_args),
    )


def _local_connect(listen: str) -> str:
    """The address to connect to a worker that binds `listen`: a TCP wildcard host (`*`,
    `0.0.0.0`, `[::]`) reached on this machine, any other address as it is."""
    scheme, sep, rest = listen.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and sep and colon and host in ("*", "0.0.0.0", "[::]", "::"):
        return f"tcp://127.0.0.1:{port}"
    return listen


def _replica_envs(dp: int, parser: argparse.ArgumentParser, tp: int = 1) -> list[dict[str, str]]:
    """Each worker's extra environment: with several replicas, its own `tp` GPUs (replica i the
    i-th group of `tp` in CUDA_VISIBLE_DEVICES when that is set, else GPUs i*tp ..); with one,
    nothing."""
    if dp == 1:
        return [{}]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else []
    need = dp * tp
    if visible and len(gpus) < need:
        parser.error(
            f"--dp {dp} with --tp {tp} needs {need} GPUs; CUDA_VISIBLE_DEVICES names {len(gpus)}"
        )
    names = gpus or [str(i) for i in range(need)]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(names[i * tp : (i + 1) * tp])} for i in range(dp)]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in %.0f s; killing it", p.pid, grace_s)
            p.kill()
            p.wait()


def _dying_with(parent: int) -> Callable[[], None]:
    """What a child runs before its program: on Linux, ask for SIGTERM when the process that
    started it dies, however it dies (SIGKILL, an OOM kill), so that no worker or router
    outlives `glm47 serve`; and exit at once if that has already happened. `prctl` is looked up
    here, in the parent: between fork and exec the child only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # a terminal's Ctrl-C is serve's to handle, from the child's first instruction on
        # (an ignored signal stays ignored across exec, and Python leaves it so)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _exit_code(returncode: int) -> int:
    """A child's exit status as a shell reports it (128 + N for a death by signal N)."""
    return 128 - returncode if returncode < 0 else returncode or 1


def supervise(p: ServePlan) -> int:
    """Start the workers and the router, report readiness, and stop them all when one exits or
    on a signal. The children stay in this process group (a kill of the group reaches them)
    but leave SIGINT to it (`SUPERVISED_ENV`): a terminal's Ctrl-C is handled here, which
    stops the router first (one SIGTERM: it drains its requests) and passes a second signal on
    to it (it then ends them at once)."""
    stopping = False
    router: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            log.info("received signal %d again: ending the requests in flight", signum)
            if router is not None and router.poll() is None:
                router.send_signal(signal.SIGTERM)
            return
        log.info("received signal %d, shutting down", signum)
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
            continue  # under nohup: a hangup is not ours to act on
        signal.signal(signum, on_signal)
    arm = _dying_with(os.getpid())
    supervised = {**os.environ, SUPERVISED_ENV: "1"}
    workers = [
        subprocess.Popen(cmd, env={**supervised, **env}, preexec_fn=arm)
        for cmd, env in zip(p.worker_cmds, p.worker_envs, strict=True)
    ]
    router = subprocess.Popen(p.router_cmd, env=supervised, preexec_fn=arm)
    procs = [*workers, router]
    started = time.monotonic()
    ready = False
    code = 0
    try:
        while not stopping:
            exited = [q for q in procs if q.poll() is not None]
            if exited:
                name = "router" if exited[0] is router else "worker"
                if len(workers) > 1 and exited[0] is not router:
                    name = f"worker {workers.index(exited[0])}"
                code = _exit_code(exited[0].returncode)
                log.error("%s exited with code %s; stopping", name, exited[0].returncode)
                break
            if not ready:
                if _healthy(p.health_url):
                    ready = True
                    log.info("glm47 is ready: %s", p.health_url.removesuffix("/health"))
                elif time.monotonic() - started > p.startup_timeout_s:
                    log.error("not ready after %.0f s; stopping", p.startup_timeout_s)
                    code = 1
                    break
            time.sleep(0.2)
    finally:
        stopping = True  # a signal from here on is a second one
        # the front first: it drains its requests, then lets its workers go
        _stop([router], grace_s=p.router_grace_s)
        _stop(workers)
    return code


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise_open_file_limit()  # inherited by the router and the worker
    return supervise(plan(argv))
