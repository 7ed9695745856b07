# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's Event-Driven Ansible source opsbook.stack.alertmanager (issue 18, item 1), served for real
by aiohttp on 127.0.0.1 and spoken to over HTTP(S): the bearer token, firing alerts only, one event per alert
group and runbook, the deduplication window, the allowed runbooks, and no request header in an event."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import asyncio
import importlib.util
import json
import ssl
import sys
import typing as t
from pathlib import Path

import aiohttp
import pytest

from ansible_collections.opsbook.stack.plugins.callback import runbook_progress
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import free_port, tls  # noqa: F401 pylint: disable=unused-import

COLLECTION = Path(__file__).resolve().parents[3]
SOURCE_FILE = COLLECTION / "extensions" / "eda" / "plugins" / "event_source" / "alertmanager.py"
TOKEN = "responder-token-0123456789"


def _load_source():
    spec = importlib.util.spec_from_file_location("opsbook_alertmanager_source", SOURCE_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


source = _load_source()


def alert(name: str, runbook_id: str | None, fingerprint: str, status: str = "firing") -> dict[str, t.Any]:
    labels = {"alertname": name, "project": "demo", "severity": "critical"}
    if runbook_id is not None:
        labels["runbook_id"] = runbook_id
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "%s on demo" % name},
        "startsAt": "2026-12-03T03:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


def notification(alerts: list[dict[str, t.Any]], group_key: str = '{}:{alertname="BackendDown"}') -> dict[str, t.Any]:
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "responder",
        "groupLabels": {"alertname": "BackendDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": alerts,
    }


class Clock:
    """A clock the test moves by hand (the deduplication window without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Exchange = t.Callable[..., t.Awaitable[tuple[int, t.Any]]]


def serve(args: dict[str, t.Any], talk: t.Callable[[Exchange, Clock], t.Awaitable[None]], **client: t.Any) -> list:
    """Run the source's main() with args on a free port, call talk(post, clock), and return the queued events.
    post(payload, path="/", token=TOKEN, method="POST", data=None) -> (status, JSON body or text)."""
    port = free_port()
    clock = Clock()
    scheme = "https" if args.get("certfile") else "http"

    async def run() -> list:
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(source.main(queue, dict({"port": port, "token": TOKEN}, **args), clock))
        async with aiohttp.ClientSession() as session:
            for _attempt in range(100):
                try:
                    async with session.post("%s://127.0.0.1:%d/" % (scheme, port), **client):
                        break
                except aiohttp.ClientConnectorError:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.05)

            async def post(payload, path="/", token=TOKEN, method="POST", data=None, headers=None):
                sent = dict(headers or {})
                if token is not None:
                    sent["Authorization"] = "Bearer %s" % token
                body = data if data is not None else json.dumps(payload).encode()
                url = "%s://127.0.0.1:%d%s" % (scheme, port, path)
                async with session.request(method, url, data=body, headers=sent, **client) as answer:
                    text = await answer.text()
                    try:
                        return answer.status, json.loads(text)
                    except ValueError:
                        return answer.status, text

            await talk(post, clock)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [queue.get_nowait() for _unused in range(queue.qsize())]

    return asyncio.run(run())


def test_a_request_without_the_right_bearer_token_gets_401_and_no_event():
    answers = []

    async def talk(post, clock):
        payload = notification([alert("BackendDown", "service-down", "aaaa")])
        answers.append(await post(payload, token=None))
        answers.append(await post(payload, token="responder-token-wrong-guess"))
        answers.append(await post(payload, token=None, headers={"Authorization": "Basic %s" % TOKEN}))
        answers.append(await post(payload, token=TOKEN[:-1]))

    assert serve({}, talk) == []
    assert [status for status, _body in answers] == [401, 401, 401, 401]


def test_firing_alerts_become_one_event_per_group_and_runbook_without_the_request_headers():
    answers = []

    async def talk(post, clock):
        answers.append(
            await post(
                notification(
                    [
                        alert("BackendDown", "service-down", "f2"),
                        alert("BackendDown", "service-down", "f1"),
                        alert("BackendDown", "service-down", "f3", status="resolved"),
                        alert("HighLatency", "high-latency", "f4"),
                        alert("Watchdog", None, "f5"),
                        alert("Mystery", "not-a-runbook", "f6"),
                    ]
                ),
                path="/alerts",
                headers={"X-Canary": "header-canary-value"},
            )
        )

    events = serve({}, talk)
    assert answers == [(200, {"events": 2, "duplicates": 0, "limited": 0, "halted": 0, "ignored": 3})]
    assert [event["runbook_id"] for event in events] == ["high-latency", "service-down"]
    down = events[1]
    assert down["fingerprints"] == ["f1", "f2"]
    assert down["alertnames"] == ["BackendDown"]
    assert down["alert_group"] == '{}:{alertname="BackendDown"}'
    assert (down["status"], down["receiver"], down["endpoint"], down["project"]) == (
        "firing",
        "responder",
        "alerts",
        "demo",
    )
    assert set(down["alerts"][0]) == {"fingerprint", "labels", "annotations", "startsAt", "generatorURL"}
    text = json.dumps(events)
    assert TOKEN not in text and "header-canary-value" not in text and "Authorization" not in text


def test_root_and_any_endpoint_take_a_post_and_other_methods_get_405():
    answers = []

    async def talk(post, clock):
        payload = notification([alert("BackendDown", "service-down", "aaaa")])
        answers.append((await post(payload, path="/"))[0])
        clock.now += 301
        answers.append((await post(payload, path="/hooks/alertmanager"))[0])
        answers.append((await post(payload, method="GET"))[0])
        answers.append((await post(payload, method="PUT", path="/alerts"))[0])

    events = serve({}, talk)
    assert answers == [200, 200, 405, 405]
    assert [event["endpoint"] for event in events] == ["", "hooks/alertmanager"]


def test_a_burst_of_notifications_of_one_group_gives_one_event_per_window():
    answers = []

    async def talk(post, clock):
        first = notification([alert("BackendDown", "service-down", "aaaa")])
        flapped = notification([alert("BackendDown", "service-down", "bbbb")])
        other_group = notification([alert("BackendDown", "service-down", "cccc")], group_key='{}:{project="other"}')
        for _repeat in range(5):  # group_interval re-sends and a flapping alert, within 300 s
            answers.append((await post(first))[1])
            clock.now += 10
        answers.append((await post(flapped))[1])
        answers.append((await post(other_group))[1])
        clock.now += 300  # the window has passed since the first event
        answers.append((await post(flapped))[1])

    events = serve({"dedup_window": 300}, talk)
    assert [(event["alert_group"], event["fingerprints"]) for event in events] == [
        ('{}:{alertname="BackendDown"}', ["aaaa"]),
        ('{}:{project="other"}', ["cccc"]),
        ('{}:{alertname="BackendDown"}', ["bbbb"]),
    ]
    assert [answer["events"] for answer in answers] == [1, 0, 0, 0, 0, 0, 1, 1]
    assert [answer["duplicates"] for answer in answers] == [0, 1, 1, 1, 1, 1, 0, 0]


def test_a_window_of_zero_passes_every_notification_and_the_allowed_runbooks_narrow_them():
    counts = []

    async def talk(post, clock):
        payload = notification([alert("BackendDown", "service-down", "aaaa"), alert("Slow", "high-latency", "bbbb")])
        for _repeat in range(3):
            counts.append((await post(payload))[1])

    events = serve({"dedup_window": 0, "runbooks": ["service-down"]}, talk)
    assert [event["runbook_id"] for event in events] == ["service-down"] * 3
    assert counts == [{"events": 1, "duplicates": 0, "limited": 0, "halted": 0, "ignored": 1}] * 3


def test_a_runbook_gets_at_most_max_runs_per_hour_events_whatever_the_group():
    answers = []

    async def talk(post, clock):
        for number in range(5):  # five distinct groups within 50 minutes
            payload = notification([alert("BackendDown", "service-down", "f%d" % number)], group_key="g%d" % number)
            answers.append((await post(payload))[1])
            clock.now += 600
        other = notification([alert("Slow", "high-latency", "s1")], group_key="g-slow")
        answers.append((await post(other))[1])  # another runbook has its own count
        clock.now += 601  # the first event (t=0) is now over an hour old: room for one more
        answers.append((await post(notification([alert("BackendDown", "service-down", "f9")], group_key="g9")))[1])
        answers.append((await post(notification([alert("BackendDown", "service-down", "fa")], group_key="ga")))[1])

    events = serve({"max_runs_per_hour": 3}, talk)
    assert [answer["events"] for answer in answers] == [1, 1, 1, 0, 0, 1, 1, 0]
    assert [answer["limited"] for answer in answers] == [0, 0, 0, 1, 1, 0, 0, 1]
    assert [event["alert_group"] for event in events] == ["g0", "g1", "g2", "g-slow", "g9"]


def test_a_runbook_that_failed_twice_in_a_row_is_halted_until_a_run_succeeds(tmp_path):
    # The metrics file as the runbook_progress callback writes it after each run (the writer the source reads).
    metrics = str(tmp_path / "opsbook_runbooks.prom")
    answers = []

    def post_each(post):
        async def both():
            down = notification([alert("BackendDown", "service-down", "f1")], group_key="g-down")
            slow = notification([alert("Slow", "high-latency", "s1")], group_key="g-slow")
            return (await post(down))[1], (await post(slow))[1]

        return both()

    async def talk(post, clock):
        runbook_progress.update_metrics(metrics, "service-down", "failed", "alert", [], 1.0)
        answers.append(await post_each(post))  # one failure: still runs
        runbook_progress.update_metrics(metrics, "service-down", "failed", "alert", [], 2.0)
        answers.append(await post_each(post))  # two in a row: halted, the other runbook is not
        runbook_progress.update_metrics(metrics, "service-down", "awaiting_approval", "alert", ["x"], 3.0)
        answers.append(await post_each(post))  # waiting for approval is no success
        runbook_progress.update_metrics(metrics, "service-down", "succeeded", "operator", [], 4.0)
        answers.append(await post_each(post))  # the operator's succeeded run resets it

    events = serve({"metrics_file": metrics, "dedup_window": 0}, talk)
    assert [(down["events"], down["halted"], slow["events"]) for down, slow in answers] == [
        (1, 0, 1),
        (0, 1, 1),
        (0, 1, 1),
        (1, 0, 1),
    ]
    assert [event["runbook_id"] for event in events].count("service-down") == 2


def test_no_metrics_file_or_a_missing_one_halts_nothing(tmp_path):
    counts = []

    async def talk(post, clock):
        counts.append((await post(notification([alert("BackendDown", "service-down", "f1")])))[1])

    serve({"metrics_file": str(tmp_path / "not-there.prom")}, talk)
    assert counts == [{"events": 1, "duplicates": 0, "limited": 0, "halted": 0, "ignored": 0}]


def test_an_alert_labelled_automation_manual_starts_nothing():
    counts = []

    async def talk(post, clock):
        manual = alert("RunbookAwaitingApproval", "monitoring-broken", "m1")
        manual["labels"]["automation"] = "manual"
        counts.append((await post(notification([manual, alert("BackendDown", "service-down", "f1")])))[1])

    events = serve({}, talk)
    assert counts == [{"events": 1, "duplicates": 0, "limited": 0, "halted": 0, "ignored": 1}]
    assert [event["runbook_id"] for event in events] == ["service-down"]


def test_a_body_that_is_not_a_version_4_notification_gets_400_and_a_large_one_413():
    answers = []

    async def talk(post, clock):
        answers.append(await post(None, data=b"{not json"))
        answers.append(await post(dict(notification([]), version="3")))
        answers.append(await post(["a", "list"]))
        answers.append(await post({"version": "4", "alerts": "none"}))
        answers.append(await post(None, data=b"{" + b" " * 5000 + b"}"))

    assert serve({"max_body": 4096}, talk) == []
    assert [status for status, _body in answers] == [400, 400, 400, 400, 413]


def test_the_source_serves_https_when_given_a_certificate(tls):  # noqa: F811
    answers = []
    context = ssl.create_default_context(cafile=str(tls.ca))

    async def talk(post, clock):
        answers.append(await post(notification([alert("BackendDown", "service-down", "aaaa")])))

    events = serve({"certfile": str(tls.server_cert), "keyfile": str(tls.server_key)}, talk, ssl=context)
    assert answers == [(200, {"events": 1, "duplicates": 0, "limited": 0, "halted": 0, "ignored": 0})]
    assert len(events) == 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"token": TOKEN}, "port is required"),
        ({"port": "http", "token": TOKEN}, "port is required"),
        ({"port": 5001}, "token is required"),
        ({"port": 5001, "token": "short"}, "token is shorter than 16"),
        ({"port": 5001, "token": 12345678901234567890}, "token must be a string"),
        ({"port": 5001, "token": TOKEN, "certfile": "/etc/cert.pem"}, "keyfile is not"),
        ({"port": 5001, "token": TOKEN, "keyfile": "/etc/key.pem"}, "certfile is not"),
        ({"port": 5001, "token": TOKEN, "dedup_window": -1}, "dedup_window must be a number"),
        ({"port": 5001, "token": TOKEN, "runbooks": []}, "runbooks must be a non-empty list"),
        ({"port": 5001, "token": TOKEN, "max_body": 0}, "max_body must be a number"),
        ({"port": 5001, "token": TOKEN, "max_runs_per_hour": -1}, "max_runs_per_hour must be a number"),
        ({"port": 5001, "token": TOKEN, "halt_after_failures": "two"}, "halt_after_failures must be a number"),
        ({"port": 5001, "token": TOKEN, "metrics_file": 3}, "metrics_file must be a string"),
    ],
)
def test_a_wrong_argument_is_named_before_anything_listens(args, named):
    with pytest.raises(ValueError, match=named):
        source.SourceConfig.from_args(args)


def test_arguments_from_rulebook_variables_arrive_as_strings_and_are_taken():
    config = source.SourceConfig.from_args({"port": "5001", "token": TOKEN, "dedup_window": "60"})
    assert (config.port, config.dedup_window, config.host) == (5001, 60.0, "127.0.0.1")


def test_the_default_runbooks_are_the_runbooks_of_the_collection():
    assert set(source.RUNBOOK_IDS) == {path.stem for path in (COLLECTION / "runbooks").glob("*.md")} - {"README"}
