#!/usr/bin/env python3
"""Where the test suite's time goes, from the logs ./dev keeps in build/.

    profile.py hosts MOLECULE_YML SHARED_CONFIG SCENARIO [--image IMAGE]
                                                           the instance names of a scenario, one a line
    profile.py summary BUILD_DIR [--top N] [--budget-min M] [--scenarios A,B,...]
                                                           the slowest tasks and tests, the phases and the budget

The molecule logs (build/molecule/<scenario>.log) carry ansible's profile_tasks lines and pytest's --durations
report of the verifier; build/unit.log carries the unit tests' --durations report. The summary is printed and
written to build/profile-summary.txt. It exits 1 when a scenario it was told about has no log, no exit status
or a failed one: a skipped scenario is a failure, not a shorter run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import typing as t
from dataclasses import dataclass
from pathlib import Path

import yaml

# ${VAR:-default} and ${VAR}, as molecule interpolates them.
ENV_REF = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
# molecule announces each step: "INFO     [docker_engine > converge] Executing" (older: "INFO     Running x > y").
STEP = re.compile(r"\[(?P<scenario>[\w-]+) > (?P<step>[\w-]+)\] Executing|Running (?P<s2>[\w-]+) > (?P<st2>[\w-]+)")
# profile_tasks' recap: "role : task name ------------------------ 12.34s"
TASK = re.compile(r"^(?P<name>.+?) -{3,} (?P<secs>\d+\.\d+)s\s*$")
# pytest --durations: "12.34s call     path::test[param]"
TEST = re.compile(r"^(?P<secs>\d+\.\d+)s (?P<when>setup|call|teardown)\s+(?P<name>\S+)")
# timer: "Playbook run took 0 days, 0 hours, 1 minutes, 2 seconds"; pytest: "===== 7 passed in 11.68s ====="
PLAYBOOK = re.compile(r"Playbook run took (\d+) days, (\d+) hours, (\d+) minutes, (\d+) seconds")
PYTEST_END = re.compile(r"^=+ .*\b(?:passed|failed|error)\b.* in (\d+\.\d+)s")
# pytest's short summary: "FAILED tests/test_x.py::test_y[param] - AssertionError: ..." (and ERROR for set-up).
FAILED_TEST = re.compile(r"^(?:FAILED|ERROR) \S+::\S+")


@dataclass(frozen=True)
class Item:
    seconds: float
    kind: str  # task or test
    where: str  # scenario > step, or unit
    name: str


def interpolate(text: str, env: dict[str, str]) -> str:
    return ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def scenario_hosts(molecule_yml: Path, shared: Path, scenario: str, image: str = "") -> list[str]:
    """The instance names of a scenario (its own platforms, or the shared ones); with image, those made from it
    that mount a Docker volume of their own (<name>-docker on /var/lib/docker: the volumes ./dev seeds)."""
    env = dict(os.environ, MOLECULE_SCENARIO_NAME=scenario)
    env.setdefault("OPSBOOK_MOLECULE_PREFIX", "opsbook")
    for path in (molecule_yml, shared):
        data = yaml.safe_load(interpolate(path.read_text(), env)) or {}
        if data.get("platforms"):
            return [
                p["name"]
                for p in data["platforms"]
                if not image
                or (
                    p.get("image") == image
                    and any(str(v).startswith(p["name"] + "-docker:") for v in p.get("volumes") or [])
                )
            ]
    return []


def lines_by_step(text: str) -> t.Iterator[tuple[str, str]]:
    """(molecule step, line) for each line of a scenario's log that is not itself a step header ("?" before one)."""
    step = "?"
    for line in text.splitlines():
        m = STEP.search(line)
        if m:
            step = m.group("step") or m.group("st2")
        else:
            yield step, line


def parse_molecule_log(scenario: str, text: str) -> list[Item]:
    items: list[Item] = []
    for step, line in lines_by_step(text):
        m = TASK.match(line)
        if m:
            items.append(Item(float(m.group("secs")), "task", f"{scenario} > {step}", m.group("name").strip()))
            continue
        m = TEST.match(line)
        if m:
            name = m.group("name").split("/tests/", 1)[-1]
            items.append(Item(float(m.group("secs")), "test", f"{scenario} > verify", f"{m.group('when')} {name}"))
    return items


def step_seconds(text: str) -> dict[str, float]:
    """Seconds per molecule step (create, converge, ...; the same step twice adds up) from timer and pytest."""
    steps: dict[str, float] = {}
    for step, line in lines_by_step(text):
        m = PLAYBOOK.search(line)
        if m:
            d, h, mi, s = (int(x) for x in m.groups())
            steps[step] = steps.get(step, 0) + ((d * 24 + h) * 60 + mi) * 60 + s
            continue
        m = PYTEST_END.match(line)
        if m:
            steps[step] = steps.get(step, 0) + float(m.group(1))
    return steps


