# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""`./dev test`'s scheduler (schedule_scenarios in dev), run by bash with stand-ins for the checks and the
scenarios that only sleep and log: while lint and unit run only the scenarios without load tests run, one at a
time; once they end, two at a time, none left out, the queue in its order; a failed scenario is named."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import subprocess
from pathlib import Path

DEV = Path(__file__).resolve().parents[2] / "dev"


def function(name: str) -> str:
    """The text of one bash function of dev (from `name() {` to its closing brace at the line start)."""
    found = re.search(r"^%s\(\) \{\n.*?^\}\n" % re.escape(name), DEV.read_text(encoding="utf-8"), re.M | re.S)
    assert found, "dev has no function %s" % name
    return found.group(0)


HARNESS = (
    r"""
set -euo pipefail
say() { printf '=== %s\n' "$*"; }
MOL_LOGS=$1; shift
TAIL_JOBS=2
PHASES=()
declare -A SECONDS_OF=([de]=1 [bk]=1 [ca]=3 [faults]=2 [up]=2 [rb]=1 [mon]=1 [nx]=1)
molecule_one() {  # stand-in: log start and end, sleep, write .rc and .time like the real one
  local s=$1
  echo "start $s $(date +%s.%N)" >>"$MOL_LOGS/events"
  sleep "${SECONDS_OF[$s]}"
  echo "end $s $(date +%s.%N)" >>"$MOL_LOGS/events"
  echo "${SECONDS_OF[$s]}" >"$MOL_LOGS/$s.time"
  if [[ "$s" == "${FAIL:-}" ]]; then echo 1 >"$MOL_LOGS/$s.rc"; else echo 0 >"$MOL_LOGS/$s.rc"; fi
}
"""
    + function("schedule_scenarios")
    + function("scenario_results")
    + r"""
( echo "start checks $(date +%s.%N)" >>"$MOL_LOGS/events"; sleep 2.5;
  echo "end checks $(date +%s.%N)" >>"$MOL_LOGS/events" ) &
checks=$!
schedule_scenarios "$checks" de bk ca -- faults up rb mon nx
rc=0
scenario_results de bk ca faults up rb mon nx || rc=$?
printf '%s\n' "${PHASES[@]}"
exit "$rc"
"""
)


def run(tmp_path: Path, fail: str = "") -> tuple[subprocess.CompletedProcess, list[tuple[str, str, float]]]:
    proc = subprocess.run(
        ["bash", "-c", HARNESS, "harness", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "FAIL": fail},
    )
    events = []
    for line in (tmp_path / "events").read_text().splitlines():
        kind, name, when = line.split()
        events.append((kind, name, float(when)))
    return proc, events


def test_only_the_scenarios_without_load_run_beside_the_checks_then_two_at_a_time(tmp_path):
    proc, events = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    when = {(kind, name): at for kind, name, at in events}
    started = [name for kind, name, _at in sorted(events, key=lambda e: e[2]) if kind == "start" and name != "checks"]
    # Every scenario ran once; the beside ones in their order, the queue in its order.
    assert sorted(started) == sorted(["de", "bk", "ca", "faults", "up", "rb", "mon", "nx"])
    assert [s for s in started if s in ("de", "bk", "ca")] == ["de", "bk", "ca"]
    assert [s for s in started if s not in ("de", "bk", "ca")] == ["faults", "up", "rb", "mon", "nx"]
    # No scenario of the queue before the checks ended; one at a time beside the checks.
    assert when[("start", "faults")] >= when[("end", "checks")]
    assert when[("start", "bk")] >= when[("end", "de")]
    # The queue's first starts as soon as the checks end, beside the beside scenario still running (ca).
    assert when[("start", "faults")] < when[("end", "ca")]
    # Never more than two scenarios at a time.
    running = peak = 0
    for kind, name, _at in sorted(events, key=lambda e: (e[2], e[0] == "start")):
        if name == "checks":
            continue
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert "mol:faults" in proc.stdout and "FAILED" not in proc.stdout


def test_a_failed_scenario_is_named_and_the_others_still_run(tmp_path):
    proc, events = run(tmp_path, fail="up")
    assert proc.returncode == 1
    assert "molecule scenario(s) failed: up" in proc.stderr
    assert re.search(r"mol:up +2s  FAILED \(rc 1", proc.stdout)
    assert len([e for e in events if e[0] == "end" and e[1] != "checks"]) == 8
