"""Off-host copies (issue 19): borg over SSH from the app host to the repository host, append-only for the app.

Runs after test_default.py (file order) on the same hosts: back up and copy, lose the repository host during a
run and catch up, fill the repository's disk, restore from the copy after the app host lost its data and every
local backup, flip a byte on the remote, and try to delete the remote history from the app host.
"""
import json
import os
import re
import time

import testinfra

from test_default import CONFIG_DIR, REDIS, TEXTFILE_DIR, fingerprint, playbook, run  # pylint: disable=import-error

testinfra_hosts = ["ansible://app"]
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
PREFIX = os.environ.get("OPSBOOK_MOLECULE_PREFIX", "opsbook")
STORE_NAME = "%s-backup-store" % PREFIX
NEW_NAME = "%s-backup-new" % PREFIX
APP_NAME = "%s-backup" % PREFIX
REPO = "/srv/opsbook-borg/%s" % APP_NAME
JOBS = ("mysql", "postgres", "redis")
FIGURES: dict = {}


def store():
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (STORE_NAME, INVENTORY))


def new_host():
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (NEW_NAME, INVENTORY))


def borg_on_store(args, expect_rc=0):
    """borg on the repository host as the repositories' user, with direct access (the trusted side)."""
    env = "BORG_PASSCOMMAND='cat /etc/opsbook/backup-repository/%s.passphrase' BORG_BASE_DIR=/srv/opsbook-borg/.borg-%s" % (
        APP_NAME,
        APP_NAME,
    )
    return run(store(), "runuser -u opsbook-borg -- env %s borg %s" % (env, args), expect_rc=expect_rc)


def archives():
    return sorted(a["name"] for a in json.loads(borg_on_store("list --json %s" % REPO).stdout)["archives"])


def cli(host, action, job, expect_rc=0, extra=""):
    return run(
        host,
        "opsbook-backup --config %s/%s.json %s %s %s" % (CONFIG_DIR, job, extra, action, job),
        expect_rc=expect_rc,
    )


def metrics(host, job):
    text = host.file("%s/opsbook_backup_%s.prom" % (TEXTFILE_DIR, job)).content_string
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(opsbook_backup_\w+)\{[^}]*\} (\S+)$", text, re.M)}


def local_ids(host, job):
    return json.loads(cli(host, "list", job).stdout)


def test_the_repository_host_lets_the_app_key_only_append(host):
    keys = store().file("/srv/opsbook-borg/.ssh/authorized_keys")
    assert keys.mode == 0o600 and keys.user == "opsbook-borg"
    line = keys.content_string.strip()
    assert line.startswith('command="borg serve --append-only --restrict-to-repository %s",restrict ' % REPO), line
    assert host.file("%s/offsite.passphrase" % CONFIG_DIR).mode == 0o600
    assert host.file("%s/offsite_ed25519" % CONFIG_DIR).mode == 0o600
    # Encrypted at rest: the repository's config names a key; the data never shows a dump's plain text.
    assert "key = " in store().file("%s/config" % REPO).content_string


def test_a_backup_run_copies_every_committed_backup_and_verifies_it_off_host(host):
    started = time.monotonic()
    output = playbook("backup.yml", "-e", "backup_only=%s" % ",".join(JOBS))
    FIGURES["backup_playbook_s"] = round(time.monotonic() - started, 1)
    names = archives()
    for job in JOBS:
        ids = [b["id"] for b in local_ids(host, job)]
        assert ids, job
        # Every local backup, those made before off-host copies were configured included, is in the repository.
        assert {"%s-%s" % (job, i) for i in ids} <= set(names), (job, ids, names)
        got = metrics(host, job)
        assert got["opsbook_backup_offsite_last_exit_code"] == 0, got
        assert got["opsbook_backup_offsite_pending"] == 0, got
        assert got["opsbook_backup_offsite_last_success_timestamp_seconds"] > time.time() - 600
    assert "failed=0" in output


