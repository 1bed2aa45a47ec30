"""What EmoStream's launchers share about the processes they start."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable


def parent_death_signal() -> Callable[[], None] | None:
    """A preexec function that makes a child get SIGTERM when its parent dies (Linux), or None.

    A launcher killed outright (SIGKILL, the OOM killer) then leaves no orphan holding a port
    or sending heartbeats.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec
