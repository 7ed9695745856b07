#!/usr/bin/env python3
"""demo-backend: the sandbox's demo application, Python 3 standard library only.

A small but real HTTP/1.1 service (keep-alive, Content-Length, chunked SSE) that the opsbook.stack roles
deploy, upgrade, roll back, scrape and break on purpose.

Environment:
    PORT                 listen port (default 8000); HOST listen address (default 0.0.0.0)
    APP_VERSION          version reported by /health, /api/version, /metrics (baked in from build arg VERSION)
    APP_BROKEN           1: /health answers 200 for APP_BROKEN_AFTER seconds (default 3) after start, then 503
    APP_FAIL_RATIO       0..1: probability that a request to /api/* answers 500 (healthy but failing)
    SERVICE_NAME         the Compose service this replica plays; sent back in X-Service on every answer
    APP_SHUTDOWN_GRACE   seconds in-flight requests may take to finish after SIGTERM (default 10)
    APP_KEEPALIVE_TIMEOUT  seconds an idle keep-alive connection is kept open (default 75)
    APP_METRICS_DIALECT  whose metrics /metrics speaks: agentchat (default), helloagents, astron-agent, heartrule;
                         any other value stops the start (exit 2)
    APP_SANDBOX_*, APP_LLM_*, APP_DB_POOL_*, APP_CACHE_*, APP_RELY_*
                         the start values of the platform faults (FAULT_KNOBS below, docs/platform-metrics.md);
                         they and APP_FAIL_RATIO can be changed while the app runs through /faults

Endpoints:
    GET  /health                   {"status": "ok", "version": ...} (503 {"status": "fail"} when broken)
    GET  /metrics                  Prometheus text format
    GET  /api/version              {"version", "hostname"}
    GET|POST /api/echo             method, path, query, X-Request-ID, body length, ...
    GET  /api/slow?ms=N            answers after N milliseconds
    GET  /api/fail?code=500        answers with that status
    GET|POST /sse?events=N&interval=0.2   text/event-stream, also at /workflow/v1/chat/completions,
                                   /console-api/chat-message/ and /api/chat/stream; the client chooses the
                                   length (N events, one every `interval` seconds), the last one is `event: end`
    GET  /ws/echo                  WebSocket (RFC 6455): echoes text and binary messages, answers pings
    GET  /faults                   the fault knobs of this dialect and their current values
    POST /faults?KNOB=V&...        sets knobs (the names of their environment variables) without a restart;
                                   reset=1 first puts every knob back to its start value
    GET|POST /api/sandbox/run      helloagents: one sandbox execution (200, or 500 when it fails)
    GET|POST /api/llm?provider=P   heartrule: one LLM call (200, 502 on error, 504 on timeout)
    GET|POST /api/rely?server=S    astron-agent: one dependency call (200, or 502 when it fails)

Outside agentchat, every other request to /api/version, /api/echo, /api/slow and /api/fail also does the
platform's work before it answers (helloagents: one sandbox execution; heartrule: one cache lookup and one LLM
call; astron-agent: one call to llm and one to mysql), so a steady load moves the platform series; the outcome of
that work is recorded, the answer does not depend on it (APP_FAIL_RATIO stays the HTTP fault).

SIGTERM/SIGINT: stop accepting, close idle keep-alive connections, let in-flight requests, SSE streams and
WebSocket sessions finish for up to APP_SHUTDOWN_GRACE seconds (keep it below the compose file's
stop_grace_period, after which Docker kills the process). What is still open then is ended cleanly: an SSE
stream gets a final `event: end` with "cut": "shutdown" and the end of its chunked body, a WebSocket session a
close frame 1001 (going away); then exit 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The platforms' streaming endpoints: astron-agent's two (core-workflow, console-hub) and HeartRule's chat stream.
SSE_PATHS = ("/sse", "/workflow/v1/chat/completions", "/console-api/chat-message/", "/api/chat/stream")
API_ROUTES = ("/api/version", "/api/echo", "/api/slow", "/api/fail")  # outside agentchat: each does platform work
FAULTS_PATH = "/faults"
WS_PATH = "/ws/echo"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
WS_MAX_MESSAGE = 1024 * 1024
CUT_WAIT_S = 3.0  # after the grace: how long the cut streams and sessions get to say goodbye
MAX_BODY = 10 * 1024 * 1024
_log_lock = threading.Lock()


def _env_float(name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        sys.stderr.write(f"demo-backend: ignoring {name}={raw!r} (not a number), using {default}\n")
        value = default
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


DIALECTS = ("agentchat", "helloagents", "astron-agent", "heartrule")
MAX_INJECTED_DELAY_S = 60.0  # the upper bound of every injected latency (the largest bucket of the histograms)


class ConfigError(Exception):
    """A setting the app cannot start with; main() prints it and exits 2."""


def check_dialect(raw: str) -> str:
    name = (raw or "").strip().lower() or "agentchat"
    if name not in DIALECTS:
        raise ConfigError(f"APP_METRICS_DIALECT={raw!r} is not a metrics dialect; allowed: {', '.join(DIALECTS)}")
    return name


@dataclass(frozen=True)
class FaultKnob:
    """A fault setting: the environment variable gives its start value, POST /faults changes it while running."""

    env: str
    field: str
    lo: float
    hi: float
    dialect: str | None = None  # None: every dialect
    integer: bool = False


FAULT_KNOBS = (
    FaultKnob("APP_FAIL_RATIO", "fail_ratio", 0.0, 1.0),
    FaultKnob("APP_SANDBOX_DURATION_S", "sandbox_duration", 0.0, MAX_INJECTED_DELAY_S, "helloagents"),
    FaultKnob("APP_SANDBOX_FAIL_RATIO", "sandbox_fail_ratio", 0.0, 1.0, "helloagents"),
    FaultKnob("APP_SANDBOX_POOL_SIZE", "sandbox_pool_size", 0, 1000, "helloagents", integer=True),
    FaultKnob("APP_LLM_LATENCY_S", "llm_latency", 0.0, MAX_INJECTED_DELAY_S, "heartrule"),
    FaultKnob("APP_LLM_ERROR_RATIO", "llm_error_ratio", 0.0, 1.0, "heartrule"),
    FaultKnob("APP_LLM_TIMEOUT_RATIO", "llm_timeout_ratio", 0.0, 1.0, "heartrule"),
    FaultKnob("APP_DB_POOL_MAX", "db_pool_max", 1, 1000, "heartrule", integer=True),
    FaultKnob("APP_DB_POOL_ACTIVE", "db_pool_active", 0, 1000, "heartrule", integer=True),
    FaultKnob("APP_DB_POOL_WAITING", "db_pool_waiting", 0, 10000, "heartrule", integer=True),
    FaultKnob("APP_CACHE_HIT_RATIO", "cache_hit_ratio", 0.0, 1.0, "heartrule"),
    FaultKnob("APP_RELY_LATENCY_S", "rely_latency", 0.0, MAX_INJECTED_DELAY_S, "astron-agent"),
    FaultKnob("APP_RELY_ERROR_RATIO", "rely_error_ratio", 0.0, 1.0, "astron-agent"),
)


def knobs_of(dialect: str) -> tuple[FaultKnob, ...]:
    return tuple(k for k in FAULT_KNOBS if k.dialect in (None, dialect))


@dataclass
class Config:
    version: str = "1.0"
    broken: bool = False
    broken_after: float = 3.0
    fail_ratio: float = 0.0
    shutdown_grace: float = 10.0
    keepalive_timeout: float = 75.0
    dialect: str = "agentchat"
    # SERVICE_NAME: the Compose service this replica plays (astron-agent's console-hub, ...); every answer says it
    # in X-Service, so a test can tell which service a route of Nginx reached.
    service: str = ""
    # The platform faults (FAULT_KNOBS): none by default, a pool of 5 sandboxes, 10 database connections.
    sandbox_duration: float = 0.0
    sandbox_fail_ratio: float = 0.0
    sandbox_pool_size: int = 5
    llm_latency: float = 0.0
    llm_error_ratio: float = 0.0
    llm_timeout_ratio: float = 0.0
    db_pool_max: int = 10
    db_pool_active: int = 0
    db_pool_waiting: int = 0
    cache_hit_ratio: float = 0.9
    rely_latency: float = 0.0
    rely_error_ratio: float = 0.0

    @classmethod
    def from_env(cls) -> Config:
        defaults = {f.name: f.default for f in fields(cls)}
        knobs = {}
        for knob in FAULT_KNOBS:
            value = _env_float(knob.env, defaults[knob.field], lo=knob.lo, hi=knob.hi)
            knobs[knob.field] = int(value) if knob.integer else value
        return cls(
            version=os.environ.get("APP_VERSION", "1.0") or "1.0",
            broken=os.environ.get("APP_BROKEN", "0").strip().lower() in ("1", "true", "yes", "on"),
            broken_after=_env_float("APP_BROKEN_AFTER", 3.0, lo=0.0),
            shutdown_grace=_env_float("APP_SHUTDOWN_GRACE", 10.0, lo=0.0),
            keepalive_timeout=_env_float("APP_KEEPALIVE_TIMEOUT", 75.0, lo=1.0),
            dialect=check_dialect(os.environ.get("APP_METRICS_DIALECT", "")),
            service=os.environ.get("SERVICE_NAME", "").strip(),
            **knobs,
        )


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus stores it (`1`, `2.5`, `1000000`), so that rules can match it as written."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True))


class Family:
    """One metric family: HELP, TYPE and its samples, rendered in the text exposition format 0.0.4.

    Not locked itself: Metrics changes and renders its families under its own lock."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help_text, self.labels = name, help_text, labels

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}", *self.samples()]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def _sample(self, suffix: str, values: tuple[str, ...], value: object, extra: str = "") -> str:
        labels = ",".join(part for part in (_label_text(self.labels, values), extra) if part)
        return f"{self.name}{suffix}{{{labels}}} {value}" if labels else f"{self.name}{suffix} {value}"