def test_the_repository_host_gone_fails_the_copy_keeps_the_backup_and_the_next_run_catches_up(host):
    repo_host = store()
    # The repository host goes away during the copy: as soon as the copy's `borg serve` runs there, it is killed
    # and sshd stopped.
    run(repo_host, "systemd-run --unit=opsbook-test-cut --collect sh -c 'for i in $(seq 600); do "
        "if pgrep -f \"bin/borg [s]erve\" >/dev/null; then sleep 0.2; pkill -KILL -f \"bin/borg [s]erve\"; "
        "systemctl stop ssh.service; exit 0; fi; sleep 0.05; done'")
    try:
        before = {b["id"] for b in local_ids(host, "redis")}
        failed = cli(host, "backup", "redis", expect_rc=13)
        run(repo_host, "for i in $(seq 100); do systemctl is-active -q opsbook-test-cut || exit 0; sleep 0.1; done; exit 1")
        assert not repo_host.service("ssh").is_running
        assert "ssh://opsbook-borg@%s:22%s" % (STORE_NAME, REPO) in failed.stderr, failed.stderr
        assert "unreachable" in failed.stderr, failed.stderr
        assert "is committed locally" in failed.stderr, failed.stderr
        failed_again = cli(host, "backup", "redis", expect_rc=13)
        assert "unreachable" in failed_again.stderr
        queued = {b["id"] for b in local_ids(host, "redis")} - before
        # Both new backups committed and kept (retention keeps a backup whose copy is pending, keep_last 3 or not).
        assert len(queued) == 2, (before, queued)
        got = metrics(host, "redis")
        assert got["opsbook_backup_offsite_last_exit_code"] == 13 and got["opsbook_backup_offsite_pending"] == 2, got
        assert got["opsbook_backup_last_exit_code"] == 0, got
    finally:
        repo_host.run("systemctl start ssh.service")
    caught_up = json.loads(cli(host, "offsite", "redis").stdout)
    assert set(caught_up["copied"]) == queued, caught_up
    assert caught_up["pending"] == 0
    assert {"redis-%s" % i for i in queued} <= set(archives())
    FIGURES["caught_up"] = len(caught_up["copied"])


def test_a_wrong_passphrase_fails_the_copy_by_name_and_the_next_run_catches_up(host):
    passphrase = "%s/offsite.passphrase" % CONFIG_DIR
    run(host, "cp -p %s %s.good && printf wrong-passphrase-0000 > %s" % (passphrase, passphrase, passphrase))
    try:
        failed = cli(host, "backup", "redis", expect_rc=13)
        assert "passphrase is wrong" in failed.stderr and STORE_NAME in failed.stderr, failed.stderr
        assert metrics(host, "redis")["opsbook_backup_offsite_pending"] == 1
    finally:
        run(host, "mv %s.good %s" % (passphrase, passphrase))
    assert json.loads(cli(host, "offsite", "redis").stdout)["pending"] == 0


def test_a_full_repository_disk_fails_the_copy_by_name_and_loses_nothing(host):
    repo_host = store()
    # The repository moves onto a tmpfs barely larger than it is; once the copy failed the tmpfs grows (the disk
    # "freed"), the catch-up runs on it, and its content goes back to the real directory afterwards.
    used = int(repo_host.run("du -sk %s | cut -f1" % REPO).stdout.split()[0])
    run(repo_host, "rm -rf /tmp/repo-copy && cp -a %s /tmp/repo-copy && mount -t tmpfs -o size=%dk,mode=0700 tmpfs %s "
        "&& cp -a /tmp/repo-copy/. %s && chown opsbook-borg: %s" % (REPO, used + 300, REPO, REPO, REPO))
    mounted = True
    try:
        # 2 MB of random data in Redis: its next dump cannot fit in the 300 KiB left.
        run(host, "docker exec %s sh -c 'head -c 2000000 /dev/urandom | base64 -w0 | redis-cli -x SET blob:full "
            ">/dev/null'" % REDIS)
        failed = cli(host, "backup", "redis", expect_rc=13)
        assert "disk is full" in failed.stderr, failed.stderr
        assert STORE_NAME in failed.stderr and "is committed locally" in failed.stderr, failed.stderr
        assert metrics(host, "redis")["opsbook_backup_offsite_pending"] >= 1
        run(repo_host, "mount -o remount,size=%dk %s" % (used + 65536, REPO))
        caught_up = json.loads(cli(host, "offsite", "redis").stdout)
        assert caught_up["pending"] == 0 and caught_up["copied"], caught_up
        run(repo_host, "rm -rf /tmp/repo-copy && mkdir /tmp/repo-copy && cp -a %s/. /tmp/repo-copy/ && umount %s && find %s -mindepth 1 "
            "-delete && cp -a /tmp/repo-copy/. %s/ && rm -rf /tmp/repo-copy" % (REPO, REPO, REPO, REPO))
        mounted = False
    finally:
        if mounted:
            repo_host.run("umount %s" % REPO)
        run(host, "docker exec %s redis-cli DEL blob:full" % REDIS)
    assert json.loads(cli(host, "offsite", "redis").stdout)["pending"] == 0


def test_restore_onto_a_new_host_from_the_copy_after_the_app_host_lost_its_data_and_backups(host):
    playbook("backup.yml", "-e", "backup_only=%s" % ",".join(JOBS))
    expected = fingerprint(host)
    # The disaster: the app host loses every local backup (moved aside, for the tests after this one) and its
    # databases.
    for job in JOBS:
        run(host, "mv /var/backups/opsbook/%s /var/backups/opsbook/%s.lost" % (job, job))
    run(host, "cd /opt/bkp && docker compose down -v --timeout 5")
    new = new_host()
    assert run(new, "ls /var/backups/opsbook", expect_rc=None).stdout.split() in ([], [".borg"])
    started = time.monotonic()
    playbook("restore.yml", "-e", "restore_hosts=%s" % NEW_NAME, "-e", "restore_component=%s" % ",".join(JOBS),
             "-e", "restore_confirm=true", "-e", "restore_source=offsite")
    FIGURES["restore_onto_new_host_s"] = round(time.monotonic() - started, 1)
    assert fingerprint(new) == expected
    for job in JOBS:
        assert json.loads(cli(new, "list", job).stdout), job  # the fetched backup is committed there
    # The app host gets its stack back (empty: the drill after this runs a throwaway container of its image) and
    # its backups.
    run(host, "cd /opt/bkp && docker compose up -d --wait --wait-timeout 180")
    for job in JOBS:
        run(host, "mv /var/backups/opsbook/%s.lost /var/backups/opsbook/%s" % (job, job))


def test_the_drill_restores_from_the_off_host_copy(host):
    started = time.monotonic()
    result = json.loads(cli(host, "drill", "mysql", extra="--source offsite").stdout)
    FIGURES["drill_from_remote_s"] = round(time.monotonic() - started, 1)
    assert result["source"] == "offsite" and result.get("matches_source", True), result
    assert metrics(host, "mysql")["opsbook_backup_offsite_drill_ok"] == 1


def test_a_flipped_byte_on_the_remote_fails_the_check_and_the_restore_refuses(host):
    repo_host = store()
    # One flipped byte in the middle of every segment file (so that every archive's data is hit); the intact
    # repository is copied aside first and put back at the end.
    run(repo_host, "rm -rf /tmp/repo-intact && cp -a %s /tmp/repo-intact" % REPO)
    flipped = run(repo_host, "python3 - %s/data <<'EOF'\n"
                  "import os, sys\n"
                  "n = 0\n"
                  "for base, _d, files in os.walk(sys.argv[1]):\n"
                  "    for name in files:\n"
                  "        path = os.path.join(base, name)\n"
                  "        size = os.path.getsize(path)\n"
                  "        if size < 1024:\n"
                  "            continue\n"
                  "        with open(path, 'r+b') as f:\n"
                  "            f.seek(size // 2); b = f.read(1); f.seek(size // 2); f.write(bytes([b[0] ^ 0xFF]))\n"
                  "        n += 1\n"
                  "print(n)\n"
                  "EOF" % REPO).stdout.strip()
    assert int(flipped) >= 1
    try:
        checked = cli(host, "offsite-check", "redis", expect_rc=13)
        assert "damaged" in checked.stderr or "borg exited" in checked.stderr, checked.stderr
        assert metrics(host, "redis")["opsbook_backup_offsite_check_ok"] == 0
        # A fresh host (no local backup) fetching from the damaged copy: refused before anything is touched.
        for job in JOBS:
            run(host, "mv /var/backups/opsbook/%s /var/backups/opsbook/%s.kept" % (job, job))
        try:
            refused = [cli(host, "fetch", job, expect_rc=None) for job in JOBS]
            assert all(r.rc in (9, 13) for r in refused), [(r.rc, r.stderr) for r in refused]
            for job, r in zip(JOBS, refused):
                assert "damaged" in r.stderr or "fails verification" in r.stderr, r.stderr
                assert json.loads(cli(host, "list", job).stdout) == [], job  # nothing committed locally
        finally:
            for job in JOBS:
                run(host, "rm -rf /var/backups/opsbook/%s && mv /var/backups/opsbook/%s.kept /var/backups/opsbook/%s"
                    % (job, job, job))
    finally:
        run(repo_host, "rm -rf %s && cp -a /tmp/repo-intact %s && rm -rf /tmp/repo-intact" % (REPO, REPO))
    cli(host, "offsite-check", "redis")
    assert metrics(host, "redis")["opsbook_backup_offsite_check_ok"] == 1


def test_the_app_host_cannot_delete_the_remote_history(host):
    env = ("BORG_PASSCOMMAND='cat %s/offsite.passphrase' BORG_BASE_DIR=/var/backups/opsbook/.borg "
           "BORG_RSH='ssh -o BatchMode=yes -i %s/offsite_ed25519 -o UserKnownHostsFile=%s/offsite_known_hosts'"
           % (CONFIG_DIR, CONFIG_DIR, CONFIG_DIR))
    location = "ssh://opsbook-borg@%s:22%s" % (STORE_NAME, REPO)
    # The trusted side records what it has seen (its retention run).
    run(store(), "runuser -u opsbook-borg -- env PYTHONPATH=/usr/local/lib/opsbook/opsbook-backup.zip python3 -S -m "
        "ansible_collections.opsbook.stack.plugins.module_utils._backup --config "
        "/etc/opsbook/backup-repository/%s.json offsite-prune all" % APP_NAME)
    before = archives()
    size_before = int(run(store(), "du -sb %s/data | cut -f1" % REPO).stdout.split()[0])
    whole = run(host, "env %s borg delete --force %s" % (env, location), expect_rc=None)
    assert whole.rc != 0 and "append-only" in whole.stderr, whole.stderr[-500:]
    victim = before[0]
    run(host, "env %s borg delete %s::%s" % (env, location, victim), expect_rc=None)
    run(host, "env %s borg compact %s" % (env, location), expect_rc=None)
    size_after = int(run(store(), "du -sb %s/data | cut -f1" % REPO).stdout.split()[0])
    assert size_after >= size_before, (size_before, size_after)  # nothing freed: the data is all still there
    prune = run(store(), "runuser -u opsbook-borg -- env PYTHONPATH=/usr/local/lib/opsbook/opsbook-backup.zip python3 -S -m "
                "ansible_collections.opsbook.stack.plugins.module_utils._backup --config "
                "/etc/opsbook/backup-repository/%s.json offsite-prune all" % APP_NAME, expect_rc=13)
    assert victim in prune.stderr and "did not prune" in prune.stderr, prune.stderr
    FIGURES["delete_refused"] = {"archive": victim, "bytes_before": size_before, "bytes_after": size_after}
    print("offsite figures: %s" % json.dumps(FIGURES, sort_keys=True))
