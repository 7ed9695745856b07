# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Health probe definitions: the four probe types, their validation from raw dicts, and their results.

Private to this collection: not a public API, it may change in any release.

_probe_checks runs one attempt of each type; _probes runs a list concurrently with retries. Standard library
only.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import shlex
import typing as t
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import urlsplit

PROBE_TYPES = ("http", "tcp", "container", "exec")
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 0
DEFAULT_DELAY = 1.0

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


def _whole(value: t.Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


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

    def _convert(self, key: str, convert: t.Callable[[t.Any], t.Any], kind: str) -> t.Any:
        """The field through convert (None stays None); booleans are no numbers here."""
        value = self.get(key)
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            return convert(value)
        except (TypeError, ValueError):
            raise self.error("'%s' must be %s, got %r" % (key, kind, value)) from None

    def number(self, key: str, minimum: float, exclusive: bool = False) -> float | None:
        number = self._convert(key, float, "a number")
        if number is not None and (number < minimum or (exclusive and number == minimum)):
            raise self.error("'%s' must be %s %s, got %r" % (key, ">" if exclusive else ">=", minimum, self.get(key)))
        return number

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
        number = self._convert(key, _whole, "an integer")
        if number is not None and (
            (minimum is not None and number < minimum) or (maximum is not None and number > maximum)
        ):
            bounds = "between %s and %s" % (minimum, maximum) if maximum is not None else ">= %s" % minimum
            raise self.error("'%s' must be %s, got %r" % (key, bounds, self.get(key)))
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


def _check_fields(probe_type: str, f: _Fields) -> None:
    """Unknown fields, missing required ones, and fields of another type that hold something are errors."""
    raw = f.raw
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


def _http_probe(f: _Fields, common: dict[str, t.Any]) -> HttpProbe:
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
    codes = tuple(t.cast(int, _Fields(f.index, {"status": code}).integer("status", 100, 599)) for code in statuses)
    headers = f.get("headers") or {}
    if not isinstance(headers, dict):
        raise f.error("'headers' must be a dict of header name to value, got %r" % (headers,))
    return HttpProbe(
        url=url,
        method=(f.string("method") or "GET").upper(),
        status=codes,
        body_pattern=f.pattern("body_pattern"),
        latency_budget_ms=f.number("latency_budget_ms", 0, exclusive=True),
        headers={str(k): str(v) for k, v in headers.items()},
        validate_certs=f.boolean("validate_certs"),
        follow_redirects=f.boolean("follow_redirects"),
        use_proxy=f.boolean("use_proxy"),
        **common,
    )


def _tcp_probe(f: _Fields, common: dict[str, t.Any]) -> TcpProbe:
    return TcpProbe(host=f.string("host") or "", port=t.cast(int, f.integer("port", 1, 65535)), **common)


def _container_probe(f: _Fields, common: dict[str, t.Any]) -> ContainerProbe:
    return ContainerProbe(container=f.string("container") or "", max_restarts=f.integer("max_restarts", 0), **common)


def _exec_probe(f: _Fields, common: dict[str, t.Any]) -> ExecProbe:
    command = f.raw.get("command")
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
        **common,
    )


_BUILDERS: dict[str, t.Callable[[_Fields, dict[str, t.Any]], Probe]] = {
    "http": _http_probe,
    "tcp": _tcp_probe,
    "container": _container_probe,
    "exec": _exec_probe,
}


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
    _check_fields(probe_type, f)
    common: dict[str, t.Any] = dict(
        name=f.string("name") or _derived_name(probe_type, f),
        timeout=f.number("timeout", 0, exclusive=True),
        retries=f.integer("retries", minimum=0),
        delay=f.number("delay", 0),
    )
    return _BUILDERS[probe_type](f, common)


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