class Counter(Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (), initial: Iterable = ()) -> None:
        super().__init__(name, help_text, labels)
        # Series known in advance start at 0, so that rate() sees their first increase.
        self.values: dict[tuple[str, ...], int] = {tuple(values): 0 for values in initial}

    def inc(self, *values: str) -> None:
        self.values[values] = self.values.get(values, 0) + 1

    def samples(self) -> list[str]:
        return [self._sample("", values, count) for values, count in sorted(self.values.items())]


class Gauge(Family):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], read: Callable[[], list]) -> None:
        super().__init__(name, help_text, labels)
        self.read = read  # -> [(label values, value)], called under the Metrics lock

    def samples(self) -> list[str]:
        return [self._sample("", tuple(values), value) for values, value in self.read()]


class Histogram(Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...],
        le: Callable[[float], str] = _go_float,
        initial: Iterable = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets, self.le = buckets, le
        # label values -> [per-bucket counts (cumulated when rendered)..., sum, count]
        self.series: dict[tuple[str, ...], list] = {}
        for values in initial:
            self._new(tuple(values))

    def _new(self, values: tuple[str, ...]) -> list:
        hist = self.series[values] = [0] * len(self.buckets) + [0.0, 0]
        return hist

    def observe(self, value: float, *values: str) -> None:
        hist = self.series.get(values) or self._new(values)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                hist[i] += 1
                break
        hist[-2] += value
        hist[-1] += 1

    def samples(self) -> list[str]:
        out = []
        for values, hist in sorted(self.series.items()):
            cumulative = 0
            for i, bound in enumerate(self.buckets):
                cumulative += hist[i]
                out.append(self._sample("_bucket", values, cumulative, f'le="{self.le(bound)}"'))
            out.append(self._sample("_bucket", values, hist[-1], 'le="+Inf"'))
            out.append(self._sample("_sum", values, repr(hist[-2])))
            out.append(self._sample("_count", values, hist[-1]))
        return out


