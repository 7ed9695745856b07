"""The fault-injection matrix of issue 14: every changing operation broken at each phase, then rerun under load.

One test per cell, in file order (each starts from the state the one before left, healed first when it is not one
consistent state, and says so in the table). docs/fault-matrix.md says how to read the table, which goes to the
test output and to build/fault-matrix.txt. No cell is expected to fail: a cell that fails names what was wrong.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from matrix import (  # pylint: disable=import-error
    HELPER,
    IMAGE,
    PROJECT,
    ROWS,
    SERVICE,
    TABLE,
    UPGRADE_OPTIONS,
    VERSIONS,
    KeepAliveLoad,
    Row,
    consistency,
    finish_playbook,
    helper_async,
    helper_result,
    inventory,
    journal_truth,
    kill_ansible,
    new_records,
    observe,
    render,
    run_playbook,
    running_version,
    save,
    service_ids,
    start_playbook,
)
from matrix import address as nginx_address  # pylint: disable=import-error

MYSQL = "agentchat-mysql-1"
BACKUP_DIR = "/var/backups/opsbook/mysql"
BACKUP_CONFIG = "/etc/opsbook/backup/mysql.json"
SMALL = "/mnt/opsbook-faults-small"
SEED_ROWS = 8000
DATA: dict = {}


@pytest.fixture(scope="module")
def address(host) -> str:
    return nginx_address(host)


def cell(operation: str, fault: str) -> Row:
    row = Row(operation, fault)
    ROWS.append(row)
    return row


def watch_log(host, row: Row) -> None:
    """The routing watcher's own account (its last lines), beside a stale upstream: the evidence of why."""
    lines = host.run("journalctl -u opsbook-routing-watch -n 12 --no-pager -o short-precise").stdout.splitlines()
    row.notes.append("routing watcher: " + " | ".join(line.split(": ", 1)[-1][:160] for line in lines))


def conclude(row: Row, started: float) -> None:
    row.seconds = time.monotonic() - started
    row.conclude()
    save(ROWS)
    print(render([row]))
    assert not row.problems, "%s / %s:\n  " % (row.operation, row.fault) + "\n  ".join(row.problems)


def settle(load: KeepAliveLoad) -> None:
    """A second of load before the fault: failures in it belong to the state the cell started from."""
    load.window("before")
    time.sleep(1.0)
    load.window("fault")


def load_columns(row: Row, load: KeepAliveLoad, rerun_window: str = "rerun") -> dict:
    counts = load.counts()
    if counts.get("before", {}).get("failed"):
        row.notes.append("%d of %d requests failed before the fault (the state the cell started from): %s"
                         % (counts["before"]["failed"], counts["before"]["requests"], counts["before"]["errors"]))
    fault = counts.get("fault", {"requests": 0, "failed": 0})
    rerun = counts.get(rerun_window, {"requests": 0, "failed": 0})
    row.failed_fault = "%d/%d" % (fault["failed"], fault["requests"])
    row.failed_rerun = "%d/%d" % (rerun["failed"], rerun["requests"])
    return counts


# --------------------------------------------------------------------------------------------------------
# Healing between cells (only when a cell left more than one state behind)
# --------------------------------------------------------------------------------------------------------


def heal(host, row: Row) -> dict:
    """Back to one consistent state when the cell before did not get there, by plain means an operator has."""
    state = observe(host)
    problems = consistency(state)
    if not problems:
        return state
    row.notes.append("healed before the cell: " + "; ".join(problems)[:300])
    if any("upstream" in problem for problem in problems):
        watch_log(host, row)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(state["module_pids"].values()):
        time.sleep(1)
        state = observe(host)
    host.run("%s repair-nginx" % HELPER)
    host.run("docker compose --project-directory /opt/%s up -d --remove-orphans --wait --wait-timeout 120" % PROJECT)
    for service, port in (("backend", 8000), ("frontend", 8080)):
        subprocess.run(["ansible", "all", "-i", inventory(), "-m", "opsbook.stack.nginx_upstream", "-a",
                        "project=%s service=%s port=%d" % (PROJECT, service, port)],
                       capture_output=True, text=True, timeout=300, check=False)
    state = observe(host)
    left = consistency(state)
    if left:
        row.notes.append("still not consistent after healing: " + "; ".join(left)[:300])
    return state


