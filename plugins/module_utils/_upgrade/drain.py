# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The drain of a rolling upgrade: are the containers switched away from still serving anything?

Private to this collection: not a public API, it may change in any release.

Two signs, both read from /proc: the Nginx workers of before the last reload (they finish their requests, then
exit; only they still route to the old containers) and established TCP connections to the old containers' ports.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import WATCH_INTERVAL_S

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_ESTABLISHED = "01"


def established_on_ports(ports: t.Iterable[int], tables: t.Iterable[str] = TCP_TABLES) -> int:
    """Established TCP connections with a local or remote port in `ports` (loopback traffic to old replicas)."""
    wanted = set(ports)
    count = 0
    for table in tables:
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 4 or cols[3] != TCP_ESTABLISHED:
                continue
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if local_port in wanted or remote_port in wanted:
                count += 1
    return count


def nginx_workers() -> set[int]:
    """PIDs of the Nginx worker processes now (those of before a reload finish their requests, then exit)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if cmdline.startswith(b"nginx: worker process"):
            pids.add(int(entry))
    return pids


def drain(ports: list[int], workers_before: set[int], timeout_s: float) -> str:
    """Wait until the workers of before the switch have exited and no connection to `ports` is left, or the
    timeout. Returns what was seen, for the steps."""
    deadline = time.monotonic() + timeout_s
    while True:
        old_workers = workers_before & nginx_workers()
        remaining = established_on_ports(ports) if ports else 0
        if (not old_workers and not remaining) or time.monotonic() >= deadline:
            break
        time.sleep(WATCH_INTERVAL_S)
    if not (old_workers or remaining):
        return "in-flight requests done"
    return "drain timeout with %d old Nginx workers and %d connections left" % (len(old_workers), remaining)


__all__ = ["drain", "established_on_ports", "nginx_workers"]