Wait = Callable[[float], object]  # sleeps up to that many seconds (the server's cut event: a shutdown ends it)


class Metrics:
    """The agentchat dialect, and the frame of the others: in-flight count, HTTP observations, rendering.

    A dialect subclass defines its families, how an HTTP request is recorded, the platform work that /api/*
    requests do (`background_work`) and its own endpoint (`work_path`, `dedicated_work`)."""

    dialect = "agentchat"
    work_path: str | None = None

    def __init__(self, config: Config) -> None:
        self.config = config  # read for the fault knobs at each use: /faults changes them while running
        self.version = config.version
        self.started = time.time()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.families: list[Family] = self._families()

    def _families(self) -> list[Family]:
        self._requests = Counter(
            "http_requests_total", "Total HTTP requests by method, path and status.", ("method", "path", "status")
        )
        self._durations = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration in seconds by method and path.",
            ("method", "path"),
            BUCKETS,
            le=repr,  # today's bounds as the dashboards and rules know them: 1.0, 10.0
        )
        in_flight = Gauge("http_requests_in_flight", "Requests currently being served.", (), self._read_in_flight)
        return [in_flight, self._requests, self._durations]

    def _read_in_flight(self) -> list:
        return [((), self.in_flight)]

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self._observe_http(method, path, status, seconds)

    def _observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        self._requests.inc(method, path, str(status))
        self._durations.observe(seconds, method, path)

    def background_work(self, wait: Wait) -> None:
        """The platform work of one API request (none for agentchat)."""

    def dedicated_work(self, query: dict, wait: Wait) -> tuple[int, dict]:
        raise HTTPError(404, "not found")

    def render(self) -> str:
        with self._lock:
            body = [line for family in self.families for line in family.render()]
        out = [
            "# HELP app_info Build information of the demo backend.",
            "# TYPE app_info gauge",
            f'app_info{{version="{_escape_label(self.version)}"}} 1',
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(out + body) + "\n"

    @staticmethod
    def _choice(query: dict, name: str, allowed: tuple[str, ...]) -> str:
        value = (query.get(name) or [allowed[0]])[-1] or allowed[0]
        if value not in allowed:
            raise HTTPError(400, f"{name} must be one of {', '.join(allowed)}")
        return value


SANDBOX_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
LLM_BUCKETS = SANDBOX_BUCKETS
MICROSECOND_BUCKETS = (1e3, 5e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 3e7, 6e7)
LLM_PROVIDERS = ("openai", "deepseek", "local")
RELY_SERVERS = ("llm", "mysql", "redis", "knowledge")
RELY_ERROR_CODE = "10500"


class HelloAgentsMetrics(Metrics):
    """HelloAgents: HTTP by endpoint and status_code, and the code sandbox (executions, their duration, the pool)."""

    dialect = "helloagents"
    work_path = "/api/sandbox/run"

    def _families(self) -> list[Family]:
        self._sandboxes_busy = 0
        self._requests = Counter(
            "http_requests_total",
            "Total HTTP requests by method, endpoint and status code.",
            ("method", "endpoint", "status_code"),
        )
        self._durations = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration in seconds by method and endpoint.",
            ("method", "endpoint"),
            BUCKETS,
        )
        self._executions = Counter(
            "sandbox_executions_total",
            "Code sandbox executions by outcome.",
            ("status",),
            initial=[("success",), ("failure",)],
        )
        self._execution_time = Histogram(
            "sandbox_execution_duration_seconds",
            "Duration of code sandbox executions in seconds.",
            (),
            SANDBOX_BUCKETS,
            initial=[()],
        )
        available = Gauge(
            "sandbox_pool_available", "Sandboxes free to take an execution.", (), self._read_pool_available
        )
        return [self._requests, self._durations, self._executions, self._execution_time, available]

    def _read_pool_available(self) -> list:
        return [((), max(0, int(self.config.sandbox_pool_size) - self._sandboxes_busy))]

    def _observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        self._requests.inc(method, path, str(status))
        self._durations.observe(seconds, method, path)

    def run_sandbox(self, wait: Wait) -> tuple[bool, float]:
        """One execution: it fails at once when no sandbox is free, else after the injected duration with the
        injected failure ratio."""
        cfg = self.config
        with self._lock:
            free = int(cfg.sandbox_pool_size) - self._sandboxes_busy > 0
            if free:
                self._sandboxes_busy += 1
        started = time.monotonic()
        ok = False
        if free:
            try:
                wait(min(cfg.sandbox_duration, MAX_INJECTED_DELAY_S))
                ok = random.random() >= cfg.sandbox_fail_ratio
            finally:
                with self._lock:
                    self._sandboxes_busy -= 1
        took = time.monotonic() - started
        with self._lock:
            self._executions.inc("success" if ok else "failure")
            self._execution_time.observe(took)
        return ok, took

    def background_work(self, wait: Wait) -> None:
        self.run_sandbox(wait)

    def dedicated_work(self, query: dict, wait: Wait) -> tuple[int, dict]:
        ok, took = self.run_sandbox(wait)
        return (200 if ok else 500), {"status": "success" if ok else "failure", "duration_s": round(took, 6)}


