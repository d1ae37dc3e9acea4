"""glm47.system: the open-file limit the commands lift before serving or benchmarking."""

from __future__ import annotations

import resource

from glm47.system import WANTED_OPEN_FILES, raise_open_file_limit


def test_raise_open_file_limit_lifts_a_low_soft_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raise_open_file_limit()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = (
            WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
        )
        assert raised == wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