def parse_unit_log(text: str) -> list[Item]:
    items = []
    for line in text.splitlines():
        m = TEST.match(line)
        if m:
            items.append(Item(float(m.group("secs")), "test", "unit", f"{m.group('when')} {m.group('name')}"))
    return items


def failed_tests(text: str) -> list[str]:
    """The FAILED and ERROR lines of pytest's short summaries in a log, in their order, each once."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if FAILED_TEST.match(line):
            seen.setdefault(line.rstrip(), None)
    return list(seen)


def phase_seconds(phase: str) -> int:
    """'lint          220s' -> 220; 0 when the line has no seconds."""
    words = phase.split()
    return int(words[1][:-1]) if len(words) > 1 and words[1].endswith("s") and words[1][:-1].isdigit() else 0


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def summary(
    build: Path, top: int, budget_min: float, scenarios: list[str], phases: list[str], wall: int | None = None
) -> tuple[str, bool]:
    logs = build / "molecule"
    unit_log = read(build / "unit.log")
    items = parse_unit_log(unit_log)
    failures = [f"  unit: {line}" for line in failed_tests(unit_log)]
    times: dict[str, int] = {}
    problems: list[str] = []
    names = scenarios or sorted(p.stem for p in logs.glob("*.log"))
    per_step: list[str] = []
    for s in names:
        text = read(logs / f"{s}.log")
        items += parse_molecule_log(s, text)
        failures += [f"  {s}: {line}" for line in failed_tests(text)]
        steps = step_seconds(text)
        if steps:
            per_step.append(f"  {s:14} " + "  ".join(f"{k} {v:.0f}s" for k, v in steps.items()))
        rc = read(logs / f"{s}.rc").strip()
        if not (logs / f"{s}.log").is_file() or rc == "":
            problems.append(f"scenario {s} did not run (no log or no exit status in {logs})")
        elif rc != "0":
            problems.append(f"scenario {s} failed (exit {rc}, log {logs / (s + '.log')})")
        t = read(logs / f"{s}.time").strip()
        if t.isdigit():
            times[s] = int(t)
    out = [f"slowest {top} tasks and tests across the suite:"]
    for it in sorted(items, key=lambda i: -i.seconds)[:top]:
        out.append(f"  {it.seconds:8.1f}s  {it.kind:4}  {it.where:28}  {it.name[:110]}")
    if per_step:
        out.append("molecule steps (ansible timer, pytest):")
        out += per_step
    if phases:
        out.append("phases:")
        out += [f"  {p}" for p in phases]
    total = wall if wall is not None else sum(phase_seconds(p) for p in phases)
    slowest = max(times.items(), key=lambda kv: kv[1]) if times else ("none", 0)
    out.append(
        f"budget: total {total}s ({total / 60:.1f} min) of {budget_min:.0f} min; "
        f"slowest scenario {slowest[0]} {slowest[1]}s" + ("  OVER BUDGET" if total > budget_min * 60 else "")
    )
    if failures:
        # CI shows the end of the output only: the names of the failed tests are what it must keep.
        out.append("failed tests:")
        out += failures
    out += [f"PROBLEM: {p}" for p in problems]
    return "\n".join(out) + "\n", not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hosts")
    h.add_argument("molecule_yml", type=Path)
    h.add_argument("shared", type=Path)
    h.add_argument("scenario")
    h.add_argument("--image", default="", help="only the hosts made from this image")
    s = sub.add_parser("summary")
    s.add_argument("build", type=Path)
    s.add_argument("--top", type=int, default=15)
    s.add_argument("--budget-min", type=float, default=60)
    s.add_argument("--scenarios", default="", help="comma-separated scenarios that must have run")
    s.add_argument("--phase", action="append", default=[], help="'NAME SECONDSs' lines of ./dev's phases")
    s.add_argument("--total", type=int, default=None, help="wall-clock seconds of the run (default: sum of phases)")
    args = parser.parse_args(argv)
    if args.cmd == "hosts":
        print("\n".join(scenario_hosts(args.molecule_yml, args.shared, args.scenario, args.image)))
        return 0
    wanted = [x for x in args.scenarios.split(",") if x]
    text, ok = summary(args.build, args.top, args.budget_min, wanted, args.phase, args.total)
    args.build.mkdir(parents=True, exist_ok=True)
    (args.build / "profile-summary.txt").write_text(text)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
