"""Constant HTTP load through Nginx, shared by the molecule verifiers that must see 0 failed requests.

A request counts as failed when it gets no answer or an answer other than 200. Each request opens its own
connection: an idle keep-alive connection that Nginx closes at a graceful reload races with the next request sent
on it, which is a client retry question and not what these tests measure (see rolling_upgrade's notes).
"""

from __future__ import annotations

import http.client
import json
import threading
import time


class HttpLoad:
    """Workers send requests in a loop until the ``with`` block ends.

    By default odd requests POST ``/api/echo`` and even ones GET ``/api/version`` (whose answer names the
    version that served it); with ``paths`` every request is a GET, the paths taken in turn.
    """

    def __init__(
        self, address: str, port: int = 80, workers: int = 4, paths: list[str] | None = None, timeout: float = 10.0
    ):
        self.address, self.port, self.paths, self.timeout = address, port, paths, timeout
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.total = self.failed = 0
        self.errors: list[str] = []
        self.error_times: list[float] = []  # wall clock, to tell which step of a run they fell into
        self.seen: dict[str, int] = {}  # version -> answers
        self.longest_gap = 0.0
        self.last_ok = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _request(self, n: int) -> tuple[str, str]:
        """Send request number n; return (error or "", version that answered or "")."""
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        try:
            if self.paths:
                path = self.paths[n % len(self.paths)]
                conn.request("GET", path)
            elif n % 2:
                path = "/api/echo"
                conn.request("POST", path, body=b'{"n": %d}' % n, headers={"Content-Type": "application/json"})
            else:
                path = "/api/version"
                conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return "HTTP %d on %s" % (resp.status, path), ""
            if path == "/api/version":
                return "", str(json.loads(body).get("version", ""))
            return "", ""
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return "%s: %s" % (type(exc).__name__, exc), ""
        finally:
            conn.close()

    def _run(self, index: int) -> None:
        n = index
        while not self.stop.is_set():
            n += 1
            error, version = self._request(n)
            now = time.monotonic()
            with self.lock:
                self.total += 1
                if error:
                    self.failed += 1
                    self.errors.append(error)
                    self.error_times.append(time.time())
                else:
                    self.longest_gap = max(self.longest_gap, now - self.last_ok)
                    self.last_ok = now
                if version:
                    self.seen[version] = self.seen.get(version, 0) + 1
            time.sleep(0.01)

    def __enter__(self) -> HttpLoad:
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)
        self.stop.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)

    def figures(self) -> dict:
        return {
            "requests": self.total,
            "failed": self.failed,
            "longest_gap_s": round(self.longest_gap, 3),
            "errors": self.errors[:5],
            "versions_seen": dict(self.seen),
        }