# --------------------------------------------------------------------------------------------------------
# upgrade
# --------------------------------------------------------------------------------------------------------


def wait_args(phase: str, since: float, old: list[str], options: dict, fault: str) -> list[str]:
    args = ["wait", "--project", PROJECT, "--service", SERVICE, "--phase", phase, "--since", "%.3f" % since,
            "--old", ",".join(old), "--bake-s", str(options["bake_s"]), "--fault", fault, "--timeout", "150"]
    return args + (["--no-gate"] if options.get("gate_requests") == 0 else [])


def check_upgrade_end(row: Row, before: dict, after: dict, target: str, rerun, killed_record, survived: bool) -> None:
    row.fail("state", *consistency(after))
    story, journal_problems = journal_truth(before, after, killed_record, survived)
    row.journal = story
    row.fail("journal", *journal_problems)
    if running_version(after) != target:
        row.fail("state", "%s runs %s after the rerun, the rerun asked for %s" % (SERVICE, running_version(after),
                                                                                     target))
    if rerun.rc != 0:
        row.fail("rerun", "the rerun failed: %s" % rerun.summary())


def upgrade_cell(host, address: str, row: Row, phase: str, kill: str, fault: str = "", **options) -> dict:
    """Upgrade to the other version, break it at `phase`, rerun the same playbook under load."""
    started = time.monotonic()
    before = heal(host, row)
    current = running_version(before)
    target = VERSIONS[1] if current == VERSIONS[0] else VERSIONS[0]
    opts = {**UPGRADE_OPTIONS, **options}
    extra = {"upgrade_services": {SERVICE: target}, "upgrade_options": opts}
    helper_fault = fault or ("kill-module:rolling_upgrade" if kill == "module" else "none")
    since = time.time()
    with KeepAliveLoad(address) as load:
        settle(load)
        proc = start_playbook("upgrade.yml", extra)
        seen = helper_result(helper_async(host, *wait_args(phase, since, service_ids(before), opts, helper_fault)))
        if kill == "ansible" and seen.get("reached"):
            kill_ansible(proc)
        first = finish_playbook(proc, killed=kill == "ansible" and bool(seen.get("reached")))
        mid = observe(host)
        if fault == "break-nginx":
            check_nginx_fault(row, before, mid, first, target)
            host.run("%s repair-nginx" % HELPER)  # the operator removes the broken file, then reruns
        load.window("rerun")
        rerun = run_playbook("upgrade.yml", extra)
        load.window("after")
    after = observe(host)
    counts = load_columns(row, load)
    note_fault(row, seen, first, current, target)
    killed_record = seen.get("record") or next((r["id"] for r in new_records(before, mid)), None)
    note_left(row, mid)
    row.notes.append("rerun: %s" % rerun.summary())
    check_upgrade_end(row, before, after, target, rerun, killed_record, survived=kill == "ansible")
    if counts["rerun"]["failed"]:
        row.fail("load", "%d failed requests during the rerun: %s" % (counts["rerun"]["failed"],
                                                                         counts["rerun"]["errors"]))
    conclude(row, started)
    return after


def note_fault(row: Row, seen: dict, first, current: str, target: str) -> None:
    if not seen.get("reached"):
        row.fail("fault", "not injected: %s never reached (phases seen: %s; %s)"
                            % (row.fault, seen.get("seen"), seen.get("fault")))
    versions = "%s -> %s; " % (current, target) if target else ""
    row.notes.append("%sfault at %s (%s, %.1f s after the start): %s; first run %s"
                     % (versions, seen.get("phase"), seen.get("source"), seen.get("after_s", 0),
                        {k: v for k, v in seen.items() if k in ("fault", "killed", "rc", "took_s")}, first.summary()))


