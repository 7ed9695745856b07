# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The runbook checker: runbooks/<id>.md and playbooks/runbook_<id>.yml agree one-to-one, and the alert rules
of the monitoring role and the runbooks point at each other.

What a runbook is (runbooks/README.md): YAML front matter (id, title, alerts, steps with id, title, changes), then a
Markdown body with one `### Step <n>: <title> (`<id>`)` section per step, each naming what to look at, what it
means, the manual command, whether it changes anything and the automated task. Its playbook has one play whose
`tasks` hold exactly one entry per step, in the same order, named `[<id>] <title>` and tagged `<id>`; a step that
changes something is a block that asks for approval (pause + assert, skipped when runbook_approved or when the
runbook role's allow-list approves the step for the alert; the pause also skipped in a rulebook's run) before its
action, a step that changes nothing is a plain task.

The tests at the end check the checker itself on temporary copies of the tree.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import shutil
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# The contract (docs/contracts.md, "Alerts point at runbooks"): runbook ids and the alerts each answers.
RUNBOOK_IDS = [
    "service-down",
    "high-error-rate",
    "high-latency",
    "database-connection",
    "redis-problems",
    "host-resources",
    "planned-upgrade",
    "rollback",
    "backup-failed",
    "restore-from-backup",
    "monitoring-broken",
    "tls-certificate-expiry",
]
PROCEDURES = {"planned-upgrade", "rollback", "restore-from-backup"}  # may answer no alert
STEP_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
HEADING = re.compile(r"^### Step (\d+): (.+) \(`([^`]+)`\)\s*$")
FIELDS = ("**Look at:**", "**What it means:**", "**By hand:**", "**Changes:**", "**Automation:**")
TASK_NAME = re.compile(r"^\[([^\]]+)\] (.+)$")


# --------------------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[dict, str]:
    if not text.startswith("---\n"):
        raise ValueError("no YAML front matter: the file must start with a line '---'")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError("front matter is not closed by a line '---'")
    return yaml.safe_load(text[4:end]) or {}, text[end + 5 :]


def check_front_matter(rid: str, meta: dict) -> list[str]:
    problems = []
    if meta.get("id") != rid:
        problems.append("%s.md: front matter id is %r, the file name says %r" % (rid, meta.get("id"), rid))
    if not isinstance(meta.get("title"), str) or not meta["title"].strip():
        problems.append("%s.md: front matter has no title" % rid)
    if not isinstance(meta.get("alerts"), list):
        problems.append("%s.md: front matter 'alerts' must be a list (empty for a procedure)" % rid)
    elif not meta["alerts"] and rid not in PROCEDURES:
        problems.append("%s.md: answers no alert, but only procedures may (%s)" % (rid, ", ".join(sorted(PROCEDURES))))
    steps = meta.get("steps")
    if not isinstance(steps, list) or not steps:
        return problems + ["%s.md: front matter has no steps" % rid]
    seen = set()
    for index, step in enumerate(steps, 1):
        if not isinstance(step, dict) or set(step) != {"id", "title", "changes"}:
            problems.append("%s.md: step %d must have exactly id, title and changes, has %r" % (rid, index, step))
            continue
        if not STEP_ID.match(str(step["id"])):
            problems.append("%s.md: step %d id %r is not lower-case-with-dashes" % (rid, index, step["id"]))
        if step["id"] in seen:
            problems.append("%s.md: step id %r appears twice" % (rid, step["id"]))
        seen.add(step["id"])
        if not isinstance(step["changes"], bool):
            problems.append("%s.md: step %s changes must be true or false" % (rid, step["id"]))
    return problems


def check_body(rid: str, meta: dict, body: str) -> list[str]:
    """The body's step sections match the front matter: same ids, titles, order, and every field present."""
    problems = []
    lines = body.splitlines()
    sections: list[tuple[int, str, str, list[str]]] = []
    for line in lines:
        match = HEADING.match(line)
        if match:
            sections.append((int(match.group(1)), match.group(2), match.group(3), []))
        elif line.startswith("### Step"):
            problems.append("%s.md: heading %r does not read '### Step <n>: <title> (`<id>`)'" % (rid, line))
        elif sections and not line.startswith("## "):
            sections[-1][3].append(line)
    steps = [s for s in meta.get("steps") or [] if isinstance(s, dict)]
    want = [(i, s.get("title"), s.get("id")) for i, s in enumerate(steps, 1)]
    got = [(n, title, sid) for n, title, sid, _lines in sections]
    if want != got:
        problems.append("%s.md: body steps %s differ from the front matter %s" % (rid, got, want))
    by_id = {s.get("id"): s for s in steps}
    for _n, _title, sid, text_lines in sections:
        text = "\n".join(text_lines)
        for label in FIELDS:
            if label not in text:
                problems.append("%s.md: step %s has no %s line" % (rid, sid, label))
        change_line = next((ln for ln in text_lines if "**Changes:**" in ln), "")
        says_nothing = change_line.split("**Changes:**", 1)[-1].strip().lower().startswith("nothing")
        if sid in by_id and says_nothing == bool(by_id[sid].get("changes")):
            problems.append(
                "%s.md: step %s: the body's Changes line (%r) contradicts changes: %s"
                % (rid, sid, change_line.strip(), by_id[sid].get("changes"))
            )
        if "[%s]" % sid not in text:
            problems.append("%s.md: step %s does not name its task [%s] under Automation" % (rid, sid, sid))
    return problems


def _is_gated_block(entry: dict, sid: str) -> bool:
    """A changing step: a block whose tasks ask (pause) and stop (assert) unless approved (runbook_approved, or
    the allow-list for an alert's run), then act. The pause never waits in a rulebook's run (no one answers)."""
    inner = entry.get("block") or []
    if len(inner) < 3:
        return False
    pause, stop = inner[0], inner[1]
    unapproved = ["not (runbook_approved | bool)", "'%s' not in runbook_auto_steps" % sid]
    return (
        "ansible.builtin.pause" in pause
        and pause.get("when") == unapproved + ["ansible_eda is not defined"]
        and "ansible.builtin.assert" in stop
        and stop.get("when") == unapproved
    )


VARIABLES_ROLE = "opsbook.stack.runbook"


def playbook_of(root: Path, rid: str) -> Path:
    """playbooks/runbook_<id with underscores>.yml: a name ansible-playbook, ansible-runner and EDA's run_playbook
    resolve as opsbook.stack.runbook_<id> (a hyphen or a sub-folder does not)."""
    return root / "playbooks" / ("runbook_%s.yml" % rid.replace("-", "_"))


def check_playbook(rid: str, meta: dict, playbook: Path) -> list[str]:
    if not playbook.exists():
        return ["%s: playbook %s is missing" % (rid, playbook.relative_to(playbook.parents[1]))]
    plays = yaml.safe_load(playbook.read_text())
    if not isinstance(plays, list) or len(plays) != 1:
        return ["%s.yml: must hold exactly one play" % rid]
    play = plays[0]
    problems = []
    if (play.get("vars") or {}).get("runbook_id") != rid:
        problems.append("%s.yml: the play must set vars.runbook_id: %s" % (rid, rid))
    for key in ("pre_tasks", "post_tasks", "handlers"):
        if play.get(key):
            problems.append("%s.yml: '%s' holds tasks outside the steps; put everything in tasks" % (rid, key))
    # The one role is the runbook variables' (defaults and argument spec, no task of its own: roles/runbook).
    if play.get("roles") != [{"role": VARIABLES_ROLE}]:
        problems.append("%s.yml: 'roles' must be exactly [{role: %s}] (the runbook variables)" % (rid, VARIABLES_ROLE))
    tasks = play.get("tasks") or []
    steps = [s for s in meta.get("steps") or [] if isinstance(s, dict)]
    task_ids: list[str | None] = []
    for index, task in enumerate(tasks, 1):
        match = TASK_NAME.match(str(task.get("name", "")))
        if not match:
            problems.append(
                "%s.yml: task %d name %r does not read '[<step id>] <title>'" % (rid, index, task.get("name"))
            )
            task_ids.append(None)
            continue
        sid, title = match.groups()
        task_ids.append(sid)
        step = next((s for s in steps if s.get("id") == sid), None)
        if step is None:
            problems.append("%s.yml: task %r has no step %s in runbooks/%s.md" % (rid, task["name"], sid, rid))
            continue
        if title != step.get("title"):
            problems.append(
                "%s.yml: task of step %s is titled %r, the runbook says %r" % (rid, sid, title, step.get("title"))
            )
        if task.get("tags") != [sid]:
            problems.append("%s.yml: task of step %s must be tagged [%s], is %r" % (rid, sid, sid, task.get("tags")))
        if step.get("changes") and not _is_gated_block(task, sid):
            problems.append(
                "%s.yml: step %s changes something but does not ask for approval "
                "(block: pause + assert when not approved, then the action)" % (rid, sid)
            )
        if not step.get("changes") and "block" in task:
            problems.append("%s.yml: step %s changes nothing and must be one plain task, not a block" % (rid, sid))
    step_ids = [s.get("id") for s in steps]
    for sid in step_ids:
        if sid not in task_ids:
            problems.append("%s: step %s has no task in %s.yml" % (rid, sid, rid))
    for sid in task_ids:
        if sid is not None and task_ids.count(sid) > 1:
            problems.append("%s.yml: step %s has %d tasks, one is allowed" % (rid, sid, task_ids.count(sid)))
            break
    if not problems and task_ids != step_ids:
        problems.append("%s: task order %s differs from the step order %s" % (rid, task_ids, step_ids))
    return problems


