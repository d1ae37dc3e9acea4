"""Process limits shared by the commands."""

from __future__ import annotations


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every HTTP stream holds a socket, and a
    burst of thousands of requests passes the usual soft limit of 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass
