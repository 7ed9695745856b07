# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Event-Driven Ansible event source: Alertmanager webhook notifications, one event per group and runbook."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
short_description: Receive Alertmanager webhook notifications as one event per alert group and runbook.
description:
  - An ansible-rulebook event source that listens for Alertmanager webhook notifications (payload version 4)
    on C(POST /) or C(POST /<endpoint>) and puts one event on the queue per alert group (C(groupKey)) and
    C(runbook_id) label.
  - Only alerts whose own status is C(firing) count. Resolved alerts, alerts without a C(runbook_id) label and
    alerts whose C(runbook_id) is not in O(runbooks) are ignored (counted in the response).
  - A group and runbook that produced an event less than O(dedup_window) seconds ago produces no new event:
    Alertmanager re-sends a group at every C(group_interval) and C(repeat_interval), and a flapping alert fires
    again.
  - Every request needs C(Authorization: Bearer <token>) (compared in constant time). Request headers are never
    copied into the event.
  - A runbook that produced O(max_runs_per_hour) events within the last hour produces no new one until the
    oldest is an hour old, whatever the group: a guard rail for a fault that keeps coming back.
  - A runbook that failed O(halt_after_failures) times in a row produces no event (C(halted)): the
    C(opsbook.stack.runbook_progress) callback counts its failed runs in a row in O(metrics_file), and the
    monitoring role's C(RunbookAutomationHalted) alert pages from the same series. A succeeded run (an
    operator's approved one) resets the count, and the runbook runs from alerts again.
  - Alerts labelled C(automation="manual") never produce an event (the automation's own alerts, such as
    C(RunbookAwaitingApproval), would otherwise start runs about runs).
  - The response is C(200) with C({"events": n, "duplicates": n, "limited": n, "halted": n, "ignored": n}), so
    Alertmanager does not retry; C(duplicates) counts the groups held back by O(dedup_window), C(limited) those
    held back by O(max_runs_per_hour), C(halted) those held back by O(halt_after_failures), C(ignored) the
    alerts left out.
  - "Errors: C(401) (missing or wrong token, with C(WWW-Authenticate: Bearer)), C(400) (body not a JSON object
    or not webhook version 4), C(405) (method other than POST), C(413) (body larger than O(max_body))."
options:
  host:
    description:
      - The address to listen on.
    type: str
    default: "127.0.0.1"
  port:
    description:
      - The TCP port to listen on.
    type: int
    required: true
  token:
    description:
      - The bearer token Alertmanager sends (C(http_config.authorization.credentials) of the webhook receiver).
      - At least 16 characters. There is no default.
    type: str
    required: true
  certfile:
    description:
      - Path to a PEM certificate (chain) to serve HTTPS. Needs O(keyfile).
    type: str
  keyfile:
    description:
      - Path to the PEM private key of O(certfile). Needs O(certfile).
    type: str
  dedup_window:
    description:
      - Seconds during which a group and runbook that produced an event produces no new one. C(0) turns
        deduplication off.
    type: float
    default: 300
  max_runs_per_hour:
    description:
      - The most events one runbook produces within an hour (a sliding window). C(0) turns the limit off.
    type: int
    default: 6
  runbooks:
    description:
      - The runbook ids (values of the C(runbook_id) alert label) that may produce an event.
    type: list
    elements: str
    default: [backup-failed, database-connection, dependency-degraded, high-error-rate, high-latency,
              host-resources, llm-provider-degraded, monitoring-broken, planned-upgrade, redis-problems,
              restore-from-backup, rollback, sandbox-degraded, service-down, tls-certificate-expiry]
  max_body:
    description:
      - The largest request body accepted, in bytes (C(413) above it).
    type: int
    default: 1048576
  metrics_file:
    description:
      - The Prometheus text file the C(opsbook.stack.runbook_progress) callback of the runs writes (its
        C(metrics_file) option, C(OPSBOOK_RUNBOOK_METRICS_FILE)), read at every notification for
        C(opsbook_runbook_consecutive_failures). Empty (or a file not there yet) halts nothing.
    type: str
    default: ""
  halt_after_failures:
    description:
      - The failed runs in a row after which a runbook gets no more events from alerts. C(0) turns it off.
    type: int
    default: 2
"""

EXAMPLES = r"""
- name: Alertmanager notifications to runbooks
  hosts: all
  sources:
    - opsbook.stack.alertmanager:
        host: 127.0.0.1
        port: 5001
        token: "{{ opsbook_responder_token }}"
        dedup_window: 300
  rules:
    - name: Run the runbook of the alert
      condition: event.runbook_id is defined
      action:
        run_playbook:
          name: "opsbook.stack.runbook_{{ event.runbook_id | replace('-', '_') }}"
          extra_vars:
            runbook_alert: "{{ event }}"

# Alertmanager side (alertmanager.yml):
# receivers:
#   - name: responder
#     webhook_configs:
#       - url: http://127.0.0.1:5001/alerts
#         http_config:
#           authorization:
#             credentials_file: /etc/alertmanager/responder_token
"""

import asyncio
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

RUNBOOK_IDS: tuple[str, ...] = (
    "backup-failed",
    "database-connection",
    "dependency-degraded",
    "high-error-rate",
    "high-latency",
    "host-resources",
    "llm-provider-degraded",
    "monitoring-broken",
    "planned-upgrade",
    "redis-problems",
    "restore-from-backup",
    "rollback",
    "sandbox-degraded",
    "service-down",
    "tls-certificate-expiry",
)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DEDUP_WINDOW = 300.0
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_RUNS_PER_HOUR = 6
DEFAULT_HALT_AFTER_FAILURES = 2
# The series of the runbook_progress callback's metrics file this source reads (the callback writes it).
FAILURES_LINE = re.compile(r'^opsbook_runbook_consecutive_failures\{runbook="([a-z0-9-]+)"\} ([0-9.e+]+)$', re.M)
MANUAL_LABEL = ("automation", "manual")
HOUR = 3600.0
MIN_TOKEN_LENGTH = 16
WEBHOOK_VERSION = "4"
ALERT_FIELDS = ("fingerprint", "labels", "annotations", "startsAt", "generatorURL")

Clock = Callable[[], float]
Event = dict[str, Any]


@dataclass(frozen=True)
class SourceConfig:
    """The checked arguments of the source."""

    port: int
    token: str
    host: str = DEFAULT_HOST
    certfile: str | None = None
    keyfile: str | None = None
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    runbooks: frozenset[str] = frozenset(RUNBOOK_IDS)
    max_body: int = DEFAULT_MAX_BODY
    max_runs_per_hour: int = DEFAULT_MAX_RUNS_PER_HOUR
    metrics_file: str | None = None
    halt_after_failures: int = DEFAULT_HALT_AFTER_FAILURES

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> SourceConfig:
        """Check the rulebook's arguments; ValueError naming the argument when one is wrong."""
        return cls(
            port=_port(args.get("port")),
            token=_token(args.get("token")),
            host=_optional_str(args, "host") or DEFAULT_HOST,
            certfile=_optional_str(args, "certfile"),
            keyfile=_optional_str(args, "keyfile"),
            dedup_window=_number(args, "dedup_window", DEFAULT_DEDUP_WINDOW),
            runbooks=_runbooks(args.get("runbooks")),
            max_body=int(_number(args, "max_body", DEFAULT_MAX_BODY, minimum=1)),
            max_runs_per_hour=int(_number(args, "max_runs_per_hour", DEFAULT_MAX_RUNS_PER_HOUR)),
            metrics_file=_optional_str(args, "metrics_file"),
            halt_after_failures=int(_number(args, "halt_after_failures", DEFAULT_HALT_AFTER_FAILURES)),
        )._check_tls()

    def _check_tls(self) -> SourceConfig:
        if self.certfile and not self.keyfile:
            raise ValueError("alertmanager source: certfile is set but keyfile is not (both are needed for TLS)")
        if self.keyfile and not self.certfile:
            raise ValueError("alertmanager source: keyfile is set but certfile is not (both are needed for TLS)")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context when certfile and keyfile are given, else None (plain HTTP)."""
        if not self.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context


def _port(value: Any) -> int:
    # A rulebook variable arrives as int (Jinja native rendering) or as a string (--env-vars, quoted YAML).
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError("alertmanager source: port is required (an integer from 1 to 65535), got %r" % (value,))
    return value


def _token(value: Any) -> str:
    if value is None or value == "":
        raise ValueError("alertmanager source: token is required (the bearer token Alertmanager sends)")
    if not isinstance(value, str):
        # Jinja's native rendering turns a token made of digits only into a number.
        raise ValueError("alertmanager source: token must be a string (use letters as well as digits)")
    if len(value) < MIN_TOKEN_LENGTH:
        raise ValueError("alertmanager source: token is shorter than %d characters" % MIN_TOKEN_LENGTH)
    return value


def _optional_str(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("alertmanager source: %s must be a string, got %r" % (name, value))
    return value


def _number(args: dict[str, Any], name: str, default: float, minimum: float = 0) -> float:
    value = args.get(name, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError("alertmanager source: %s must be a number >= %s, got %r" % (name, minimum, value))
    return float(value)


def _runbooks(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset(RUNBOOK_IDS)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ValueError("alertmanager source: runbooks must be a non-empty list of runbook ids, got %r" % (value,))
    return frozenset(value)


def failures_in_a_row(metrics_file: str | None) -> dict[str, int]:
    """runbook id -> failed runs in a row, from the runbook_progress callback's metrics file ({} without one)."""
    if not metrics_file:
        return {}
    try:
        with open(metrics_file, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("cannot read metrics_file %s (%s): no runbook is halted for its failures", metrics_file, exc)
        return {}
    return {runbook: int(float(value)) for runbook, value in FAILURES_LINE.findall(text)}


def _group_project(alerts: Iterable[dict[str, Any]]) -> str:
    """The `project` label the alerts have in common, or "" when one lacks it or they differ."""
    values = {alert["labels"].get("project") for alert in alerts}
    if len(values) == 1:
        (value,) = values
        if isinstance(value, str):
            return value
    return ""


class AlertmanagerReceiver:
    """The request handling: the token check, payload checks, grouping, deduplication and the queue."""

    def __init__(self, config: SourceConfig, queue: asyncio.Queue[Any], clock: Clock = time.monotonic) -> None:
        self.config = config
        self.queue = queue
        self.clock = clock
        self._token = config.token.encode()
        # (groupKey, runbook_id) -> clock time of its last event.
        self._last_event: dict[tuple[str, str], float] = {}
        # runbook_id -> clock times of its events within the last hour (the rate limit).
        self._recent: dict[str, list[float]] = {}

    def authorized(self, request: web.Request) -> bool:
        scheme, _space, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = request.match_info.get("endpoint", "")
        if not self.authorized(request):
            logger.warning("401 for POST /%s from %s: missing or wrong bearer token", endpoint, request.remote)
            raise web.HTTPUnauthorized(text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > self.config.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.config.max_body, actual_size=request.content_length)
        body = await request.read()  # raises 413 past client_max_size when the length was not announced
        try:
            payload = json.loads(body)
        except ValueError:
            logger.warning("400 for POST /%s: the body is not JSON", endpoint)
            raise web.HTTPBadRequest(text="body is not JSON\n") from None
        if not isinstance(payload, dict) or str(payload.get("version")) != WEBHOOK_VERSION:
            logger.warning("400 for POST /%s: not an Alertmanager webhook payload of version 4", endpoint)
            raise web.HTTPBadRequest(text="expected an Alertmanager webhook payload of version 4\n")
        if not isinstance(payload.get("alerts"), list):
            logger.warning("400 for POST /%s: the payload has no list of alerts", endpoint)
            raise web.HTTPBadRequest(text="the payload has no list of alerts\n")
        events, held = self.events_for(payload, endpoint)
        for event in events:
            await self.queue.put(event)
        return web.json_response(dict(held, events=len(events)))

    def events_for(self, payload: dict[str, Any], endpoint: str) -> tuple[list[Event], dict[str, int]]:
        """The new events of a payload, and what was held back: {"duplicates": groups within dedup_window,
        "limited": groups over max_runs_per_hour, "halted": groups of a runbook that failed
        halt_after_failures times in a row, "ignored": alerts}."""
        group_key = str(payload.get("groupKey", ""))
        groups: dict[str, list[dict[str, Any]]] = {}
        ignored = 0
        for alert in payload["alerts"]:
            if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
                ignored += 1
                logger.info("ignored in group %s: an alert without labels", group_key)
                continue
            labels = alert["labels"]
            if alert.get("status") != "firing":
                ignored += 1
                logger.info("ignored in group %s: %s is %s", group_key, alert.get("fingerprint"), alert.get("status"))
                continue
            if labels.get(MANUAL_LABEL[0]) == MANUAL_LABEL[1]:
                ignored += 1
                logger.info("ignored in group %s: %s is labelled automation=manual", group_key, labels.get("alertname"))
                continue
            runbook_id = labels.get("runbook_id")
            if runbook_id not in self.config.runbooks:
                ignored += 1
                logger.info(
                    "ignored in group %s: %s (%s) has runbook_id %r, not one of the allowed runbooks",
                    group_key,
                    alert.get("fingerprint"),
                    labels.get("alertname"),
                    runbook_id,
                )
                continue
            groups.setdefault(runbook_id, []).append(alert)

        now = self.clock()
        self._forget_before(now - self.config.dedup_window)
        events: list[Event] = []
        duplicates = limited = halted = 0
        failed = failures_in_a_row(self.config.metrics_file) if groups and self.config.halt_after_failures else {}
        for runbook_id, alerts in sorted(groups.items()):
            event = self._event(group_key, runbook_id, payload, endpoint, alerts)
            last = self._last_event.get((group_key, runbook_id))
            if last is not None and now - last < self.config.dedup_window:
                duplicates += 1
                logger.info(
                    "duplicate: runbook %s for group %s had an event %.0f s ago (dedup_window %.0f s); fingerprints %s",
                    runbook_id,
                    group_key,
                    now - last,
                    self.config.dedup_window,
                    ", ".join(event["fingerprints"]),
                )
                continue
            if self.config.halt_after_failures and failed.get(runbook_id, 0) >= self.config.halt_after_failures:
                halted += 1
                logger.warning(
                    "halted: runbook %s failed %d runs in a row (halt_after_failures %d); group %s, fingerprints %s "
                    "get no run until a run of it succeeds: see to them by hand",
                    runbook_id,
                    failed[runbook_id],
                    self.config.halt_after_failures,
                    group_key,
                    ", ".join(event["fingerprints"]),
                )
                continue
            recent = [at for at in self._recent.get(runbook_id, []) if now - at < HOUR]
            if self.config.max_runs_per_hour and len(recent) >= self.config.max_runs_per_hour:
                limited += 1
                logger.warning(
                    "rate limit: runbook %s had %d events in the last hour (max_runs_per_hour %d); group %s, "
                    "fingerprints %s get no run: see to them by hand",
                    runbook_id,
                    len(recent),
                    self.config.max_runs_per_hour,
                    group_key,
                    ", ".join(event["fingerprints"]),
                )
                self._recent[runbook_id] = recent
                continue
            self._recent[runbook_id] = recent + [now]
            self._last_event[(group_key, runbook_id)] = now
            logger.info(
                "accepted: runbook %s for group %s; fingerprints %s",
                runbook_id,
                group_key,
                ", ".join(event["fingerprints"]),
            )
            events.append(event)
        return events, {"duplicates": duplicates, "limited": limited, "halted": halted, "ignored": ignored}

    def _forget_before(self, horizon: float) -> None:
        # Keeps the state as small as the number of groups seen within the window.
        for key in [key for key, at in self._last_event.items() if at <= horizon]:
            del self._last_event[key]

    @staticmethod
    def _event(
        group_key: str, runbook_id: str, payload: dict[str, Any], endpoint: str, alerts: list[dict[str, Any]]
    ) -> Event:
        return {
            "runbook_id": runbook_id,
            "alert_group": group_key,
            "status": "firing",
            "receiver": payload.get("receiver", ""),
            "endpoint": endpoint,
            "project": _group_project(alerts),
            "alerts": [{field: alert.get(field) for field in ALERT_FIELDS} for alert in alerts],
            "alertnames": sorted(
                {str(alert["labels"]["alertname"]) for alert in alerts if "alertname" in alert["labels"]}
            ),
            "fingerprints": sorted(str(alert.get("fingerprint", "")) for alert in alerts),
        }


def build_app(receiver: AlertmanagerReceiver) -> web.Application:
    """The aiohttp application: POST on any path; other methods get 405 from the router."""
    app = web.Application(client_max_size=receiver.config.max_body)
    app.router.add_post(r"/{endpoint:.*}", receiver.handle)
    return app


async def start(receiver: AlertmanagerReceiver) -> tuple[web.AppRunner, int]:
    """Listen on the configured host and port; the runner to clean up and the port it bound."""
    runner = web.AppRunner(build_app(receiver), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, receiver.config.host, receiver.config.port, ssl_context=receiver.config.ssl_context())
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def main(queue: asyncio.Queue[Any], args: dict[str, Any], clock: Clock = time.monotonic) -> None:
    """ansible-rulebook's entry point: serve until the task is cancelled."""
    config = SourceConfig.from_args(args)
    runner, port = await start(AlertmanagerReceiver(config, queue, clock))
    logger.info(
        "listening on %s://%s:%d for Alertmanager notifications (runbooks: %s)",
        "https" if config.certfile else "http",
        config.host,
        port,
        ", ".join(sorted(config.runbooks)),
    )
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()
