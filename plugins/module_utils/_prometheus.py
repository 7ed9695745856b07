# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Small clients of the Prometheus HTTP API and the Alertmanager v2 API.

Private to this collection: not a public API, it may change in any release.

Used by the prometheus_query and alertmanager_silence modules. Only what the runbooks need: instant queries,
the list of alerts, and creating, finding and expiring silences. Requests go through _http (ansible-core's
``ansible.module_utils.urls``); no third-party packages.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from ansible_collections.opsbook.stack.plugins.module_utils._http import (
    TRANSPORT_ERRORS,
    HttpConfigError,
    HttpSettings,
    open_http,
)

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
EXPECTATIONS = ("any", "empty", "non_empty")
ALERT_STATES = ("firing", "pending")


class ApiError(Exception):
    """The API could not be reached or answered with an error; the message says which and why."""


def request_json(
    settings: HttpSettings, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
) -> Any:
    """Send one request and decode the JSON answer (None for an empty body)."""
    url = settings.base() + path
    if query:
        url += "?" + urlencode(query, doseq=True)
    data = None
    headers = {"Accept": "application/json"}
    headers.update(settings.headers)
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        resp = open_http(settings, method, url, data=data, headers=headers)
        try:
            status, raw = resp.status, resp.read()
        finally:
            resp.close()
    except HttpConfigError as exc:
        raise ApiError("%s %s: %s" % (method, url, exc)) from exc
    except TRANSPORT_ERRORS as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError("%s %s: cannot connect: %s" % (method, url, reason)) from exc
    if not 200 <= status < 300:
        detail = raw.decode("utf-8", "replace")[:500]
        raise ApiError("%s %s: HTTP %d %s" % (method, url, status, detail.strip()))
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError("%s %s: answer is not JSON: %r" % (method, url, raw[:200])) from exc


# --------------------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One series of an instant query result (a scalar or string result has empty labels)."""

    labels: dict[str, str]
    value: float

    def to_dict(self) -> dict:
        value: Any = self.value
        if math.isnan(value) or math.isinf(value):
            value = str(value)
        return {"labels": self.labels, "value": value}


@dataclass
class Assertion:
    """What a query result must look like: empty, non-empty, and/or every value compared to a threshold."""

    expect: str = "any"
    compare: str | None = None
    threshold: float | None = None

    def failures(self, samples: list[Sample]) -> list[str]:
        problems: list[str] = []
        if self.expect == "empty" and samples:
            problems.append("expected no result, got %d: %s" % (len(samples), describe_samples(samples)))
        if self.expect == "non_empty" and not samples:
            problems.append("expected a result, got none")
        if self.compare is not None and self.threshold is not None:
            bad = [s for s in samples if not compare(s.value, self.compare, self.threshold)]
            if bad:
                problems.append(
                    "expected every value %s %s, not so for %s"
                    % (self.compare, _fmt(self.threshold), describe_samples(bad))
                )
        return problems


def _fmt(value: float) -> str:
    return ("%d" % value) if float(value).is_integer() else ("%g" % value)


def compare(value: float, operator: str, threshold: float) -> bool:
    if operator == "==":
        return value == threshold
    if operator == "!=":
        return value != threshold
    if operator == "<":
        return value < threshold
    if operator == "<=":
        return value <= threshold
    if operator == ">":
        return value > threshold
    if operator == ">=":
        return value >= threshold
    raise ValueError("unknown comparison %r, use one of %s" % (operator, ", ".join(COMPARISONS)))


def describe_samples(samples: list[Sample], limit: int = 5) -> str:
    parts = []
    for sample in samples[:limit]:
        labels = ",".join("%s=%r" % (k, v) for k, v in sorted(sample.labels.items()))
        parts.append("{%s} %s" % (labels, _fmt(sample.value) if not math.isnan(sample.value) else "NaN"))
    if len(samples) > limit:
        parts.append("and %d more" % (len(samples) - limit))
    return "; ".join(parts)


def _unwrap(answer: Any, what: str) -> Any:
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ApiError("%s failed: %s" % (what, error))
    return answer.get("data")


def instant_query(settings: HttpSettings, expression: str, at: str | None = None) -> tuple[str, list[Sample]]:
    """Evaluate an expression now (or at `at`); returns the result type and its samples."""
    query = {"query": expression}
    if at:
        query["time"] = at
    data = _unwrap(request_json(settings, "GET", "/api/v1/query", query=query), "query %r" % expression)
    result_type = data.get("resultType", "")
    result = data.get("result")
    samples: list[Sample] = []
    if result_type == "vector":
        for item in result or []:
            samples.append(Sample(labels=dict(item.get("metric", {})), value=float(item["value"][1])))
    elif result_type in ("scalar", "string"):
        try:
            samples.append(Sample(labels={}, value=float(result[1])))
        except ValueError:
            raise ApiError("query %r returned the string %r, not a number" % (expression, result[1])) from None
    elif result_type == "matrix":
        raise ApiError(
            "query %r returned a range vector; give an instant expression (no [range] at the end)" % expression
        )
    return result_type, samples


@dataclass
class Alert:
    name: str
    state: str
    labels: dict[str, str]
    annotations: dict[str, str]
    active_at: str
    value: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "state": self.state,
            "labels": self.labels,
            "annotations": self.annotations,
            "active_at": self.active_at,
            "value": self.value,
        }


def list_alerts(settings: HttpSettings) -> list[Alert]:
    """The alerts Prometheus evaluates as pending or firing right now."""
    data = _unwrap(request_json(settings, "GET", "/api/v1/alerts"), "listing alerts")
    alerts = []
    for item in data.get("alerts", []) or []:
        labels = dict(item.get("labels", {}))
        alerts.append(
            Alert(
                name=labels.get("alertname", ""),
                state=item.get("state", ""),
                labels=labels,
                annotations=dict(item.get("annotations", {})),
                active_at=item.get("activeAt", ""),
                value=str(item.get("value", "")),
            )
        )
    return alerts


def select_alerts(
    alerts: list[Alert], states: list[str], names: list[str] | None, labels: dict[str, str] | None
) -> list[Alert]:
    chosen = []
    for alert in alerts:
        if states and alert.state not in states:
            continue
        if names and alert.name not in names:
            continue
        if labels and any(alert.labels.get(k) != v for k, v in labels.items()):
            continue
        chosen.append(alert)
    return chosen


# --------------------------------------------------------------------------------------------------------
# Alertmanager silences
# --------------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as V(2h), V(1h30m), V(90s)."""
    text = str(text).strip()
    if not text:
        raise ValueError("empty duration")
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or total <= 0:
        raise ValueError("%r is not a duration; write it like 2h, 30m, 1h30m or 90s" % text)
    return total


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def to_api(self) -> dict:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": self.is_equal}

    @classmethod
    def from_api(cls, item: dict) -> Matcher:
        return cls(
            name=item["name"],
            value=item["value"],
            is_regex=bool(item.get("isRegex", False)),
            is_equal=bool(item.get("isEqual", True)),
        )


def matcher_set(matchers: list[Matcher]) -> frozenset:
    return frozenset(matchers)


@dataclass
class Silence:
    silence_id: str
    matchers: list[Matcher]
    starts_at: str
    ends_at: str
    created_by: str
    comment: str
    state: str

    @classmethod
    def from_api(cls, item: dict) -> Silence:
        return cls(
            silence_id=item["id"],
            matchers=[Matcher.from_api(m) for m in item.get("matchers", [])],
            starts_at=item.get("startsAt", ""),
            ends_at=item.get("endsAt", ""),
            created_by=item.get("createdBy", ""),
            comment=item.get("comment", ""),
            state=(item.get("status") or {}).get("state", ""),
        )

    def to_dict(self) -> dict:
        return {
            "id": self.silence_id,
            "matchers": [m.to_api() for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "created_by": self.created_by,
            "comment": self.comment,
            "state": self.state,
        }

    @property
    def live(self) -> bool:
        """Active now or starting later: something an operator would still have to expire."""
        return self.state in ("active", "pending")


def list_silences(settings: HttpSettings) -> list[Silence]:
    answer = request_json(settings, "GET", "/api/v2/silences")
    return [Silence.from_api(item) for item in answer or []]


def get_silence(settings: HttpSettings, silence_id: str) -> Silence | None:
    try:
        return Silence.from_api(request_json(settings, "GET", "/api/v2/silence/%s" % silence_id))
    except ApiError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise


def find_equal(
    silences: list[Silence], matchers: list[Matcher], created_by: str | None = None, comment: str | None = None
) -> list[Silence]:
    """Live silences with exactly these matchers (in any order), and the same author and comment when given."""
    wanted = matcher_set(matchers)
    found = []
    for silence in silences:
        if not silence.live or matcher_set(silence.matchers) != wanted:
            continue
        if created_by is not None and silence.created_by != created_by:
            continue
        if comment is not None and silence.comment != comment:
            continue
        found.append(silence)
    return found


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def create_silence(
    settings: HttpSettings,
    matchers: list[Matcher],
    seconds: float,
    created_by: str,
    comment: str,
    now: float | None = None,
) -> tuple[str, str, str]:
    """Create a silence starting now; returns its id, start and end."""
    start = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    end = start + timedelta(seconds=seconds)
    body = {
        "matchers": [m.to_api() for m in matchers],
        "startsAt": iso(start),
        "endsAt": iso(end),
        "createdBy": created_by,
        "comment": comment,
    }
    answer = request_json(settings, "POST", "/api/v2/silences", body=body)
    if not isinstance(answer, dict) or not answer.get("silenceID"):
        raise ApiError("Alertmanager did not return a silence id: %r" % (answer,))
    return answer["silenceID"], iso(start), iso(end)


def expire_silence(settings: HttpSettings, silence_id: str) -> None:
    request_json(settings, "DELETE", "/api/v2/silence/%s" % silence_id)


@dataclass
class SilenceOutcome:
    changed: bool
    silence_id: str | None = None
    silence: dict | None = None
    expired: list[str] = field(default_factory=list)
    msg: str = ""

    def to_dict(self) -> dict:
        return {
            "changed": self.changed,
            "silence_id": self.silence_id,
            "silence": self.silence,
            "expired": self.expired,
            "msg": self.msg,
        }


def ensure_silence(
    settings: HttpSettings, matchers: list[Matcher], seconds: float, created_by: str, comment: str, check_mode: bool
) -> SilenceOutcome:
    """A live silence with these matchers, author and comment exists afterwards; an equal one is reused."""
    if not matchers:
        raise ValueError("matchers must not be empty: a silence without matchers would silence nothing")
    existing = find_equal(list_silences(settings), matchers, created_by, comment)
    if existing:
        silence = existing[0]
        return SilenceOutcome(
            changed=False,
            silence_id=silence.silence_id,
            silence=silence.to_dict(),
            msg="silence %s already active until %s" % (silence.silence_id, silence.ends_at),
        )
    if check_mode:
        return SilenceOutcome(changed=True, msg="would create a silence for %s" % describe_matchers(matchers))
    silence_id, _start, end = create_silence(settings, matchers, seconds, created_by, comment)
    created = get_silence(settings, silence_id)
    return SilenceOutcome(
        changed=True,
        silence_id=silence_id,
        silence=created.to_dict() if created else None,
        msg="created silence %s until %s" % (silence_id, end),
    )


def remove_silences(
    settings: HttpSettings, silence_id: str | None, matchers: list[Matcher], created_by: str | None, check_mode: bool
) -> SilenceOutcome:
    """Expire one silence by id, or every live silence with exactly these matchers (and author when given)."""
    if silence_id:
        silence = get_silence(settings, silence_id)
        targets = [silence] if silence is not None and silence.live else []
    elif matchers:
        targets = find_equal(list_silences(settings), matchers, created_by)
    else:
        raise ValueError("give silence_id or matchers to say which silence to expire")
    ids = [s.silence_id for s in targets]
    if not ids:
        return SilenceOutcome(changed=False, msg="no live silence matched; nothing to expire")
    if not check_mode:
        for one in ids:
            expire_silence(settings, one)
    verb = "would expire" if check_mode else "expired"
    return SilenceOutcome(
        changed=True, silence_id=ids[0], expired=ids, msg="%s %d silence(s): %s" % (verb, len(ids), ", ".join(ids))
    )


def describe_matchers(matchers: list[Matcher]) -> str:
    ops = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}
    return "{%s}" % ", ".join("%s%s%r" % (m.name, ops[(m.is_regex, m.is_equal)], m.value) for m in matchers)