class AstronAgentMetrics(Metrics):
    """Astron Agent: requests by path and business code (0 = success), times in microseconds, the calls to the
    services it relies on, and the requests in flight."""

    dialect = "astron-agent"
    work_path = "/api/rely"

    def _families(self) -> list[Family]:
        self._requests = Counter(
            "server_request_total", "Requests by path and result code (0 is success).", ("path", "code")
        )
        self._durations = Histogram(
            "server_request_time_microseconds",
            "Request time in microseconds by path.",
            ("path",),
            MICROSECOND_BUCKETS,
        )
        self._rely_requests = Counter(
            "rely_server_request_total",
            "Calls to the services this one relies on, by server and result code (0 is success).",
            ("server", "code"),
            initial=[("llm", "0"), ("mysql", "0")],
        )
        self._rely_durations = Histogram(
            "rely_server_request_time_microseconds",
            "Time of the calls to the services this one relies on, in microseconds, by server.",
            ("server",),
            MICROSECOND_BUCKETS,
        )
        concurrency = Gauge("server_conc", "Requests being served.", (), self._read_in_flight)
        return [self._requests, self._durations, self._rely_requests, self._rely_durations, concurrency]

    def _observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        # Astron answers with a business code: 0 for success, 10<HTTP status> here for the errors.
        self._requests.inc(path, "0" if status < 400 else f"10{status}")
        self._durations.observe(seconds * 1e6, path)

    def call_dependency(self, server: str, wait: Wait) -> str:
        cfg = self.config
        started = time.monotonic()
        wait(min(cfg.rely_latency, MAX_INJECTED_DELAY_S))
        code = RELY_ERROR_CODE if random.random() < cfg.rely_error_ratio else "0"
        took = time.monotonic() - started
        with self._lock:
            self._rely_requests.inc(server, code)
            self._rely_durations.observe(took * 1e6, server)
        return code

    def background_work(self, wait: Wait) -> None:
        for server in ("llm", "mysql"):
            self.call_dependency(server, wait)

    def dedicated_work(self, query: dict, wait: Wait) -> tuple[int, dict]:
        server = self._choice(query, "server", RELY_SERVERS)
        code = self.call_dependency(server, wait)
        return (200 if code == "0" else 502), {"server": server, "code": code}


class HeartRuleMetrics(Metrics):
    """HeartRule: HTTP by route and status_code, LLM calls by provider and outcome, the database pool, the cache."""

    dialect = "heartrule"
    work_path = "/api/llm"

    def _families(self) -> list[Family]:
        self._db_busy = 0  # connections held by requests of this process
        self._requests = Counter(
            "http_requests_total",
            "Total HTTP requests by method, route and status code.",
            ("method", "route", "status_code"),
        )
        self._durations = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration in seconds by method, route and status code.",
            ("method", "route", "status_code"),
            BUCKETS,
        )
        self._llm_requests = Counter(
            "llm_requests_total",
            "LLM calls by provider and outcome.",
            ("provider", "outcome"),
            initial=[(LLM_PROVIDERS[0], outcome) for outcome in ("success", "error", "timeout")],
        )
        self._llm_durations = Histogram(
            "llm_request_duration_seconds",
            "Duration of LLM calls in seconds by provider.",
            ("provider",),
            LLM_BUCKETS,
            initial=[(LLM_PROVIDERS[0],)],
        )
        connections = Gauge(
            "db_pool_connections", "Database pool connections by state.", ("state",), self._read_db_pool
        )
        pool_max = Gauge(
            "db_pool_max_connections", "Size of the database pool.", (), lambda: [((), int(self.config.db_pool_max))]
        )
        self._cache_hits = Counter("cache_hits_total", "Cache lookups that found the entry.", initial=[()])
        self._cache_misses = Counter("cache_misses_total", "Cache lookups that missed.", initial=[()])
        return [
            self._requests,
            self._durations,
            self._llm_requests,
            self._llm_durations,
            connections,
            pool_max,
            self._cache_hits,
            self._cache_misses,
        ]

    def _read_db_pool(self) -> list:
        cfg = self.config
        size = int(cfg.db_pool_max)
        wanted = int(cfg.db_pool_active) + self._db_busy
        active = min(size, wanted)
        waiting = int(cfg.db_pool_waiting) + max(0, wanted - size)
        return [(("active",), active), (("idle",), size - active), (("waiting",), waiting)]

    def _observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        self._requests.inc(method, path, str(status))
        self._durations.observe(seconds, method, path, str(status))

    def call_llm(self, provider: str, wait: Wait) -> str:
        """One call: every outcome takes the injected latency; timeouts first, then errors, by their ratios."""
        cfg = self.config
        started = time.monotonic()
        wait(min(cfg.llm_latency, MAX_INJECTED_DELAY_S))
        draw = random.random()
        if draw < cfg.llm_timeout_ratio:
            outcome = "timeout"
        elif draw < cfg.llm_timeout_ratio + cfg.llm_error_ratio:
            outcome = "error"
        else:
            outcome = "success"
        took = time.monotonic() - started
        with self._lock:
            self._llm_requests.inc(provider, outcome)
            self._llm_durations.observe(took, provider)
        return outcome

    def lookup_cache(self) -> bool:
        hit = random.random() < self.config.cache_hit_ratio
        with self._lock:
            (self._cache_hits if hit else self._cache_misses).inc()
        return hit

    def _holding_db_connection(self, work: Callable[[], object]) -> object:
        with self._lock:
            self._db_busy += 1
        try:
            return work()
        finally:
            with self._lock:
                self._db_busy -= 1

    def background_work(self, wait: Wait) -> None:
        def work() -> None:
            self.lookup_cache()
            self.call_llm(LLM_PROVIDERS[0], wait)

        self._holding_db_connection(work)

    def dedicated_work(self, query: dict, wait: Wait) -> tuple[int, dict]:
        provider = self._choice(query, "provider", LLM_PROVIDERS)
        outcome = str(self._holding_db_connection(lambda: self.call_llm(provider, wait)))
        return {"success": 200, "error": 502, "timeout": 504}[outcome], {"provider": provider, "outcome": outcome}


