"""How `glm47 serve` splits its command line: the router's flags (every accepted spelling), the
flags both processes take, and the rest for the workers."""

from __future__ import annotations

# Router flags that take a value, in every accepted spelling (LightLLM's underscores included).
ROUTER_FLAGS = {
    "--tool-call-parser": "--tool-call-parser",
    "--tool_call_parser": "--tool-call-parser",
    "--reasoning-parser": "--reasoning-parser",
    "--reasoning_parser": "--reasoning-parser",
    "--served-model-name": "--served-model-name",
    "--served_model_name": "--served-model-name",
    "--max-body-bytes": "--max-body-bytes",
    "--max_body_bytes": "--max-body-bytes",
    "--api-key": "--api-key",
    "--api_key": "--api-key",
    "--max-stored-responses": "--max-stored-responses",
    "--max_stored_responses": "--max-stored-responses",
    "--chat-template": "--chat-template",
    "--chat_template": "--chat-template",
    "--allowed-origins": "--allowed-origins",
    "--allowed-methods": "--allowed-methods",
    "--allowed-headers": "--allowed-headers",
    "--worker-timeout": "--worker-timeout",
    "--worker_timeout": "--worker-timeout",
    "--health-generate-timeout": "--health-generate-timeout",
    "--health_generate_timeout": "--health-generate-timeout",
    "--balance-policy": "--balance-policy",
    "--balance_policy": "--balance-policy",
    "--shutdown-timeout": "--shutdown-timeout",
    "--shutdown_timeout": "--shutdown-timeout",
}
# Router switches (no value).
ROUTER_SWITCHES = {
    "--enable-auto-tool-choice": "--enable-auto-tool-choice",
    "--allow-credentials": "--allow-credentials",
    "--enable-log-requests": "--enable-log-requests",
    "--disable-log-requests": "--disable-log-requests",
}
# Flags that both processes need.
SHARED_FLAGS = {"--log-level": "--log-level", "--log_level": "--log-level"}
# The router's log levels as the worker (Python logging) names them.
WORKER_LOG_LEVELS = {
    "warn": "warning",
    "trace": "debug",
    "critical": "error",
    "fatal": "error",
    "off": "error",
}


def split_args(rest: list[str]) -> tuple[list[str], list[str]]:
    """Split unknown flags into (router_args, worker_args)."""
    router: list[str] = []
    worker: list[str] = []
    i = 0
    while i < len(rest):
        flag, given, inline = rest[i].partition("=")
        if flag in ROUTER_SWITCHES:
            router.append(ROUTER_SWITCHES[flag])
            i += 1
            continue
        canonical = ROUTER_FLAGS.get(flag) or SHARED_FLAGS.get(flag)
        if canonical is None:
            worker.append(rest[i])
            i += 1
            continue
        if given:
            value = inline
            i += 1
        else:
            if i + 1 >= len(rest):
                raise SystemExit(f"glm47 serve: {flag} needs a value")
            value = rest[i + 1]
            i += 2
        # one word, so that a value starting with `-` is not read as a flag
        router.append(f"{canonical}={value}")
        level = _worker_log_level(value) if flag in SHARED_FLAGS else None
        if level is not None:
            worker.append(f"{canonical}={level}")
    return router, worker


def _worker_log_level(value: str) -> str | None:
    """The worker's level for the router's `--log-level`: a level as the worker (Python logging)
    names it; of the router's tracing directives (`info,glm47_router=debug`) the bare level, or
    none (the worker keeps its default)."""
    bare = [d for d in value.lower().split(",") if "=" not in d]
    if not bare:
        return None
    return WORKER_LOG_LEVELS.get(bare[-1], bare[-1])