def note_left(row: Row, mid: dict) -> None:
    """What the fault left for the rerun (not a criterion: the rerun has to mend it)."""
    left = consistency(mid)
    records = [r for r in mid["journal"] if r["status"] == "in_progress"]
    row.notes.append("left by the fault: %s%s" % ("; ".join(left)[:400] or "one consistent state",
                                                  "; in_progress: %s" % [r["id"] for r in records] if records else ""))


def check_nginx_fault(row: Row, before: dict, mid: dict, first, target: str) -> None:
    """A broken file of someone else's in conf.d while the upgrade runs. The switch is a write of the service's
    hosts file, not an Nginx activation (docs/routing.md), so the upgrade needs no reload and must finish: baked,
    recorded, the traffic on the new containers. It leaves the broken file alone (it is not the collection's)."""
    if first.rc != 0:
        row.fail("rerun", "the upgrade failed although it needs no Nginx reload: %s" % first.summary())
    if running_version(mid) != target:
        row.fail("state", "%s runs %s with the broken file there, the upgrade asked for %s"
                          % (SERVICE, running_version(mid), target))
    if mid["nginx_test"] == 0:
        row.fail("state", "the broken Nginx file is gone or fixed: the upgrade touched a file that is not its own")
    done = [r for r in new_records(before, mid) if r["status"] == "succeeded" and r["phase"] == "done"]
    if not done:
        row.fail("journal", "the upgrade is not recorded succeeded (done): %s" % new_records(before, mid))


ANSIBLE_PHASES = ("planned", "gated", "switched", "baking", "draining")
MODULE_PHASES = ("starting", "gated", "switched", "baking", "draining")


@pytest.mark.parametrize("phase", ANSIBLE_PHASES)
def test_upgrade_sigkill_of_ansible_playbook(host, address, phase):
    upgrade_cell(host, address, cell("upgrade", "SIGKILL ansible-playbook at %s" % phase), phase, "ansible")


@pytest.mark.parametrize("phase", MODULE_PHASES)
def test_upgrade_sigkill_of_the_module_on_the_host(host, address, phase):
    upgrade_cell(host, address, cell("upgrade", "SIGKILL module at %s" % phase), phase, "module")


def test_upgrade_docker_daemon_restart(host, address):
    upgrade_cell(host, address, cell("upgrade", "dockerd restart at starting"), "starting", "", "restart-docker")


def test_upgrade_with_a_broken_nginx_file(host, address):
    # No gate, so that nothing but the switch could touch Nginx; the switch needs no reload (docs/routing.md).
    upgrade_cell(host, address, cell("upgrade", "broken Nginx file from starting on"), "starting", "", "break-nginx",
                 gate_requests=0)


# --------------------------------------------------------------------------------------------------------
# rollback
# --------------------------------------------------------------------------------------------------------


def rolled_back_from(before: dict, after: dict, version: str) -> list[str]:
    """The release rolled back from no longer says succeeded (it is not a rollback target any more)."""
    old = [r for r in before["journal"] if r["status"] == "succeeded" and r["images"].get(SERVICE) == IMAGE % version]
    if not old:
        return []
    now = {r["id"]: r for r in after["journal"]}.get(old[-1]["id"])
    if now is not None and now["status"] == "succeeded":
        return ["release %s (%s), rolled back from, still says succeeded" % (old[-1]["id"], version)]
    return []


def upgrade_away(host, row: Row, before: dict) -> dict:
    """Upgrade to the other version first, so that the cell's rollback has an earlier release to return to.
    Right after a rollback (the cell before), a rollback changes nothing by design (docs/state-machine.md,
    "Rollback target"), and neither a fault nor a rerun would be tested."""
    away = VERSIONS[1] if running_version(before) == VERSIONS[0] else VERSIONS[0]
    done = run_playbook("upgrade.yml", {"upgrade_services": {SERVICE: away}, "upgrade_options": UPGRADE_OPTIONS})
    if done.rc != 0:
        row.fail("state", "the upgrade before the rollback failed: %s" % done.summary())
    row.notes.append("upgraded to %s first: %s" % (away, done.summary()))
    return observe(host)


@pytest.mark.parametrize("phase", ("switched", "draining"))
def test_rollback_sigkill_of_the_module_on_the_host(host, address, phase):
    row = cell("rollback", "SIGKILL module at %s" % phase)
    started = time.monotonic()
    before = upgrade_away(host, row, heal(host, row))
    current = running_version(before)
    target = VERSIONS[1] if current == VERSIONS[0] else VERSIONS[0]
    extra = {"upgrade_options": UPGRADE_OPTIONS}
    since = time.time()
    with KeepAliveLoad(address) as load:
        settle(load)
        proc = start_playbook("rollback.yml", extra)
        args = wait_args(phase, since, service_ids(before), UPGRADE_OPTIONS, "kill-module:rollback")
        seen = helper_result(helper_async(host, *args))
        first = finish_playbook(proc)
        mid = observe(host)
        load.window("rerun")
        rerun = run_playbook("rollback.yml", extra)
        load.window("after")
    after = observe(host)
    counts = load_columns(row, load)
    note_fault(row, seen, first, current, target)
    killed = seen.get("record") or next((r["id"] for r in new_records(before, mid)), None)
    note_left(row, mid)
    row.notes.append("rerun: %s" % rerun.summary())
    check_upgrade_end(row, before, after, target, rerun, killed, survived=False)
    row.fail("journal", *rolled_back_from(before, after, current))
    if counts["rerun"]["failed"]:
        row.fail("load", "%d failed requests during the rerun: %s" % (counts["rerun"]["failed"],
                                                                         counts["rerun"]["errors"]))
    conclude(row, started)


def test_rollback_rerun_right_after_a_rollback_changes_nothing(host, address):
    row = cell("rollback", "rerun after a finished rollback")
    started = time.monotonic()
    before = upgrade_away(host, row, heal(host, row))
    current = running_version(before)
    extra = {"upgrade_options": UPGRADE_OPTIONS}
    with KeepAliveLoad(address) as load:
        settle(load)
        first = run_playbook("rollback.yml", extra)
        middle = observe(host)
        load.window("rerun")
        rerun = run_playbook("rollback.yml", extra)
        load.window("after")
    after = observe(host)
    counts = load_columns(row, load)
    row.journal = journal_truth(before, after, None, True)[0]
    row.notes.append("%s -> %s by the first rollback (%s); the second: %s"
                     % (current, running_version(middle), first.summary(), rerun.summary()))
    row.fail("state", *consistency(after))
    row.fail("journal", *journal_truth(before, after, None, True)[1])
    if first.rc != 0:
        row.fail("rerun", "the first rollback failed: %s" % first.summary())
    if rerun.rc != 0 or rerun.changed:
        row.fail("rerun", "the second rollback was not a no-op: %s" % rerun.summary())
    if running_version(after) != running_version(middle):
        row.fail("state", "the second rollback moved %s from %s to %s" % (SERVICE, running_version(middle),
                                                                            running_version(after)))
    row.fail("journal", *rolled_back_from(before, after, current))
    if counts["rerun"]["failed"]:
        row.fail("load", "%d failed requests during the rerun" % counts["rerun"]["failed"])
    conclude(row, started)


# --------------------------------------------------------------------------------------------------------
# backup and restore (data: the row checksums of a seeded table)
# --------------------------------------------------------------------------------------------------------


def sql(host, query: str) -> str:
    """The query on stdin of the MariaDB client in the container (no quoting of SQL inside a shell line)."""
    encoded = base64.b64encode(query.encode()).decode()
    return host.check_output("echo %s | base64 -d | docker exec -i %s sh -c 'MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" "
                             "exec mariadb -uroot -N -B agentchat'" % (encoded, MYSQL))


def fingerprint(host) -> str:
    rows = "SELECT COUNT(*), BIT_XOR(CRC32(CONCAT_WS(0x7c, id, name, HEX(data)))) FROM fault_items"
    return sql(host, "CHECKSUM TABLE fault_items; " + rows).replace("\t", " ").replace("\n", " | ")


def backups(host, config: str = BACKUP_CONFIG, job: str = "mysql") -> list[dict]:
    out = host.run("opsbook-backup --config %s list %s" % (config, job))
    return json.loads(out.stdout) if out.rc == 0 and out.stdout.strip() else []


def leftovers(host, directory: str) -> list[str]:
    """Half-written files and backup directories without a manifest (not a backup, never pruned)."""
    partial = host.run("find %s -name '*.partial*'" % directory).stdout.split()
    uncommitted = host.run("for d in %s/*/; do [ -e \"$d/manifest.json\" ] || echo \"$d\"; done" % directory)
    return partial + [d for d in uncommitted.stdout.split() if d and "*" not in d]


def test_seed_and_a_first_backup(host):
    sql(host, "CREATE TABLE fault_items (id INT PRIMARY KEY, name VARCHAR(40), data BLOB); INSERT INTO fault_items "
              "SELECT seq, CONCAT('item-', seq), RANDOM_BYTES(1024) FROM seq_1_to_%d" % SEED_ROWS)
    DATA["seeded"] = fingerprint(host)
    done = run_playbook("backup.yml", {"backup_only": "mysql"})
    assert done.rc == 0, done.summary()
    assert len(backups(host)) == 1


def test_backup_sigkill_during_the_dump(host, address):
    row = cell("backup", "SIGKILL module during the dump")
    started = time.monotonic()
    heal(host, row)
    before = backups(host)
    with KeepAliveLoad(address) as load:
        settle(load)
        proc = start_playbook("backup.yml", {"backup_only": "mysql"})
        seen = helper_result(helper_async(host, "wait-process", "--pattern", "mariadb-dump", "--state-dir", BACKUP_DIR,
                                          "--phase", "dumping", "--fault", "kill-module:backup"))
        first = finish_playbook(proc)
        mid_left = leftovers(host, BACKUP_DIR)
        load.window("rerun")
        rerun = run_playbook("backup.yml", {"backup_only": "mysql"})
        load.window("after")
    counts = load_columns(row, load)
    note_fault(row, seen, first, "", "")
    after = backups(host)
    row.journal = "backups %d -> %d; left by the kill: %s" % (len(before), len(after), len(mid_left))
    if rerun.rc != 0:
        row.fail("rerun", "the rerun failed: %s" % rerun.summary())
    if len(after) != len(before) + 1 or any(b.get("problems") for b in after):
        row.fail("journal", "backups before %s, after %s" % ([b["id"] for b in before],
                                                            [(b["id"], b.get("problems")) for b in after]))
    left = leftovers(host, BACKUP_DIR)
    if left:
        row.fail("state", "left behind after the rerun: %s" % left)
    if host.run("opsbook-backup --config %s verify mysql" % BACKUP_CONFIG).rc != 0:
        row.fail("journal", "the newest backup does not verify")
    row.fail("data", *data_problems(host, "seeded"))
    row.fail("state", *consistency(observe(host)))
    if counts["rerun"]["failed"]:
        row.fail("load", "%d failed requests during the rerun" % counts["rerun"]["failed"])
    conclude(row, started)


def data_problems(host, expected: str) -> list[str]:
    now = fingerprint(host)
    return [] if now == DATA[expected] else ["data differ: %s, expected %s" % (now, DATA[expected])]


def test_backup_disk_full(host, address):
    row = cell("backup", "disk full (3 MiB tmpfs as dest)")
    started = time.monotonic()
    heal(host, row)
    config = {"dest": SMALL, "metrics_dir": "/root/faults-metrics", "min_free_bytes": 0, "space_margin": 0,
              "components": {"mysql": {"type": "mariadb", "container": MYSQL}}}
    host.run("mkdir -p %s && (mountpoint -q %s || mount -t tmpfs -o size=3m tmpfs %s)" % (SMALL, SMALL, SMALL))
    host.run("echo '%s' > /root/faults-small.json" % json.dumps(config))
    cli = "opsbook-backup --config /root/faults-small.json"
    try:
        with KeepAliveLoad(address) as load:
            settle(load)
            full = host.run(cli + " backup mysql")
            mid_left = leftovers(host, SMALL + "/mysql")
            host.run("mount -o remount,size=256m %s" % SMALL)  # the operator frees space, then reruns
            load.window("rerun")
            rerun = host.run(cli + " backup mysql")
            load.window("after")
        counts = load_columns(row, load)
        row.journal = "exit %d (%s) -> exit %d" % (full.rc, "disk_full" if "disk_full" in full.stderr else "?",
                                                   rerun.rc)
        if full.rc != 8 or "disk_full" not in full.stderr:
            row.fail("journal", "the full disk gave exit %d: %s" % (full.rc, full.stderr[-300:]))
        if mid_left:
            row.fail("state", "left behind by the full disk: %s" % mid_left)
        if rerun.rc != 0:
            row.fail("rerun", "the rerun failed (exit %d): %s" % (rerun.rc, rerun.stderr[-300:]))
        listed = backups(host, "/root/faults-small.json")
        if len(listed) != 1 or listed[0].get("problems"):
            row.fail("journal", "backups on the tmpfs after the rerun: %s" % listed)
        if leftovers(host, SMALL + "/mysql"):
            row.fail("state", "left behind after the rerun: %s" % leftovers(host, SMALL + "/mysql"))
        row.fail("data", *data_problems(host, "seeded"))
        if counts["rerun"]["failed"]:
            row.fail("load", "%d failed requests during the rerun" % counts["rerun"]["failed"])
    finally:
        host.run("umount %s" % SMALL)
    conclude(row, started)


@pytest.mark.parametrize("kill", ("module", "ansible"))
def test_restore_sigkill_during_the_restore(host, address, kill):
    row = cell("restore", "SIGKILL %s during the restore" % ("module" if kill == "module" else "ansible-playbook"))
    started = time.monotonic()
    heal(host, row)
    sql(host, "DELETE FROM fault_items WHERE id % 3 = 0; UPDATE fault_items SET name = 'changed' WHERE id % 7 = 0")
    damaged = fingerprint(host)
    extra = {"restore_component": "mysql", "restore_confirm": True}
    with KeepAliveLoad(address) as load:
        settle(load)
        proc = start_playbook("restore.yml", extra)
        seen = helper_result(helper_async(host, "wait-process", "--pattern", "binary-mode", "--state-dir", BACKUP_DIR,
                                          "--phase", "copying,swapping",
                                          "--fault", "kill-module:restore" if kill == "module" else "none"))
        if kill == "ansible" and seen.get("reached"):
            kill_ansible(proc)
        first = finish_playbook(proc, killed=kill == "ansible" and bool(seen.get("reached")))
        mid = fingerprint(host)
        load.window("rerun")
        rerun = run_playbook("restore.yml", extra)
        load.window("after")
        time.sleep(3)  # requests after the writers are back
    counts = load_columns(row, load)
    note_fault(row, seen, first, "", "")
    row.notes.append("data after the fault: %s" % ("as damaged" if mid == damaged else "as seeded"
                                                   if mid == DATA["seeded"] else "neither (half restored)"))
    row.journal = "restore rerun %s" % rerun.summary()
    if rerun.rc != 0:
        row.fail("rerun", "the rerun failed: %s" % rerun.summary())
    row.fail("data", *data_problems(host, "seeded"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(observe(host)["module_pids"].values()):
        time.sleep(1)
    left = consistency(observe(host))
    row.fail("state", *left)
    if any("upstream" in problem for problem in left):
        watch_log(host, row)
    # The playbook stops the writers while it restores (by design): requests fail during the rerun. After it, none.
    row.failed_rerun += " (writers stopped); after: %d/%d" % (counts["after"]["failed"], counts["after"]["requests"])
    if counts["after"]["failed"]:
        row.fail("load", "%d failed requests after the restore: %s" % (counts["after"]["failed"],
                                                                          counts["after"]["errors"]))
    conclude(row, started)


def test_zz_the_matrix(host):
    """The table, in the test output (conftest.py prints it again at the end) and in build/fault-matrix.txt."""
    save(ROWS)
    print("\nfault matrix written to %s\n%s" % (TABLE, render(ROWS)))