METRICS_BY_DIALECT: dict[str, type[Metrics]] = {
    cls.dialect: cls for cls in (Metrics, HelloAgentsMetrics, AstronAgentMetrics, HeartRuleMetrics)
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-backend"
    server: DemoServer

    def version_string(self) -> str:
        return self.server_version

    # --- connection life cycle (tracked for graceful shutdown) ---------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.config.keepalive_timeout
        super().setup()
        self.server.track(self, "idle")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def handle_one_request(self) -> None:
        self.server.track(self, "idle")
        if self.server.draining.is_set():
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        # The request line has been read: from here on this connection carries an in-flight request.
        self.server.track(self, "busy")
        self._t0 = time.monotonic()
        self._status = 0
        self._sent = 0
        return super().parse_request()

    # --- logging ---------------------------------------------------------------------------------------

    def log_request(self, code="-", size="-") -> None:  # replaced by access_log()
        pass

    def log_message(self, format: str, *args) -> None:  # errors from the base class go to stderr
        sys.stderr.write(f"demo-backend: {self.address_string()} {format % args}\n")
        sys.stderr.flush()

    def access_log(self, duration: float) -> None:
        line = '{} - - [{}] "{}" {} {} "{}" "{}" rt={:.3f} rid={} v={}\n'.format(
            self.client_address[0],
            time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            self.requestline.replace('"', "%22"),
            self._status,
            self._sent,
            (self.headers.get("Referer") or "-").replace('"', "%22"),
            (self.headers.get("User-Agent") or "-").replace('"', "%22"),
            duration,
            self.headers.get("X-Request-ID") or "-",
            self.server.config.version,
        )
        with _log_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    # --- responses -------------------------------------------------------------------------------------

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self.send_response(status)
        rid = self.headers.get("X-Request-ID")
        if rid:
            headers.setdefault("X-Request-ID", rid)
        if self.server.draining.is_set():
            headers["Connection"] = "close"
        if self.server.config.service:
            headers.setdefault("X-Service", self.server.config.service)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._start(
            status, {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store"}
        )
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, (json.dumps(obj, separators=(",", ":")) + "\n").encode(), "application/json")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise HTTPError(400, "truncated chunked body")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HTTPError(400, "bad chunk size") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise HTTPError(413, "body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if n < 0:
            raise HTTPError(400, "bad Content-Length")
        if n > MAX_BODY:
            raise HTTPError(413, "body too large")
        return self.rfile.read(n)

    # --- dispatch --------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_GET
    do_HEAD = do_GET

    def _dispatch(self) -> None:
        cfg = self.server.config
        parts = urlsplit(self.path)
        path = parts.path or "/"
        query = parse_qs(parts.query)
        metrics = self.server.metrics
        route = self._route_label(path, metrics.work_path)
        metrics.begin()
        try:
            try:
                body = self._read_body()
            except HTTPError:
                self.close_connection = True  # framing of the rest of the stream is unknown
                raise
            if path.startswith("/api/") and cfg.fail_ratio > 0 and random.random() < cfg.fail_ratio:
                raise HTTPError(500, "injected failure (APP_FAIL_RATIO)")
            if route in API_ROUTES:
                metrics.background_work(self.server.cut.wait)  # the platform's share of the request (agentchat: none)
            if path == "/health":
                self._health()
            elif path == "/metrics":
                self._send(200, self.server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path in SSE_PATHS and self.command in ("GET", "POST"):
                self._sse(query)
            elif path == WS_PATH and self.command == "GET":
                self._websocket()
            elif path == FAULTS_PATH and self.command in ("GET", "HEAD", "POST"):
                if self.command == "POST":
                    self.server.set_faults(query)
                self._json(200, self.server.faults())
            elif path == metrics.work_path and self.command in ("GET", "POST"):
                self._json(*metrics.dedicated_work(query, self.server.cut.wait))
            elif path == "/api/version":
                self._json(200, {"version": cfg.version, "hostname": socket.gethostname()})
            elif path == "/api/echo":
                self._json(
                    200,
                    {
                        "method": self.command,
                        "path": path,
                        "query": parts.query,
                        "request_id": self.headers.get("X-Request-ID"),
                        "body_length": len(body),
                        "content_type": self.headers.get("Content-Type"),
                        "forwarded_for": self.headers.get("X-Forwarded-For"),
                        "version": cfg.version,
                        "hostname": socket.gethostname(),
                    },
                )
            elif path == "/api/slow":
                ms = self._number(query, "ms", 1000, 0, 600_000)
                time.sleep(ms / 1000.0)
                self._json(200, {"slept_ms": int(ms), "version": cfg.version})
            elif path == "/api/fail":
                code = int(self._number(query, "code", 500, 100, 599))
                if code < 200 or code in (204, 304):
                    raise HTTPError(400, "code must be 200..599 and carry a body (not 204/304)")
                self._json(code, {"status": code, "version": cfg.version})
            elif path == "/":
                self._json(
                    200,
                    {
                        "service": "demo-backend",
                        "version": cfg.version,
                        "endpoints": [
                            "/health",
                            "/metrics",
                            "/api/version",
                            "/api/echo",
                            "/api/slow?ms=N",
                            "/api/fail?code=N",
                            *SSE_PATHS,
                            WS_PATH,
                            FAULTS_PATH,
                            *([metrics.work_path] if metrics.work_path else []),
                        ],
                    },
                )
            else:
                raise HTTPError(404, "not found")
        except HTTPError as err:
            if self._status:  # headers already sent (cannot happen for HTTPError today)
                self.close_connection = True
            else:
                self._json(err.status, {"error": err.message, "status": err.status, "version": cfg.version})
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._status = self._status or 499  # client went away
        finally:
            duration = time.monotonic() - self._t0
            self.server.metrics.observe(self.command, route, self._status or 500, duration)
            self.access_log(duration)

    @staticmethod
    def _route_label(path: str, work_path: str | None = None) -> str:
        if path in ("/", "/health", "/metrics", WS_PATH, FAULTS_PATH, work_path) or path in API_ROUTES + SSE_PATHS:
            return path
        return "/api/other" if path.startswith("/api/") else "other"

    @staticmethod
    def _number(query: dict, name: str, default: float, lo: float, hi: float) -> float:
        raw = (query.get(name) or [None])[0]
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise HTTPError(400, f"{name} must be a number") from None
        if not lo <= value <= hi:
            raise HTTPError(400, f"{name} must be between {lo:g} and {hi:g}")
        return value

    def _health(self) -> None:
        cfg = self.server.config
        if cfg.broken and time.monotonic() - self.server.started > cfg.broken_after:
            self._json(503, {"status": "fail", "version": cfg.version, "reason": "broken build (APP_BROKEN=1)"})
        else:
            self._json(200, {"status": "ok", "version": cfg.version})

    def _sse(self, query: dict) -> None:
        cfg = self.server.config
        events = int(self._number(query, "events", 5, 0, 100_000))
        interval = self._number(query, "interval", 0.2, 0, 60)
        chunked = self.request_version == "HTTP/1.1"
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Connection"] = "close"
            self.close_connection = True
        self._start(200, headers)
        if self.command == "HEAD":
            return

        def emit(text: str) -> None:
            data = text.encode()
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            self.wfile.flush()
            self._sent += len(data)

        self.wfile.flush()
        end: dict = {"events": events, "version": cfg.version}
        for i in range(events):
            if self.server.cut.is_set():
                # The shutdown grace is over: a final event, then the clean end of the body (not a reset).
                end = {"events": i, "version": cfg.version, "cut": "shutdown"}
                break
            emit("data: " + json.dumps({"n": i, "version": cfg.version}, separators=(",", ":")) + "\n\n")
            if interval and i < events - 1:
                self.server.cut.wait(interval)
        emit("event: end\ndata: " + json.dumps(end, separators=(",", ":")) + "\n\n")
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # --- WebSocket (RFC 6455): the handshake, then frames on the same connection ----------------------

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key") or ""
        upgrade = (self.headers.get("Upgrade") or "").lower()
        connection = (self.headers.get("Connection") or "").lower()
        if upgrade != "websocket" or "upgrade" not in connection or not key:
            raise HTTPError(400, "a WebSocket handshake needs Upgrade: websocket, Connection: upgrade and a key")
        if (self.headers.get("Sec-WebSocket-Version") or "") != "13":
            raise HTTPError(400, "Sec-WebSocket-Version must be 13")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self._status = 101
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(None)  # a session may stay quiet longer than the keep-alive timeout
        session = WebSocketSession(self)
        self.server.sessions_add(session)
        try:
            session.serve()
        finally:
            self.server.sessions_remove(session)


class WebSocketSession:
    """One accepted WebSocket: echoes messages; `close()` (from the shutdown) sends a close frame."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.write_lock = threading.Lock()
        self.closing = False

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One unmasked frame (a server never masks), FIN set."""
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 1 << 16:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        with self.write_lock:
            self.handler.wfile.write(head + payload)
            self.handler.wfile.flush()
            self.handler._sent += len(head) + n

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            self.send(0x8, code.to_bytes(2, "big") + reason.encode())
        except OSError:
            pass

    def _read_exactly(self, n: int) -> bytes:
        data = self.handler.rfile.read(n)
        if len(data) < n:
            raise ConnectionResetError("WebSocket closed in the middle of a frame")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exactly(2)
        fin, opcode, masked, n = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exactly(8), "big")
        if n > WS_MAX_MESSAGE or not masked:  # RFC 6455 5.1: a client masks every frame
            raise HTTPError(400, "WebSocket frame unmasked or larger than %d bytes" % WS_MAX_MESSAGE)
        mask = self._read_exactly(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read_exactly(n)))
        return fin, opcode, payload

    def serve(self) -> None:
        message, message_opcode = b"", 0
        while True:
            try:
                fin, opcode, payload = self._frame()
            except HTTPError:
                self.close(1002, "protocol error")
                return
            if opcode == 0x8:  # close: answer it (unless we began), then the connection ends
                if not self.closing:
                    self.close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000, "")
                return
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                message, message_opcode = payload, opcode
            elif opcode == 0x0:
                message += payload
            if fin and message_opcode and not self.closing:
                self.send(message_opcode, message)
                message, message_opcode = b"", 0


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], config: Config) -> None:
        config.dialect = check_dialect(config.dialect)
        self.config = config
        self.metrics = METRICS_BY_DIALECT[config.dialect](config)
        self._knobs = {knob.env: knob for knob in knobs_of(config.dialect)}
        self._knob_starts = {knob.env: getattr(config, knob.field) for knob in self._knobs.values()}
        self._knobs_lock = threading.Lock()
        self.started = time.monotonic()
        self.draining = threading.Event()
        self.cut = threading.Event()  # the shutdown grace is over: end streams and sessions now
        self._sessions: set[WebSocketSession] = set()
        self._conns: dict[Handler, str] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    # --- the fault knobs: started from the environment, changed by POST /faults ----------------------------

    def faults(self) -> dict:
        with self._knobs_lock:
            values = {env: getattr(self.config, knob.field) for env, knob in self._knobs.items()}
        return {"dialect": self.config.dialect, "faults": values, "max_delay_s": MAX_INJECTED_DELAY_S}

    def set_faults(self, query: dict) -> None:
        """Checks every value first (400 naming the knob, nothing changed), then applies them together."""
        reset = (query.get("reset") or ["0"])[-1].strip().lower() in ("1", "true", "yes", "on")
        wanted: dict[str, float | int] = dict(self._knob_starts) if reset else {}
        for env, raw_values in query.items():
            if env == "reset":
                continue
            knob = self._knobs.get(env)
            if knob is None:
                owner = next((k.dialect for k in FAULT_KNOBS if k.env == env), None)
                why = f"a {owner} knob" if owner else "not a fault knob"
                raise HTTPError(
                    400,
                    f"{env} is {why}; this app speaks {self.config.dialect} (APP_METRICS_DIALECT), "
                    f"whose knobs are {', '.join(self._knobs)}",
                )
            wanted[env] = self._knob_value(knob, raw_values[-1])
        with self._knobs_lock:
            for env, value in wanted.items():
                setattr(self.config, self._knobs[env].field, value)
        if wanted:
            changes = " ".join(f"{env}={value}" for env, value in wanted.items())
            print(f"demo-backend: faults set{' after reset' if reset else ''}: {changes}", flush=True)

    @staticmethod
    def _knob_value(knob: FaultKnob, raw: str) -> float | int:
        try:
            value = float(raw)
        except ValueError:
            raise HTTPError(400, f"{knob.env} must be a number, not {raw!r}") from None
        if not knob.lo <= value <= knob.hi or (knob.integer and not value.is_integer()):
            kind = "an integer" if knob.integer else "a number"
            raise HTTPError(400, f"{knob.env} must be {kind} from {knob.lo:g} to {knob.hi:g}, not {raw!r}")
        return int(value) if knob.integer else value

    def track(self, handler: Handler, state: str) -> None:
        with self._conns_lock:
            self._conns[handler] = state

    def untrack(self, handler: Handler) -> None:
        with self._conns_lock:
            self._conns.pop(handler, None)

    def sessions_add(self, session: WebSocketSession) -> None:
        with self._conns_lock:
            self._sessions.add(session)
        if self.cut.is_set():
            session.close(1001, "server shutting down")

    def sessions_remove(self, session: WebSocketSession) -> None:
        with self._conns_lock:
            self._sessions.discard(session)

    def cut_streams(self) -> None:
        """The grace is over: SSE streams send their final event, WebSocket sessions get a close frame 1001."""
        self.cut.set()
        with self._conns_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close(1001, "server shutting down")

    def busy(self) -> int:
        with self._conns_lock:
            return sum(1 for state in self._conns.values() if state == "busy")

    def begin_drain(self) -> None:
        """Stop accepting and close idle keep-alive connections; in-flight requests go on."""
        self.draining.set()
        self.shutdown()  # returns once serve_forever() has left its loop
        self.server_close()  # the listening socket: new connections are refused from here on
        with self._conns_lock:
            idle = [h for h, state in self._conns.items() if state == "idle"]
        for handler in idle:
            try:
                # SHUT_RD wakes a reader blocked on the next request line; a response being written is unaffected.
                handler.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def wait_drained(self, grace: float) -> bool:
        deadline = time.monotonic() + grace
        while self.busy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as err:
        sys.stderr.write(f"demo-backend: refusing to start: {err}\n")
        return 2
    host = os.environ.get("HOST", "0.0.0.0")
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        sys.stderr.write(f"demo-backend: PORT={os.environ.get('PORT')!r} is not a port number\n")
        return 2
    server = DemoServer((host, port), config)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    print(
        f"demo-backend {config.version} listening on {host}:{server.server_port} "
        f"(broken={int(config.broken)} fail_ratio={config.fail_ratio} grace={config.shutdown_grace}s "
        f"dialect={config.dialect})",
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    name = signal.Signals(received[0]).name if received else "signal"
    print(
        f"demo-backend: {name} received, draining {server.busy()} in-flight request(s) "
        f"for up to {config.shutdown_grace:g}s",
        flush=True,
    )
    server.begin_drain()
    if server.wait_drained(config.shutdown_grace):
        print("demo-backend: drained, exiting", flush=True)
        return 0
    print(
        f"demo-backend: grace period over with {server.busy()} request(s) in flight: ending streams "
        "(final event) and WebSocket sessions (close 1001)",
        flush=True,
    )
    server.cut_streams()
    if server.wait_drained(CUT_WAIT_S):
        print("demo-backend: streams ended, exiting", flush=True)
    else:
        print(f"demo-backend: exiting with {server.busy()} request(s) still in flight", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
