# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The bake of a rolling upgrade: the new containers' answers in the Nginx access log, and the verdict on them.

Private to this collection: not a public API, it may change in any release.

The nginx role's ``main`` log format ends with ``rt=`` (request time), ``urt="..."`` (upstream response times)
and ``ua="..."`` (upstream addresses, one per try). A line counts for the new containers when its last upstream
try went to one of them. The verdict fails as soon as the 5xx ratio or the p95 latency is certainly over its
limit, and passes only at the end of the bake with enough requests.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import re
import typing as t
from dataclasses import asdict, dataclass

MAX_BAD_LINES = 5
_LOG_RE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) .*? rt=(?P<rt>[0-9.]+) urt="(?P<urt>[^"]*)" '
    r'ua="(?P<ua>[^"]*)"'
)


def _tries(field: str) -> list[str]:
    return [x.strip() for x in field.replace(" : ", ",").split(",") if x.strip()]


def parse_access_line(line: str) -> dict[str, t.Any] | None:
    """status, request time (ms), upstream response time of the last try (ms) and the upstream address."""
    match = _LOG_RE.search(line)
    if not match:
        return None
    addresses = _tries(match.group("ua"))
    times = _tries(match.group("urt"))
    upstream_ms = None
    if times and times[-1] not in ("-", ""):
        try:
            upstream_ms = float(times[-1]) * 1000.0
        except ValueError:
            upstream_ms = None
    return {
        "status": int(match.group("status")),
        "request_ms": float(match.group("rt")) * 1000.0,
        "upstream_ms": upstream_ms,
        "upstream": addresses[-1] if addresses else "",
        "request": match.group("request"),
    }


@dataclass
class BakeVerdict:
    ok: bool
    requests: int
    errors: int
    error_ratio: float
    p95_ms: float | None
    reason: str = ""

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)


def judge_bake(
    samples: list[dict[str, t.Any]], max_error_ratio: float, max_latency_ms: float, min_requests: int, final: bool
) -> BakeVerdict | None:
    """Verdict on the samples so far: a failure as soon as it is certain, success only at the end (final)."""
    total = len(samples)
    errors = sum(1 for s in samples if s["status"] >= 500 or s["status"] == 0)
    ratio = errors / total if total else 0.0
    latencies = sorted(s["ms"] for s in samples if s.get("ms") is not None)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] if latencies else None
    verdict = BakeVerdict(True, total, errors, round(ratio, 4), round(p95, 1) if p95 is not None else None)
    enough = total >= min_requests
    if enough and ratio > max_error_ratio:
        verdict.ok = False
        verdict.reason = "5xx ratio %.1f%% (%d of %d) is over the limit of %.1f%%" % (
            100 * ratio,
            errors,
            total,
            100 * max_error_ratio,
        )
        return verdict
    if enough and p95 is not None and p95 > max_latency_ms:
        verdict.ok = False
        verdict.reason = "p95 latency %.0f ms is over the limit of %.0f ms" % (p95, max_latency_ms)
        return verdict
    if not final:
        return None
    if not enough:
        verdict.ok = False
        verdict.reason = "only %d requests reached the new containers during the bake (bake_min_requests %d)" % (
            total,
            min_requests,
        )
    return verdict


class AccessLog:
    """The Nginx access log, read from an offset taken before the traffic under judgement started."""

    def __init__(self, path: str):
        self.path = path

    def offset(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return -1

    def samples(self, offset: int, addresses: set[str]) -> tuple[list[dict[str, t.Any]], list[str]]:
        """Lines written since offset whose last upstream is one of addresses; and the first 5xx lines."""
        if offset < 0:
            return [], []
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset if size >= offset else 0)  # rotated since: read the new file whole
                data = handle.read()
        except OSError:
            return [], []
        samples: list[dict[str, t.Any]] = []
        bad: list[str] = []
        for raw in data.decode("utf-8", errors="replace").splitlines():
            entry = parse_access_line(raw)
            if entry is None or entry["upstream"] not in addresses:
                continue
            samples.append({"status": entry["status"], "ms": entry["upstream_ms"]})
            if entry["status"] >= 500 and len(bad) < MAX_BAD_LINES:
                bad.append(raw)
        return samples, bad


__all__ = ["AccessLog", "BakeVerdict", "judge_bake", "parse_access_line"]
