"""Ending a process group the tests started (ansible-rulebook and the runs it spawned), shared by the unit and
molecule tests."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGINT to the group of `process` (started with start_new_session=True), SIGKILL after `grace_s`."""
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
