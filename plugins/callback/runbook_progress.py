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
    type: path
    default: ''
    env:
      - name: OPSBOOK_RUNBOOK_AUDIT_FILE
    ini:
      - section: callback_runbook_progress
        key: audit_file
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
"""

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible.plugins.callback import CallbackBase

STEP_NAME = re.compile(r"^\[([a-z][a-z0-9-]*)\] (.+)$")
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

    # -- configuration -----------------------------------------------------------------------------------
    def _audit_path(self) -> str:
        try:
            path = self.get_option("audit_file")
        except KeyError:
            path = os.environ.get("OPSBOOK_RUNBOOK_AUDIT_FILE", "")
        return os.path.expanduser(path) if path else ""

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
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
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
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as exc:
            self._display.warning("runbook_progress: cannot write the audit file %s: %s" % (path, exc))
