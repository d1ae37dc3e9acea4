"""The `glm47` command: sub-command dispatch, `make-tiny-model`, and how `serve` splits its flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm47 import cli, serve


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_make_tiny_model_writes_a_complete_directory(tmp_path: Path) -> None:
    assert cli.main(["make-tiny-model", str(tmp_path / "m"), "--seed", "3"]) == 0
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= names
    assert any(n.endswith(".safetensors") for n in names)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "glm4_moe_lite"
    assert config["num_nextn_predict_layers"] == 1


def test_serve_sends_router_flags_to_the_router_and_the_rest_to_the_worker(tmp_path: Path) -> None:
    p = serve.plan(
        [
            "--model-dir",
            str(tmp_path),
            "--port",
            "8123",
            "--tool_call_parser",
            "glm47",
            "--reasoning-parser=glm45",
            "--chunked_prefill_size",
            "512",
            "--log-level",
            "debug",
            "--worker-listen",
            "tcp://127.0.0.1:7001",
            "--api-key",
            "s3cret",
            "--worker_timeout",
            "30",
            "--health-generate-timeout=5",
            "--balance-policy",
            "least-loaded",
            "--shutdown-timeout",
            "2",
        ]
    )
    (worker_cmd,) = p.worker_cmds
    router, worker = " ".join(p.router_cmd), " ".join(worker_cmd)
    assert p.worker_envs == [{}]
    assert "--tool-call-parser=glm47" in router and "--reasoning-parser=glm45" in router
    assert "--chunked_prefill_size 512" in worker and "chunked" not in router
    assert "--api-key=s3cret" in router and "s3cret" not in worker
    assert "--log-level=debug" in router and "--log-level=debug" in worker
    for flag in [
        "--worker-timeout=30",
        "--health-generate-timeout=5",
        "--balance-policy=least-loaded",
        "--shutdown-timeout=2",
    ]:
        assert flag in router, router
    assert "timeout" not in worker and "balance" not in worker, worker
    # the router's level names as the worker's logging knows them
    levels = [("warn", "warning"), ("TRACE", "debug"), ("error", "error"), ("off", "error")]
    for given, worker_level in levels:
        plan = serve.plan(["--model-dir", str(tmp_path), "--log-level", given])
        assert f"--log-level={worker_level}" in " ".join(plan.worker_cmds[0])
        assert f"--log-level={given}" in " ".join(plan.router_cmd)
    # the router's tracing directives: the worker takes their bare level, or keeps its own
    for given, worker_level in [("info,glm47_router=debug", "info"), ("glm47_router=debug", None)]:
        plan = serve.plan(["--model-dir", str(tmp_path), "--log-level", given])
        worker_levels = [a for a in plan.worker_cmds[0] if a.startswith("--log-level")]
        assert worker_levels == ([f"--log-level={worker_level}"] if worker_level else [])
        assert f"--log-level={given}" in plan.router_cmd
    # a value that starts with `-` stays the flag's (one word), an empty one too
    plan = serve.plan(["--model-dir", str(tmp_path), "--api-key", "-Xk3", "--api-key=", "--port=1"])
    assert "--api-key=-Xk3" in plan.router_cmd and "--api-key=" in plan.router_cmd
    # the router's drain, its last words and a margin before it is killed
    assert p.router_grace_s == 2 + 2 + 3
    assert serve.plan(["--model-dir", str(tmp_path)]).router_grace_s == 5 + 2 + 3
    assert (
        "--worker-addr tcp://127.0.0.1:7001" in router and "--listen tcp://127.0.0.1:7001" in worker
    )
    assert f"--model-dir {tmp_path}" in router and f"--model-dir {tmp_path}" in worker
    assert p.health_url == "http://127.0.0.1:8123/health"


def test_serve_reaches_a_wildcard_worker_address_locally_and_needs_a_fixed_http_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for listen in ["tcp://*:7002", "tcp://0.0.0.0:7002", "tcp://[::]:7002"]:
        p = serve.plan(["--model-dir", str(tmp_path), "--worker-listen", listen])
        router, worker = " ".join(p.router_cmd), " ".join(p.worker_cmds[0])
        assert f"--listen {listen}" in worker
        assert "--worker-addr tcp://127.0.0.1:7002" in router, router
    p = serve.plan(["--model-dir", str(tmp_path), "--worker-listen", "ipc:///tmp/w.sock"])
    assert "--worker-addr ipc:///tmp/w.sock" in " ".join(p.router_cmd)
    for host in ["::1", "[::1]"]:
        p = serve.plan(["--model-dir", str(tmp_path), "--host", host, "--port", "8125"])
        assert p.health_url == "http://[::1]:8125/health"
    with pytest.raises(SystemExit) as exc:
        serve.plan(["--model-dir", str(tmp_path), "--port", "0"])
    assert exc.value.code == 2
    assert "fixed" in capsys.readouterr().err


def test_serve_without_a_model_dir_uses_the_cached_tiny_model_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(serve.CACHE_DIR_ENV, str(tmp_path))
    p = serve.plan(["--port", "8124"])
    assert (tmp_path / "tiny-model" / "config.json").exists()
    assert "--device cpu" in " ".join(p.worker_cmds[0])
    again = serve.plan(["--port", "8124", "--device", "cuda"])
    assert "--device cuda" in " ".join(again.worker_cmds[0])
    assert "--device cpu" not in " ".join(again.worker_cmds[0])


def test_serve_flag_without_value_is_an_error() -> None:
    with pytest.raises(SystemExit):
        serve.plan(["--model-dir", "x", "--tool-call-parser"])


def test_serve_with_dp_starts_one_worker_per_gpu_behind_one_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = serve.plan(["--model-dir", str(tmp_path), "--dp", "2", "--chunked-prefill-size", "64"])
    listens = [cmd[cmd.index("--listen") + 1] for cmd in p.worker_cmds]
    assert len(set(listens)) == 2
    router = " ".join(p.router_cmd)
    assert all(f"--worker-addr {addr}" in router for addr in listens)
    assert all("--chunked-prefill-size 64" in " ".join(cmd) for cmd in p.worker_cmds)
    assert p.worker_envs == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    p = serve.plan(["--model-dir", str(tmp_path), "--data-parallel-size", "2"])
    assert p.worker_envs == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    for bad in (["--dp", "3"], ["--dp", "0"], ["--dp", "2", "--worker-listen", "tcp://x:1"]):
        with pytest.raises(SystemExit):
            serve.plan(["--model-dir", str(tmp_path), *bad])


def test_serve_with_tp_gives_each_replica_its_group_of_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = serve.plan(["--model-dir", str(tmp_path), "--tp", "2"])
    (cmd,) = p.worker_cmds
    assert cmd[cmd.index("--tp") + 1] == "2" and p.worker_envs == [{}]
    p = serve.plan(["--model-dir", str(tmp_path), "--dp", "2", "--tensor-parallel-size", "2"])
    assert all(c[c.index("--tp") + 1] == "2" for c in p.worker_cmds)
    assert p.worker_envs == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    p = serve.plan(["--model-dir", str(tmp_path), "--dp", "2", "--tp-size", "2"])
    assert p.worker_envs == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    for bad in (
        ["--dp", "3", "--tp", "2"],
        ["--tp", "0"],
        ["--worker-listen", "tcp://127.0.0.1:0"],
        ["--worker-listen", "tcp://127.0.0.1:*"],
    ):
        with pytest.raises(SystemExit):
            serve.plan(["--model-dir", str(tmp_path), *bad])


def test_serve_takes_vllm_and_sglang_spellings(tmp_path: Path) -> None:
    p = serve.plan(
        ["--model", str(tmp_path), "--chat-template", "t.jinja", "--enable-auto-tool-choice",
         "--tool-call-parser", "glm47", "--gpu-memory-utilization", "0.8", "--max-model-len",
         "4096", "--tensor-parallel-size", "2", "--allowed-origins", '["https://a.example"]',
         "--allow-credentials"]
    )  # fmt: skip
    (worker,) = p.worker_cmds
    router = " ".join(p.router_cmd)
    assert f"--model-dir {tmp_path}" in " ".join(worker) and f"--model-dir {tmp_path}" in router
    assert "--chat-template=t.jinja" in router and "--enable-auto-tool-choice" in router
    assert "--chat-template" not in worker and "--enable-auto-tool-choice" not in worker
    assert '--allowed-origins=["https://a.example"]' in p.router_cmd
    assert "--allow-credentials" in router and "--allow" not in " ".join(worker)
    assert "--gpu-memory-utilization 0.8 --max-model-len 4096" in " ".join(worker)
    assert worker[worker.index("--tp") + 1] == "2"
    p = serve.plan(["--model-path", str(tmp_path)])
    assert f"--model-dir {tmp_path}" in " ".join(p.worker_cmds[0])
