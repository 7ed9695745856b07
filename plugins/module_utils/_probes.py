# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Health probes (http, tcp, container, exec) run concurrently, with results an on-call person can act on.

Private to this collection: not a public API, it may change in any release.

Used by the health_check module and by the modules that gate upgrades. Standard library only: target hosts
have neither requests nor the docker SDK.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import http.client
import re
import shlex
import socket
import ssl
import threading
import time
import typing as t
import urllib.error
import urllib.request
from concurrent.futures import ALL_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import urlsplit

from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerConflict,
    DockerError,
    DockerNotFound,
    DockerTimeout,
)

PROBE_TYPES = ("http", "tcp", "container", "exec")
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 0
DEFAULT_DELAY = 1.0
# Probes mostly wait on I/O: one thread each, so 50 probes take as long as the slowest (DESIGN.md target).
MAX_DEFAULT_WORKERS = 64
# Enough of a body to match a pattern against; an endless (SSE) body must not keep a probe reading forever.
BODY_LIMIT = 1024 * 1024
EVIDENCE_CHARS = 2000
HEALTH_LOG_ENTRIES = 5
LOG_TAIL_LINES = 20

# Fields every probe accepts, and the ones each type needs or accepts besides.
COMMON_FIELDS = ("name", "type", "timeout", "retries", "delay")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "http": ("url",),
    "tcp": ("host", "port"),
    "container": ("container",),
    "exec": ("container", "command"),
}
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "http": (
        "method",
        "status",
        "body_pattern",
        "latency_budget_ms",
        "headers",
        "validate_certs",
        "follow_redirects",
        "use_proxy",
    ),
    "tcp": (),
    "container": ("max_restarts",),
    "exec": ("expect_rc", "stdout_pattern"),
}
# Defaults of type-specific fields. The module's argument spec fills them into every probe, so a field that
# does not apply to a probe's type is only an error when it holds something else than its default.
FIELD_DEFAULTS: dict[str, t.Any] = {
    "timeout": DEFAULT_TIMEOUT,
    "retries": DEFAULT_RETRIES,
    "delay": DEFAULT_DELAY,
    "method": "GET",
    "status": [200],
    "validate_certs": True,
    "follow_redirects": False,
    "use_proxy": True,
    "expect_rc": 0,
}
ALL_FIELDS = frozenset(COMMON_FIELDS).union(*REQUIRED_FIELDS.values(), *OPTIONAL_FIELDS.values())


class ProbeConfigError(ValueError):
    """A probe definition is invalid; the message names the probe index and the field."""


# --------------------------------------------------------------------------------------------------------
# Probe definitions
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What every probe has: a name, a per-attempt timeout and a retry policy."""

    name: str
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    delay: float = DEFAULT_DELAY

    probe_type: t.ClassVar[str] = ""

    @property
    def target(self) -> str:
        raise NotImplementedError

    @property
    def worst_case_s(self) -> float:
        """Longest time the probe may take with every retry used."""
        return self.timeout * (self.retries + 1) + self.delay * self.retries


@dataclass(frozen=True)
class HttpProbe(Probe):
    url: str = ""
    method: str = "GET"
    status: tuple[int, ...] = (200,)
    body_pattern: str | None = None
    latency_budget_ms: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    validate_certs: bool = True
    follow_redirects: bool = False
    use_proxy: bool = True

    probe_type: t.ClassVar[str] = "http"

    @property
    def target(self) -> str:
        host = self.headers.get("Host") or next((v for k, v in self.headers.items() if k.lower() == "host"), None)
        return "%s %s%s" % (self.method, self.url, " (Host: %s)" % host if host else "")


@dataclass(frozen=True)
class TcpProbe(Probe):
    host: str = ""
    port: int = 0

    probe_type: t.ClassVar[str] = "tcp"

    @property
    def target(self) -> str:
        return "%s:%s" % ("[%s]" % self.host if ":" in self.host else self.host, self.port)


@dataclass(frozen=True)
class ContainerProbe(Probe):
    container: str = ""
    max_restarts: int | None = None

    probe_type: t.ClassVar[str] = "container"

    @property
    def target(self) -> str:
        return self.container


@dataclass(frozen=True)
class ExecProbe(Probe):
    container: str = ""
    command: tuple[str, ...] = ()
    expect_rc: int = 0
    stdout_pattern: str | None = None

    probe_type: t.ClassVar[str] = "exec"

    @property
    def target(self) -> str:
        return "%s: %s" % (self.container, shlex.join(self.command))


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Outcome of one probe (its last attempt when retried)."""

    name: str
    type: str
    target: str
    ok: bool
    status: int | str | None = None  # HTTP code, 'open', container state, exec exit code
    health: str | None = None  # Docker health status of a container probe, when it has a healthcheck
    latency_ms: float | None = None
    attempts: int = 1
    detail: str = ""
    error: str | None = None
    evidence: dict[str, t.Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)


@dataclass
class HealthReport:
    results: list[ProbeResult]
    elapsed_ms: float = 0.0

    @property
    def healthy(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failed(self) -> list[ProbeResult]:
        return [result for result in self.results if not result.ok]

    @property
    def failed_probes(self) -> list[str]:
        return [result.name for result in self.failed]

    @property
    def summary(self) -> str:
        total = len(self.results)
        healthy = total - len(self.failed)
        text = "%d/%d probes healthy" % (healthy, total)
        if self.failed:
            text += "; failing: %s" % ", ".join(self.failed_probes)
        return text

    def failure_message(self) -> str:
        """One line naming every failing probe, what was probed and why it failed."""
        parts = []
        for result in self.failed:
            tries = " (after %d attempts)" % result.attempts if result.attempts > 1 else ""
            parts.append("[%s] %s %s: %s%s" % (result.name, result.type, result.target, result.error, tries))
        return "%d of %d probes unhealthy: %s" % (len(self.failed), len(self.results), " | ".join(parts))

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "probes": [result.to_dict() for result in self.results],
            "healthy": self.healthy,
            "failed_probes": self.failed_probes,
            "summary": self.summary,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


# --------------------------------------------------------------------------------------------------------
# Validation: raw dicts (module parameters or another module's plan) -> typed probes
# --------------------------------------------------------------------------------------------------------


def _is_set(key: str, value: t.Any) -> bool:
    """True when a field carries something else than nothing or its default."""
    if value is None:
        return False
    if key in FIELD_DEFAULTS:
        default = FIELD_DEFAULTS[key]
        if key == "status":
            return _listify(value) != default
        return value != default
    return True


def _listify(value: t.Any) -> list[t.Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class _Fields:
    """Reads and type-checks the fields of probe number `index`; every error names the probe and field."""

    def __init__(self, index: int, raw: dict[str, t.Any]):
        self.index = index
        self.raw = raw

    def error(self, message: str) -> ProbeConfigError:
        return ProbeConfigError("probes[%d]: %s" % (self.index, message))

    def get(self, key: str) -> t.Any:
        value = self.raw.get(key)
        return FIELD_DEFAULTS.get(key) if value is None else value

    def string(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error("'%s' must be a non-empty string, got %r" % (key, value))
        return value

    def number(self, key: str, minimum: float, exclusive: bool = False) -> float | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise self.error("'%s' must be a number, got %r" % (key, value)) from None
        if number < minimum or (exclusive and number == minimum):
            raise self.error("'%s' must be %s %s, got %r" % (key, ">" if exclusive else ">=", minimum, value))
        return number

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError):
            raise self.error("'%s' must be an integer, got %r" % (key, value)) from None
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            bounds = "between %s and %s" % (minimum, maximum) if maximum is not None else ">= %s" % minimum
            raise self.error("'%s' must be %s, got %r" % (key, bounds, value))
        return number

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
            return value.lower() in ("yes", "true", "on", "1")
        raise self.error("'%s' must be a boolean, got %r" % (key, value))

    def pattern(self, key: str) -> str | None:
        value = self.string(key)
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise self.error("'%s' is not a valid regular expression (%s): %r" % (key, exc, value)) from None
        return value


def _derived_name(probe_type: str, f: _Fields) -> str:
    raw = f.raw
    if probe_type == "http":
        return str(raw.get("url"))
    if probe_type == "tcp":
        return "tcp:%s:%s" % (raw.get("host"), raw.get("port"))
    if probe_type == "container":
        return "container:%s" % raw.get("container")
    return "exec:%s:%s" % (raw.get("container"), shlex.join(str(arg) for arg in raw.get("command") or []))


def parse_probe(index: int, raw: t.Any) -> Probe:
    """Validate one probe definition and return its typed form."""
    if not isinstance(raw, dict):
        raise ProbeConfigError("probes[%d]: must be a dict with at least 'type', got %r" % (index, raw))
    f = _Fields(index, raw)
    probe_type = raw.get("type")
    if probe_type is None:
        raise f.error("'type' is required (one of: %s)" % ", ".join(PROBE_TYPES))
    if probe_type not in PROBE_TYPES:
        raise f.error("unknown type %r (expected one of: %s)" % (probe_type, ", ".join(PROBE_TYPES)))

    unknown = sorted(key for key in raw if key not in ALL_FIELDS)
    if unknown:
        raise f.error("unknown field(s) %s" % ", ".join(repr(key) for key in unknown))
    for key in REQUIRED_FIELDS[probe_type]:
        if raw.get(key) in (None, "", []):
            raise f.error("type '%s' needs '%s'" % (probe_type, key))
    allowed = set(COMMON_FIELDS) | set(REQUIRED_FIELDS[probe_type]) | set(OPTIONAL_FIELDS[probe_type])
    foreign = sorted(key for key, value in raw.items() if key not in allowed and _is_set(key, value))
    if foreign:
        raise f.error("field(s) %s do not apply to type '%s'" % (", ".join(repr(key) for key in foreign), probe_type))

    common = dict(
        name=f.string("name") or _derived_name(probe_type, f),
        timeout=f.number("timeout", 0, exclusive=True),
        retries=f.integer("retries", minimum=0),
        delay=f.number("delay", 0),
    )

    if probe_type == "http":
        url = f.string("url") or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise f.error("'url' must be an absolute http:// or https:// URL, got %r" % url)
        try:
            valid_port = parts.port is None or parts.port > 0
        except ValueError:  # not a number, or above 65535
            valid_port = False
        if not valid_port:
            raise f.error("'url' has an invalid port: %r" % url)
        statuses = _listify(f.get("status"))
        if not statuses:
            raise f.error("'status' must list at least one expected HTTP status code")
        codes = tuple(_Fields(index, {"status": code}).integer("status", 100, 599) for code in statuses)
        headers = f.get("headers") or {}
        if not isinstance(headers, dict):
            raise f.error("'headers' must be a dict of header name to value, got %r" % (headers,))
        return HttpProbe(
            url=url,
            method=(f.string("method") or "GET").upper(),
            status=t.cast("tuple[int, ...]", codes),
            body_pattern=f.pattern("body_pattern"),
            latency_budget_ms=f.number("latency_budget_ms", 0, exclusive=True),
            headers={str(k): str(v) for k, v in headers.items()},
            validate_certs=f.boolean("validate_certs"),
            follow_redirects=f.boolean("follow_redirects"),
            use_proxy=f.boolean("use_proxy"),
            **common,  # type: ignore[arg-type]
        )
    if probe_type == "tcp":
        return TcpProbe(host=f.string("host") or "", port=t.cast(int, f.integer("port", 1, 65535)), **common)  # type: ignore[arg-type]
    if probe_type == "container":
        return ContainerProbe(
            container=f.string("container") or "", max_restarts=f.integer("max_restarts", 0), **common
        )  # type: ignore[arg-type]

    command = raw.get("command")
    if isinstance(command, str):
        raise f.error("'command' must be a list (argv), e.g. ['mysqladmin', 'ping'], got the string %r" % command)
    if not isinstance(command, (list, tuple)) or not all(isinstance(arg, (str, int, float)) for arg in command):
        raise f.error("'command' must be a list of strings (argv), got %r" % (command,))
    if len(command) == 1 and " " in str(command[0]).strip():
        # A YAML string given to a list option arrives as one argv element; exec would look for a binary
        # literally named "mysqladmin ping".
        raise f.error(
            "'command' is one argv element with spaces (%r): write it as a list, e.g. %r, or use "
            "['sh', '-c', '...'] for a shell command" % (command[0], str(command[0]).split())
        )
    return ExecProbe(
        container=f.string("container") or "",
        command=tuple(str(arg) for arg in command),
        expect_rc=t.cast(int, f.integer("expect_rc")),
        stdout_pattern=f.pattern("stdout_pattern"),
        **common,  # type: ignore[arg-type]
    )


def parse_probes(raw_probes: t.Any) -> list[Probe]:
    """Validate a list of probe definitions; names are made unique, explicit duplicates are an error."""
    if not isinstance(raw_probes, (list, tuple)):
        raise ProbeConfigError("probes must be a list of probe definitions, got %r" % (raw_probes,))
    if not raw_probes:
        raise ProbeConfigError("probes is empty: give at least one probe")
    probes: list[Probe] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_probes):
        probe = parse_probe(index, raw)
        if probe.name in seen:
            if isinstance(raw, dict) and raw.get("name"):
                raise ProbeConfigError(
                    "probes[%d]: name %r is already used by probes[%d]; names must be unique"
                    % (index, probe.name, seen[probe.name])
                )
            probe = replace(probe, name="%s#%d" % (probe.name, index))
        seen[probe.name] = index
        probes.append(probe)
    return probes


# --------------------------------------------------------------------------------------------------------
# Checks: one attempt each
# --------------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _tail(text: str, limit: int = EVIDENCE_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[:limit] + "..."


def _describe_os_error(exc: BaseException, where: str, timeout: float) -> str:
    """Turn a socket-level failure into words: refused, timed out, name resolution, TLS."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe_os_error(reason, where, timeout)
        return "cannot reach %s: %s" % (where, reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out after %g s (%s)" % (timeout, where)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s: nothing listens there" % where
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name of %s: %s" % (where, exc.strerror or exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "TLS certificate of %s not trusted: %s (fix the certificate, or set validate_certs: false "
            "for a self-signed one)" % (where, exc.verify_message or exc)
        )
    if isinstance(exc, ssl.SSLError):
        return "TLS error with %s: %s" % (where, exc)
    if isinstance(exc, http.client.RemoteDisconnected):
        return "%s closed the connection without an answer" % where
    if isinstance(exc, ConnectionResetError):
        return "connection reset by %s" % where
    if isinstance(exc, OSError) and exc.strerror:
        return "cannot reach %s: %s" % (where, exc.strerror)
    return "cannot reach %s: %s" % (where, exc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect as what it is (a 3xx status) instead of following it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # pylint: disable=too-many-arguments
        return None


_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


def _ssl_context(validate_certs: bool) -> ssl.SSLContext:
    """Shared per setting: loading the CA store takes tens of ms, too much to repeat for 50 probes."""
    with _SSL_LOCK:
        if validate_certs not in _SSL_CONTEXTS:
            context = ssl.create_default_context()
            if not validate_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _SSL_CONTEXTS[validate_certs] = context
        return _SSL_CONTEXTS[validate_certs]


def _http_opener(probe: HttpProbe) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if probe.url.lower().startswith("https:") or probe.follow_redirects:
        handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(probe.validate_certs)))
    if not probe.use_proxy:
        handlers.append(urllib.request.ProxyHandler({}))
    if not probe.follow_redirects:
        handlers.append(_NoRedirect())
    return urllib.request.build_opener(*handlers)


def _response_socket(resp: t.Any) -> socket.socket | None:
    """The socket under an http.client response (or under the HTTPError wrapping one), if reachable."""
    fp = getattr(resp, "fp", None)
    for candidate in (fp, getattr(fp, "fp", None)):
        sock = getattr(getattr(candidate, "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            return sock
    return None


def _read_body(resp: t.Any, probe: HttpProbe, deadline: float, pattern: re.Pattern[str] | None) -> tuple[bytes, bool]:
    """Read the body until its end, the size limit, or (with a pattern) the first match.

    Returns (body, complete). The per-read socket timeout alone would let a server that trickles bytes keep
    the probe busy forever, so the attempt's deadline is checked between reads.
    """
    body = bytearray()
    reader = getattr(resp, "read1", None) or resp.read
    while len(body) < BODY_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("body not complete")
        sock = _response_socket(resp)
        if sock is not None:
            sock.settimeout(remaining)
        chunk = reader(65536)
        if not chunk:
            return bytes(body), True
        body.extend(chunk)
        if pattern is not None and pattern.search(body.decode("utf-8", errors="replace")):
            return bytes(body), False
    return bytes(body[:BODY_LIMIT]), False


def check_http(probe: HttpProbe) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    pattern = re.compile(probe.body_pattern) if probe.body_pattern else None
    request = urllib.request.Request(probe.url, method=probe.method, headers=dict(probe.headers))
    request.add_header("User-Agent", "opsbook.stack health_check")
    opener = _http_opener(probe)
    started = time.monotonic()
    deadline = started + probe.timeout
    try:
        try:
            resp = opener.open(request, timeout=probe.timeout)
        except urllib.error.HTTPError as exc:
            resp = exc  # an HTTP error status is an answer, judged below like any other
        try:
            code = resp.getcode() if hasattr(resp, "getcode") else resp.code
            body, complete = _read_body(resp, probe, deadline, pattern)
        finally:
            resp.close()
    except (OSError, http.client.HTTPException, urllib.error.URLError) as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.error = result.detail = _describe_os_error(exc, probe.url, probe.timeout)
        return result
    elapsed = time.monotonic() - started
    result.latency_ms = _ms(elapsed)
    result.status = code

    reasons = []
    if code not in probe.status:
        expected = " or ".join(str(c) for c in probe.status)
        reasons.append("HTTP %s (expected %s)" % (code, expected))
        location = resp.headers.get("Location") if getattr(resp, "headers", None) is not None else None
        if location and 300 <= code < 400:
            reasons[-1] += ", redirects to %s (set follow_redirects: true to follow)" % location
    text = body.decode("utf-8", errors="replace")
    if pattern is not None and not pattern.search(text):
        reasons.append(
            "body does not match /%s/%s"
            % (probe.body_pattern, "" if complete else " in its first %d bytes" % len(body))
        )
    if probe.latency_budget_ms is not None and result.latency_ms > probe.latency_budget_ms:
        reasons.append("took %g ms, over the latency budget of %g ms" % (result.latency_ms, probe.latency_budget_ms))

    if reasons:
        result.error = result.detail = "; ".join(reasons)
        result.evidence = {"body": _tail(text, 500)} if text else {}
    else:
        result.ok = True
        result.detail = "HTTP %s in %g ms" % (code, result.latency_ms)
    return result


def check_tcp(probe: TcpProbe) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        sock = socket.create_connection((probe.host, probe.port), timeout=probe.timeout)
    except OSError as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.status = "closed"
        result.error = result.detail = _describe_os_error(exc, probe.target, probe.timeout)
        return result
    result.latency_ms = _ms(time.monotonic() - started)
    sock.close()
    result.ok = True
    result.status = "open"
    result.detail = "port open, connected in %g ms" % result.latency_ms
    return result


def _health_log(health: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    entries = health.get("Log") or []
    return [
        {
            "start": entry.get("Start"),
            "end": entry.get("End"),
            "exit_code": entry.get("ExitCode"),
            "output": _tail((entry.get("Output") or "").strip(), 500),
        }
        for entry in entries[-HEALTH_LOG_ENTRIES:]
    ]


def _container_failure(probe: ContainerProbe, info: dict[str, t.Any]) -> list[str]:
    state = info.get("State") or {}
    status = state.get("Status") or ("running" if state.get("Running") else "unknown")
    health = state.get("Health") or {}
    health_status = health.get("Status")
    reasons = []
    if status == "restarting" or state.get("Restarting"):
        reasons.append(
            "container is restarting (last exit code %s)%s"
            % (state.get("ExitCode"), ", OOM killed" if state.get("OOMKilled") else "")
        )
    elif not state.get("Running") or status != "running":
        what = "container is %s" % status
        if status in ("exited", "dead"):
            what += " (exit code %s%s, finished %s)" % (
                state.get("ExitCode"),
                ", OOM killed" if state.get("OOMKilled") else "",
                state.get("FinishedAt"),
            )
        if state.get("Error"):
            what += ": %s" % state["Error"]
        reasons.append(what)
    if health_status and health_status != "none" and not reasons:
        log = health.get("Log") or []
        last = log[-1] if log else {}
        last_check = ""
        if last:
            output = _last_line(last.get("Output") or "")
            last_check = "; last check exit %s%s" % (last.get("ExitCode"), ": %s" % output if output else "")
        if health_status == "starting":
            reasons.append("health is starting: the healthcheck has not passed yet%s" % last_check)
        elif health_status != "healthy":
            reasons.append(
                "health is %s after %s failing checks%s" % (health_status, health.get("FailingStreak", "?"), last_check)
            )
    restarts = info.get("RestartCount") or 0
    if probe.max_restarts is not None and restarts > probe.max_restarts:
        reasons.append("restarted %d times (max_restarts %d)" % (restarts, probe.max_restarts))
    return reasons


def _logs_tail(client: DockerClient, container: str, timeout: float) -> str:
    try:
        stdout, stderr = client.container_logs(container, tail=LOG_TAIL_LINES, timeout=timeout)
    except DockerError as exc:
        return "(logs unavailable: %s)" % exc
    return _tail((stdout + stderr).strip())


def check_container(probe: ContainerProbe, client: DockerClient, final: bool = True) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        info = client.inspect_container(probe.container, timeout=probe.timeout)
    except DockerNotFound:
        result.latency_ms = _ms(time.monotonic() - started)
        result.status = "missing"
        result.error = result.detail = (
            "no container named %r (docker ps -a; is the compose project up?)" % probe.container
        )
        return result
    except DockerError as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.error = result.detail = str(exc)
        return result
    result.latency_ms = _ms(time.monotonic() - started)
    state = info.get("State") or {}
    health = state.get("Health") or {}
    result.status = state.get("Status")
    result.health = health.get("Status") if health.get("Status") not in (None, "none") else None
    result.evidence = {
        "id": (info.get("Id") or "")[:12],
        "image": (info.get("Config") or {}).get("Image"),
        "state": state.get("Status"),
        "started_at": state.get("StartedAt"),
        "restart_count": info.get("RestartCount") or 0,
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
    }
    if health:
        result.evidence["failing_streak"] = health.get("FailingStreak")
        result.evidence["health_log"] = _health_log(health)
    reasons = _container_failure(probe, info)
    if reasons:
        result.error = result.detail = "; ".join(reasons)
        if final:
            result.evidence["logs"] = _logs_tail(client, probe.container, probe.timeout)
    else:
        result.ok = True
        health_text = ", healthy" if result.health else " (no healthcheck)"
        result.detail = "running%s, %d restarts" % (health_text, result.evidence["restart_count"])
    return result


def check_exec(probe: ExecProbe, client: DockerClient) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        outcome = client.exec_run(probe.container, list(probe.command), timeout=probe.timeout)
    except DockerNotFound:
        result.error = "no container named %r (docker ps -a; is the compose project up?)" % probe.container
    except DockerConflict as exc:
        result.error = "cannot exec in container %r: %s" % (probe.container, exc.explanation)
    except DockerTimeout:
        result.error = (
            "command did not finish within %g s (it may still be running inside the container)" % probe.timeout
        )
    except DockerError as exc:
        result.error = str(exc)
    else:
        result.status = outcome.exit_code
        stdout, stderr = outcome.stdout_text, outcome.stderr_text
        result.evidence = {"exit_code": outcome.exit_code, "stdout": _tail(stdout), "stderr": _tail(stderr)}
        reasons = []
        if outcome.exit_code != probe.expect_rc:
            output = _last_line(stderr) or _last_line(stdout)
            reasons.append(
                "exit code %s (expected %s)%s" % (outcome.exit_code, probe.expect_rc, ": %s" % output if output else "")
            )
        if probe.stdout_pattern and not re.search(probe.stdout_pattern, stdout):
            reasons.append("stdout does not match /%s/: %r" % (probe.stdout_pattern, _last_line(stdout, 120)))
        if reasons:
            result.error = "; ".join(reasons)
        else:
            result.ok = True
    result.latency_ms = _ms(time.monotonic() - started)
    result.detail = result.error or "exit code %s in %g ms" % (result.status, result.latency_ms)
    return result


# --------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------


def _attempt(probe: Probe, client_for: t.Callable[[], DockerClient], final: bool) -> ProbeResult:
    try:
        if isinstance(probe, HttpProbe):
            return check_http(probe)
        if isinstance(probe, TcpProbe):
            return check_tcp(probe)
        if isinstance(probe, ContainerProbe):
            return check_container(probe, client_for(), final=final)
        if isinstance(probe, ExecProbe):
            return check_exec(probe, client_for())
        raise TypeError("unknown probe class %s" % type(probe).__name__)
    except DockerError as exc:  # for instance an unsupported docker_host
        return ProbeResult(probe.name, probe.probe_type, probe.target, ok=False, error=str(exc), detail=str(exc))
    except Exception as exc:  # pylint: disable=broad-except
        # One broken probe must not hide the results of the others.
        message = "probe crashed: %s: %s" % (type(exc).__name__, exc)
        return ProbeResult(probe.name, probe.probe_type, probe.target, ok=False, error=message, detail=message)


def run_probe(probe: Probe, client_for: t.Callable[[], DockerClient]) -> ProbeResult:
    """Run a probe, retrying after `delay` seconds up to `retries` times until it passes."""
    attempts = 0
    while True:
        attempts += 1
        final = attempts > probe.retries
        result = _attempt(probe, client_for, final)
        if result.ok or final:
            result.attempts = attempts
            return result
        time.sleep(probe.delay)


class _LazyDockerClient:
    """One client for all probes, created on first use so that http/tcp-only runs never touch Docker."""

    def __init__(self, docker_host: str, factory: t.Callable[[str], DockerClient]):
        self.docker_host = docker_host
        self.factory = factory
        self._client: DockerClient | None = None

    def __call__(self) -> DockerClient:
        if self._client is None:
            self._client = self.factory(self.docker_host)
        return self._client


def run_probes(
    probes: list[Probe],
    docker_host: str = DEFAULT_DOCKER_HOST,
    max_workers: int | None = None,
    client_factory: t.Callable[[str], DockerClient] = DockerClient,
) -> HealthReport:
    """Run all probes concurrently; the wall time is that of the slowest probe, not the sum."""
    started = time.monotonic()
    if not probes:
        return HealthReport([], 0.0)
    workers = max_workers or min(MAX_DEFAULT_WORKERS, len(probes))
    lazy = _LazyDockerClient(docker_host, client_factory)
    if any(isinstance(probe, (ContainerProbe, ExecProbe)) for probe in probes):
        try:
            lazy().negotiate()  # once, before the threads start
        except DockerError:
            pass  # every Docker probe reports the error itself

    # Every check bounds its own I/O; this outer limit only catches what no socket timeout covers
    # (a DNS resolver that hangs), so one stuck probe cannot stall the report.
    limit_s = max(probe.worst_case_s for probe in probes) * (len(probes) / workers if workers < len(probes) else 1)
    limit_s += 10.0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
    try:
        futures = [pool.submit(run_probe, probe, lazy) for probe in probes]
        wait(futures, timeout=limit_s, return_when=ALL_COMPLETED)
        results = []
        for probe, future in zip(probes, futures):
            if future.done():
                results.append(future.result())
            else:
                message = "probe did not finish within %g s (name resolution hanging?)" % limit_s
                results.append(
                    ProbeResult(
                        probe.name, probe.probe_type, probe.target, ok=False, error=message, detail=message, attempts=0
                    )
                )
    finally:
        pool.shutdown(wait=False)
    return HealthReport(results, (time.monotonic() - started) * 1000.0)


def check(
    raw_probes: t.Any,
    docker_host: str = DEFAULT_DOCKER_HOST,
    max_workers: int | None = None,
    client_factory: t.Callable[[str], DockerClient] = DockerClient,
) -> HealthReport:
    """Validate probe definitions (ProbeConfigError) and run them."""
    if max_workers is not None and max_workers < 1:
        raise ProbeConfigError("max_workers must be >= 1, got %r" % max_workers)
    return run_probes(
        parse_probes(raw_probes), docker_host=docker_host, max_workers=max_workers, client_factory=client_factory
    )
