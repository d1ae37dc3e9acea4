"""Process settings shared by the commands."""

from __future__ import annotations

WANTED_OPEN_FILES = 65536

# Set to "1" by `glm47 serve` in its children's environment: SIGINT (a terminal's Ctrl-C, which
# reaches the whole process group) is left to serve, which stops them in order; they act on
# SIGTERM. The router reads it too (router-rs/src/app.rs).
SUPERVISED_ENV = "GLM47_SUPERVISED"


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files towards the hard one (at most 65536): every HTTP stream
    holds a socket, and a burst of thousands of requests passes the usual soft limit of 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = (
            WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
        )
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass
