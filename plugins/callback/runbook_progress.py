# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
name: runbook_progress
type: notification
short_description: Print runbook progress per step and write a JSON-lines audit record of every step
version_added: 0.1.0
description:
  - For the runbook playbooks C(playbooks/runbook_<id>.yml), whose tasks are named C([<step id>] <title>), it
    prints C([runbook step i/n] title) when a step starts, and when it ends writes one JSON line per host to an audit
    file with the runbook id, step id, step number, title, host, status, start time, duration and whether it
    changed anything.
  - The steps and their number come from the play's task names, so the progress is right even when tags select
    only some steps. The runbook id is the play variable C(runbook_id), else the playbook file name.
  - A step's status on a host is the worst of its tasks' results (V(failed), V(unreachable), V(changed), V(ok),
    V(skipped) in that order); the approval tasks of a changing step count like any other task.
  - Plays whose tasks are not named like runbook steps are ignored.
  - Works next to any stdout callback, including ansible-runner's; enable it with C(callbacks_enabled).
author:
  - opsbook.stack maintainers (!UNKNOWN)
requirements:
  - enable in configuration, for example C(ANSIBLE_CALLBACKS_ENABLED=opsbook.stack.runbook_progress)
options:
  audit_file:
    description:
      - The JSON-lines file the step records are appended to. Its directory is created when missing.
      - Empty writes no audit file; the progress lines are still printed.
    type: str
    default: ''
    env:
      - name: OPSBOOK_RUNBOOK_AUDIT_FILE
    ini:
      - section: callback_runbook_progress
        key: audit_file
  metrics_file:
    description:
      - A Prometheus text file (for node_exporter's textfile collector) the callback rewrites after every runbook
        run, with each runbook's run counts per outcome and trigger, the time of its last run per outcome, its
        failed runs in a row, and the step a run waits at for approval. See the notes for the series.
      - The file is replaced atomically (written beside it, then renamed) under a lock, so concurrent runs add
        up and node_exporter never reads half a file. Empty writes none.
    type: str
    default: ''
    env:
      - name: OPSBOOK_RUNBOOK_METRICS_FILE
    ini:
      - section: callback_runbook_progress
        key: metrics_file
  print_progress:
    description:
      - Print the C([runbook step i/n] title) line when a step starts.
    type: bool
    default: true
    env:
      - name: OPSBOOK_RUNBOOK_PRINT_PROGRESS
    ini:
      - section: callback_runbook_progress
        key: print_progress
notes:
  - Every line carries C(run_id), the same for all records of one playbook run, so several runs can share a file.
  - Every line also says what started the run, in C(trigger). A run that Event-Driven Ansible started from an
    alert (the extra var C(ansible_eda) with the C(opsbook.stack.alertmanager) source's event) records
    C(by=alert), the alert group, and each alert's fingerprint, labels and C(startsAt). Any other run records
    C(by=operator). C(approved) is the run's C(runbook_approved) extra var, and C(approved_by) is
    C(runbook_approved_by) when given. An alert's run also records C(auto_approved_steps), the changing steps the
    runbook role's allow-list (C(runbook_auto_approve)) let run without approval, once the role has worked them
    out. Annotations and request data are never recorded.
  - Times are UTC in ISO 8601; C(duration_s) runs from the step's start to the host's last result in the step.
  - Step lines have C(record=step). When the playbook ends, one more line with C(record=run) gives the run's
    C(outcome), the hosts per outcome, the steps that wait for approval and the command that gives it, and the
    C(trigger).
  - "The run's outcome: V(failed) when a host failed or was unreachable other than at an approval gate;
    V(awaiting_approval) when a changing step stopped at its gate (C([<step>] Stop without approval) failed);
    V(held_off) when the runbook role held an alert's run back (an operation holds the project lock, or the
    alert is silenced), recorded from its C(runbook_hold_off) fact; V(succeeded) otherwise."
  - "The metrics file's series: C(opsbook_runbook_runs_total{runbook,outcome,trigger}) (counter),
    C(opsbook_runbook_last_run_timestamp_seconds{runbook,outcome}), C(opsbook_runbook_consecutive_failures{runbook})
    (a failed run adds one, a succeeded run resets it, the other outcomes leave it), and
    C(opsbook_runbook_awaiting_approval{runbook,step}) (1 while the runbook's last run waits at that step).
    The C(opsbook.stack.alertmanager) event source reads the failures in a row to stop starting a runbook that
    failed twice; the monitoring role's C(RunbookAutomationHalted) and C(RunbookAwaitingApproval) alerts page
    and ask for the approval."
"""

import fcntl
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible.plugins.callback import CallbackBase

STEP_NAME = re.compile(r"^\[([a-z][a-z0-9-]*)\] (.+)$")
GATE_NAME = re.compile(r"^\[([a-z][a-z0-9-]*)\] Stop without approval$")
OUTCOMES = ("succeeded", "failed", "awaiting_approval", "held_off")
METRIC_LINE = re.compile(r'^(opsbook_runbook_[a-z_]+)\{([^}]*)\} (\S+)$')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')
SEVERITY = {"skipped": 0, "ok": 1, "changed": 2, "unreachable": 3, "failed": 4}


@dataclass
class HostOutcome:
    status: str = "skipped"
    changed: bool = False
    last: float = 0.0


@dataclass
class StepRun:
    step_id: str
    index: int
    total: int
    title: str
    started: float
    hosts: dict[str, HostOutcome] = field(default_factory=dict)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def steps_of(play) -> list[tuple[str, str]]:
    """(step id, title) in play order, from task and block names that read `[<step id>] <title>`."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def walk(items) -> None:
        for item in items or []:
            match = STEP_NAME.match(str(getattr(item, "name", "") or ""))
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                found.append((match.group(1), match.group(2)))
            for attribute in ("block", "rescue", "always"):
                children = getattr(item, attribute, None)
                if isinstance(children, list):
                    walk(children)

    walk(getattr(play, "tasks", None) or [])
    return found


def trigger_of(extra_vars) -> dict:
    """What started the run, from its extra vars: an alert (EDA's ansible_eda.event of the collection's
    alertmanager source) or an operator; with the approval the run was given."""
    trigger: dict = {"by": "operator"}
    eda = extra_vars.get("ansible_eda") if isinstance(extra_vars, dict) else None
    eda = eda if isinstance(eda, dict) else {}
    event = eda.get("event")
    if isinstance(event, dict) and event.get("runbook_id"):
        alerts = [a for a in event.get("alerts") or [] if isinstance(a, dict)]
        trigger = {
            "by": "alert",
            "alert_group": str(event.get("alert_group", "")),
            "rule": str(eda.get("rule", "")),
            "alerts": [
                {
                    "fingerprint": str(a.get("fingerprint", "")),
                    "labels": a.get("labels") if isinstance(a.get("labels"), dict) else {},
                    "startsAt": str(a.get("startsAt", "")),
                }
                for a in alerts
            ],
        }
    approved = extra_vars.get("runbook_approved", False) if isinstance(extra_vars, dict) else False
    trigger["approved"] = str(approved).lower() in ("true", "yes", "1", "on")
    approved_by = extra_vars.get("runbook_approved_by") if isinstance(extra_vars, dict) else None
    if approved_by:
        trigger["approved_by"] = str(approved_by)
    return trigger


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "opsbook.stack.runbook_progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        super().__init__(display=display, options=options)
        self.run_id = uuid.uuid4().hex[:12]
        self.playbook_name = ""
        self.runbook = ""
        self.steps: list[tuple[str, str]] = []
        self.current: StepRun | None = None
        self.trigger: dict = {"by": "operator"}
        self.started = time.time()
        self.ran_steps = False  # a play of the playbook has runbook steps
        self.awaiting: dict[str, list[str]] = {}  # step -> hosts stopped at its approval gate
        self.held_off: dict[str, str] = {}  # host -> why the runbook role held the alert's run back

    # -- configuration -----------------------------------------------------------------------------------
    def _file_option(self, name: str, env: str) -> str:
        """A file option ('' for none), from the configuration, else its environment variable."""
        try:
            path = self.get_option(name)
        except KeyError:
            path = os.environ.get(env, "")
        return os.path.expanduser(path) if path else ""

    def _audit_path(self) -> str:
        return self._file_option("audit_file", "OPSBOOK_RUNBOOK_AUDIT_FILE")

    def _metrics_path(self) -> str:
        return self._file_option("metrics_file", "OPSBOOK_RUNBOOK_METRICS_FILE")

    def _print_progress(self) -> bool:
        try:
            return bool(self.get_option("print_progress"))
        except KeyError:
            return True

    # -- playbook and play ---------------------------------------------------------------------------------
    def v2_playbook_on_start(self, playbook):
        self.playbook_name = os.path.splitext(os.path.basename(getattr(playbook, "_file_name", "") or ""))[0]

    def v2_playbook_on_play_start(self, play):
        self._finish_step()
        self.steps = steps_of(play)
        self.ran_steps = self.ran_steps or bool(self.steps)
        play_vars = getattr(play, "vars", None) or {}
        runbook_id = play_vars.get("runbook_id") if isinstance(play_vars, dict) else None
        self.runbook = str(runbook_id or self.playbook_name)
        try:
            extra = play.get_variable_manager().extra_vars or {}
        except AttributeError:
            extra = {}
        self.trigger = trigger_of(extra)

    def v2_playbook_on_stats(self, stats):
        self._finish_step()
        if not self.ran_steps:
            return
        summary = run_summary(stats, self.awaiting, self.held_off)
        record = {
            "record": "run",
            "run_id": self.run_id,
            "runbook": self.runbook,
            "outcome": summary["outcome"],
            "hosts": summary["hosts"],
            "start": _iso(self.started),
            "duration_s": round(time.time() - self.started, 3),
            "trigger": self.trigger,
        }
        if self.awaiting:
            record["awaiting_approval"] = sorted(self.awaiting)
            record["approve_with"] = approve_command(self.runbook)
        if self.held_off:
            record["held_off"] = self.held_off
        # The metrics first, the run record last: whoever sees the run's record (an operator, EDA, a test) finds
        # the metrics of that run already written.
        path = self._metrics_path()
        if path:
            try:
                update_metrics(
                    path,
                    self.runbook,
                    summary["outcome"],
                    self.trigger.get("by", "operator"),
                    sorted(self.awaiting),
                    time.time(),
                )
            except OSError as exc:
                self._display.warning("runbook_progress: cannot write the metrics file %s: %s" % (path, exc))
        self._append([json.dumps(record)])

    # -- steps -------------------------------------------------------------------------------------------
    def v2_playbook_on_task_start(self, task, is_conditional):
        match = STEP_NAME.match(str(task.get_name() or ""))
        if not match or not self.steps:
            return
        step_id = match.group(1)
        if self.current is not None and self.current.step_id == step_id:
            return
        self._finish_step()
        ids = [sid for sid, _title in self.steps]
        index = ids.index(step_id) + 1 if step_id in ids else 0
        title = self.steps[index - 1][1] if index else match.group(2)
        self.current = StepRun(step_id=step_id, index=index, total=len(self.steps), title=title, started=time.time())
        if self._print_progress():
            self._display.display("[runbook step %d/%d] %s" % (index, len(self.steps), title))

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _record(self, result, status: str) -> None:
        if self.current is None:
            return
        host = result._host.get_name()  # pylint: disable=protected-access
        outcome = self.current.hosts.setdefault(host, HostOutcome())
        changed = bool(result._result.get("changed", False)) and status in ("ok", "changed")  # pylint: disable=protected-access
        if changed:
            status = "changed"
        if SEVERITY[status] >= SEVERITY[outcome.status]:
            outcome.status = status
        outcome.changed = outcome.changed or changed
        outcome.last = time.time()

    def v2_runner_on_ok(self, result):
        # The runbook role's set_fact of the steps its allow-list (runbook_auto_approve) approves for this alert.
        facts = result._result.get("ansible_facts") or {}  # pylint: disable=protected-access
        steps = facts.get("runbook_auto_steps") if isinstance(facts, dict) else None
        if steps and isinstance(steps, list) and self.trigger.get("by") == "alert":
            self.trigger["auto_approved_steps"] = sorted(
                set(self.trigger.get("auto_approved_steps", [])) | set(map(str, steps))
            )
        # The runbook role's set_fact when it holds an alert's run back (a lock or a silence).
        hold = facts.get("runbook_hold_off") if isinstance(facts, dict) else None
        if hold:
            self.held_off[result._host.get_name()] = str(hold)  # pylint: disable=protected-access
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        gate = GATE_NAME.match(str(result._task.get_name() or ""))  # pylint: disable=protected-access
        if gate and not ignore_errors:
            hosts = self.awaiting.setdefault(gate.group(1), [])
            hosts.append(result._host.get_name())  # pylint: disable=protected-access
        self._record(result, "ok" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    # -- audit -------------------------------------------------------------------------------------------
    def _finish_step(self) -> None:
        step, self.current = self.current, None
        path = self._audit_path()
        if step is None or not path or not step.hosts:
            return
        lines = []
        for host, outcome in step.hosts.items():
            lines.append(
                json.dumps(
                    {
                        "record": "step",
                        "run_id": self.run_id,
                        "runbook": self.runbook,
                        "step": step.step_id,
                        "index": step.index,
                        "total": step.total,
                        "title": step.title,
                        "host": host,
                        "status": outcome.status,
                        "start": _iso(step.started),
                        "duration_s": round(max(outcome.last - step.started, 0.0), 3),
                        "changed": outcome.changed,
                        "trigger": self.trigger,
                    },
                    sort_keys=False,
                )
            )
        self._append(lines)

    def _append(self, lines: list[str]) -> None:
        path = self._audit_path()
        if not path:
            return
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as exc:
            self._display.warning("runbook_progress: cannot write the audit file %s: %s" % (path, exc))


def approve_command(runbook: str) -> str:
    """The one command that reruns a runbook with its changing steps approved."""
    return "ansible-playbook opsbook.stack.runbook_%s -e runbook_approved=true -e runbook_approved_by=<your name>" % (
        runbook.replace("-", "_")
    )


def run_summary(stats, awaiting: dict[str, list[str]], held_off: dict[str, str]) -> dict:
    """The run's outcome and the hosts per outcome, from the play recap (a rescued failure is no failure)."""
    processed = sorted(getattr(stats, "processed", {}) or {})
    failures = getattr(stats, "failures", {}) or {}
    dark = getattr(stats, "dark", {}) or {}
    gated = {host for hosts in awaiting.values() for host in hosts}
    hosts: dict[str, list[str]] = {}
    for host in processed:
        if (failures.get(host) or dark.get(host)) and host not in gated:
            outcome = "failed"
        elif host in gated:
            outcome = "awaiting_approval"
        elif host in held_off:
            outcome = "held_off"
        else:
            outcome = "succeeded"
        hosts.setdefault(outcome, []).append(host)
    for outcome in ("failed", "awaiting_approval", "held_off"):
        if outcome in hosts:
            return {"outcome": outcome, "hosts": hosts}
    return {"outcome": "succeeded", "hosts": hosts}


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in LABEL.findall(text))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def read_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The opsbook_runbook_* samples of a metrics file this callback wrote: name -> labels -> value."""
    series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line.strip())
        if match:
            try:
                series.setdefault(match.group(1), {})[_labels(match.group(2))] = float(match.group(3))
            except ValueError:
                continue
    return series


HELP = {
    "opsbook_runbook_runs_total": ("counter", "Runbook playbook runs by outcome and by what started them."),
    "opsbook_runbook_last_run_timestamp_seconds": ("gauge", "When a runbook's last run of that outcome ended."),
    "opsbook_runbook_consecutive_failures": ("gauge", "A runbook's failed runs in a row (a succeeded run resets it)."),
    "opsbook_runbook_awaiting_approval": ("gauge", "1 while a runbook's last run waits for approval at the step."),
}


def render_metrics(series: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> str:
    out: list[str] = []
    for name, (kind, text) in HELP.items():
        out += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)]
        for labels, value in sorted(series.get(name, {}).items()):
            rendered = ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels)
            out.append("%s{%s} %s" % (name, rendered, repr(float(value)) if value != int(value) else int(value)))
    return "\n".join(out) + "\n"


def update_metrics(path: str, runbook: str, outcome: str, trigger: str, awaiting: list[str], now: float) -> None:
    """Count a finished run in the metrics file: read, change, write beside and rename, under a lock file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    with open(path + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as handle:
                series = read_metrics(handle.read())
        except FileNotFoundError:
            series = {}
        runs = series.setdefault("opsbook_runbook_runs_total", {})
        for known in OUTCOMES:  # every outcome from 0, so increase() sees the first of each
            for by in ("alert", "operator"):
                runs.setdefault((("outcome", known), ("runbook", runbook), ("trigger", by)), 0)
        key = (("outcome", outcome), ("runbook", runbook), ("trigger", trigger))
        runs[key] = runs.get(key, 0) + 1
        series.setdefault("opsbook_runbook_last_run_timestamp_seconds", {})[
            (("outcome", outcome), ("runbook", runbook))
        ] = round(now, 3)
        failures = series.setdefault("opsbook_runbook_consecutive_failures", {})
        previous = failures.get((("runbook", runbook),), 0)
        failures[(("runbook", runbook),)] = (
            previous + 1 if outcome == "failed" else 0 if outcome == "succeeded" else previous
        )
        waiting = series.setdefault("opsbook_runbook_awaiting_approval", {})
        for labels in [k for k in waiting if dict(k).get("runbook") == runbook]:
            del waiting[labels]
        for step in awaiting:
            waiting[(("runbook", runbook), ("step", step))] = 1
        fd, tmp = tempfile.mkstemp(prefix=".opsbook_runbooks.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(render_metrics(series))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