def read_runbooks(root: Path) -> tuple[dict[str, dict], list[str]]:
    runbooks, problems = {}, []
    for path in sorted((root / "runbooks").glob("*.md")):
        if path.name == "README.md":
            continue
        try:
            meta, body = split_front_matter(path.read_text())
        except (ValueError, yaml.YAMLError) as exc:
            problems.append("%s: %s" % (path.name, exc))
            continue
        runbooks[path.stem] = {"meta": meta, "body": body}
    return runbooks, problems


def check_runbooks(root: Path) -> list[str]:
    """Everything about runbooks and their playbooks; an empty list means they agree."""
    runbooks, problems = read_runbooks(root)
    for rid in RUNBOOK_IDS:
        if rid not in runbooks:
            problems.append("runbooks/%s.md is missing (a contract runbook id)" % rid)
    for rid, data in runbooks.items():
        problems += check_front_matter(rid, data["meta"])
        problems += check_body(rid, data["meta"], data["body"])
        problems += check_playbook(rid, data["meta"], playbook_of(root, rid))
    for playbook in sorted((root / "playbooks").glob("runbook_*.yml")):
        rid = playbook.stem[len("runbook_") :].replace("_", "-")
        if rid not in runbooks:
            problems.append("playbooks/%s has no runbook runbooks/%s.md" % (playbook.name, rid))
    return problems


def render_alert_rules(root: Path) -> dict[str, dict]:
    """alert name -> {runbook_id, runbook_url, file}, rendered with plain jinja2 and the role's defaults."""
    rules_dir = root / "roles" / "monitoring" / "templates" / "rules"
    defaults_file = root / "roles" / "monitoring" / "defaults" / "main.yml"
    templates = sorted(rules_dir.glob("*.yml.j2"))
    if not templates or not defaults_file.exists():
        raise AssertionError(
            "no alert rules to check: %s/*.yml.j2 or %s is missing (the monitoring role, issue 5, "
            "has not landed)" % (rules_dir.relative_to(root), defaults_file.relative_to(root))
        )
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    variables = yaml.safe_load(defaults_file.read_text()) or {}
    for _round in range(5):  # defaults that refer to other defaults
        for key, value in list(variables.items()):
            if isinstance(value, str) and "{{" in value:
                try:
                    variables[key] = env.from_string(value).render(**variables)
                except jinja2.UndefinedError:
                    pass  # refers to a variable of another role; the rules must not need it
    alerts: dict[str, dict] = {}
    for template in templates:
        text = env.from_string(template.read_text()).render(**variables)
        document = yaml.safe_load(text) or {}
        for group in document.get("groups") or []:
            for rule in group.get("rules") or []:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                if name in alerts:
                    raise AssertionError(
                        "alert %s is defined twice (%s and %s)" % (name, alerts[name]["file"], template.name)
                    )
                alerts[name] = {
                    "runbook_id": (rule.get("labels") or {}).get("runbook_id"),
                    "runbook_url": (rule.get("annotations") or {}).get("runbook_url"),
                    "file": template.name,
                }
    return alerts


def check_alerts(root: Path) -> list[str]:
    runbooks, problems = read_runbooks(root)
    alerts = render_alert_rules(root)
    for name, rule in sorted(alerts.items()):
        rid = rule["runbook_id"]
        if not rid:
            problems.append("alert %s (%s) has no runbook_id label" % (name, rule["file"]))
            continue
        if rid not in runbooks:
            problems.append("alert %s (%s) points at runbook %s, which does not exist" % (name, rule["file"], rid))
            continue
        if not str(rule["runbook_url"] or "").endswith("/%s.md" % rid):
            problems.append("alert %s: runbook_url %r does not end with /%s.md" % (name, rule["runbook_url"], rid))
        if name not in (runbooks[rid]["meta"].get("alerts") or []):
            problems.append("alert %s points at runbook %s, which does not list it under alerts" % (name, rid))
    for rid, data in sorted(runbooks.items()):
        for name in data["meta"].get("alerts") or []:
            if name not in alerts:
                problems.append("runbook %s names alert %s, which no rule defines" % (rid, name))
            elif alerts[name]["runbook_id"] != rid:
                problems.append(
                    "runbook %s names alert %s, whose runbook_id is %s" % (rid, name, alerts[name]["runbook_id"])
                )
    return problems


# --------------------------------------------------------------------------------------------------------
# The real tree
# --------------------------------------------------------------------------------------------------------


def test_every_runbook_agrees_with_its_playbook():
    problems = check_runbooks(REPO)
    assert not problems, "\n".join(problems)


def test_alert_rules_and_runbooks_point_at_each_other():
    # Fails (does not skip) while the monitoring role's rules are missing: the mapping is part of the contract.
    problems = check_alerts(REPO)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------------
# The checker itself, on temporary copies
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A copy of the runbooks, their playbooks and the monitoring role's rules and defaults."""
    for part in ("runbooks", "roles/monitoring/templates/rules", "roles/monitoring/defaults"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, tmp_path / part)
    (tmp_path / "playbooks").mkdir()
    for playbook in (REPO / "playbooks").glob("runbook_*.yml"):
        shutil.copy(playbook, tmp_path / "playbooks" / playbook.name)
    return tmp_path


def _edit_playbook(tree: Path, rid: str, change) -> None:
    path = playbook_of(tree, rid)
    plays = yaml.safe_load(path.read_text())
    change(plays[0]["tasks"])
    path.write_text(yaml.safe_dump(plays, sort_keys=False))


def _edit_runbook(tree: Path, rid: str, old: str, new: str) -> None:
    path = tree / "runbooks" / ("%s.md" % rid)
    text = path.read_text()
    assert old in text, "test setup: %r not in %s" % (old, path)
    path.write_text(text.replace(old, new, 1))


def test_the_copy_is_clean(tree):
    assert check_runbooks(tree) == []


def test_a_removed_task_fails(tree):
    _edit_playbook(tree, "service-down", lambda tasks: tasks.pop(1))
    assert "service-down: step read-logs has no task in service-down.yml" in check_runbooks(tree)


def test_a_task_without_step_fails(tree):
    _edit_playbook(
        tree,
        "service-down",
        lambda tasks: tasks.insert(
            2, {"name": "[sneaky] Restart everything", "tags": ["sneaky"], "ansible.builtin.command": "true"}
        ),
    )
    assert any("has no step sneaky" in p for p in check_runbooks(tree))


def test_a_second_task_for_one_step_fails(tree):
    _edit_playbook(tree, "service-down", lambda tasks: tasks.insert(1, dict(tasks[0])))
    assert any("step check-containers has 2 tasks" in p for p in check_runbooks(tree))


def test_swapped_tasks_fail(tree):
    def swap(tasks):
        tasks[0], tasks[1] = tasks[1], tasks[0]

    _edit_playbook(tree, "service-down", swap)
    assert any(p.startswith("service-down: task order") for p in check_runbooks(tree))


def test_a_wrong_tag_fails(tree):
    _edit_playbook(tree, "service-down", lambda tasks: tasks[0].update(tags=["diagnose"]))
    assert any("must be tagged [check-containers]" in p for p in check_runbooks(tree))


def test_a_renamed_task_fails(tree):
    _edit_playbook(tree, "service-down", lambda tasks: tasks[0].update(name="[check-containers] Look around"))
    assert any("is titled 'Look around'" in p for p in check_runbooks(tree))


def test_a_changing_step_without_approval_fails(tree):
    def ungate(tasks):
        block = next(t for t in tasks if "block" in t)
        block["block"] = block["block"][2:]

    _edit_playbook(tree, "service-down", ungate)
    assert any("does not ask for approval" in p for p in check_runbooks(tree))


def test_a_step_removed_from_the_front_matter_fails(tree):
    _edit_runbook(
        tree, "service-down", "  - id: check-nginx\n    title: Check the Nginx configuration\n    changes: false\n", ""
    )
    problems = check_runbooks(tree)
    assert any("has no step check-nginx" in p for p in problems)
    assert any("body steps" in p for p in problems)


def test_a_body_heading_that_drifted_fails(tree):
    _edit_runbook(tree, "service-down", "### Step 3: Check the Nginx configuration", "### Step 3: Check Nginx")
    assert any(p.startswith("service-down.md: body steps") for p in check_runbooks(tree))


def test_a_body_without_the_manual_command_fails(tree):
    _edit_runbook(tree, "service-down", "- **By hand:** `nginx -t && systemctl status nginx`.", "")
    assert "service-down.md: step check-nginx has no **By hand:** line" in check_runbooks(tree)


def test_a_changes_flag_that_contradicts_the_body_fails(tree):
    _edit_runbook(
        tree,
        "service-down",
        "  - id: read-logs\n    title: Read the recent logs of the service\n    changes: false",
        "  - id: read-logs\n    title: Read the recent logs of the service\n    changes: true",
    )
    problems = check_runbooks(tree)
    assert any("step read-logs: the body's Changes line" in p for p in problems)
    assert any("step read-logs changes something but does not ask for approval" in p for p in problems)


def test_a_missing_runbook_fails(tree):
    (tree / "runbooks" / "redis-problems.md").unlink()
    problems = check_runbooks(tree)
    assert "runbooks/redis-problems.md is missing (a contract runbook id)" in problems
    assert "playbooks/runbook_redis_problems.yml has no runbook runbooks/redis-problems.md" in problems


def test_a_missing_playbook_fails(tree):
    playbook_of(tree, "rollback").unlink()
    assert "rollback: playbook playbooks/runbook_rollback.yml is missing" in check_runbooks(tree)


def test_a_play_without_the_variables_role_fails(tree):
    path = playbook_of(tree, "service-down")
    plays = yaml.safe_load(path.read_text())
    del plays[0]["roles"]
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    assert any("'roles' must be exactly [{role: opsbook.stack.runbook}]" in p for p in check_runbooks(tree))


def test_an_alert_pointing_at_a_missing_runbook_fails(tree):
    rules = tree / "roles" / "monitoring" / "templates" / "rules"
    if not rules.exists():
        pytest.fail("the monitoring role's rules are missing: cannot test the alert check (issue 5)")
    template = next(p for p in sorted(rules.glob("*.yml.j2")) if "runbook_id: service-down" in p.read_text())
    template.write_text(template.read_text().replace("runbook_id: service-down", "runbook_id: service-gone", 1))
    problems = check_alerts(tree)
    assert any("points at runbook service-gone, which does not exist" in p for p in problems)
    assert any(p.startswith("runbook service-down names alert") for p in problems)


def test_a_runbook_naming_an_unknown_alert_fails(tree):
    _edit_runbook(tree, "redis-problems", "alerts: [RedisDown", "alerts: [RedisOnFire, RedisDown")
    assert "runbook redis-problems names alert RedisOnFire, which no rule defines" in check_alerts(tree)


def test_missing_alert_rules_fail_loudly(tree):
    shutil.rmtree(tree / "roles" / "monitoring" / "templates" / "rules", ignore_errors=True)
    with pytest.raises(AssertionError, match="has not landed"):
        check_alerts(tree)
