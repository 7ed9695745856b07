"""The backup role and the backup/restore playbooks on a real Compose stack (MariaDB, PostgreSQL, Redis, backend).

The tests run in file order and build on each other: seed, back up, damage, restore, compare; a cron line run
as cron runs it; a tmpfs that fills up; a flipped byte.
"""
import base64
import hashlib
import json
import os
import shlex
import shlex
import subprocess
import time

import yaml


PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
MYSQL, POSTGRES, REDIS, BACKEND = "bkp-mysql-1", "bkp-postgres-1", "bkp-redis-1", "bkp-backend-1"
TEXTFILE_DIR = "/var/lib/node_exporter/textfile_collector"
CONFIG_DIR = "/etc/opsbook/backup"
SMALL = "/mnt/opsbook-small"
SEEDED: dict = {}
testinfra_hosts = ["ansible://app"]


def run(host, command, stdin=None, expect_rc=0):
    if stdin is not None:
        command = "echo %s | base64 -d | %s" % (base64.b64encode(stdin.encode()).decode(), command)
    result = host.run(command)
    if expect_rc is not None:
        assert result.rc == expect_rc, "%s exited %s:\n%s\n%s" % (command[:300], result.rc, result.stdout[-2000:],
                                                                  result.stderr[-2000:])
    return result


def maria(host, sql):
    return run(host, "docker exec -i %s sh -c 'MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" exec mariadb -uroot -N -B app'"
               % MYSQL, sql).stdout


def pg(host, sql):
    return run(host, "docker exec -i %s psql -U postgres -X -A -t -q -v ON_ERROR_STOP=1 -d app" % POSTGRES, sql).stdout


def redis(host, *args):
    return run(host, "docker exec %s redis-cli %s" % (REDIS, " ".join(shlex.quote(a) for a in args))).stdout


def playbook(name, *extra, expect_rc=0):
    argv = ["ansible-playbook", "-i", INVENTORY, os.path.join(PROJECT_DIR, "playbooks", name), *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_DIR, timeout=600)
    output = proc.stdout + proc.stderr
    if expect_rc is not None:
        assert proc.returncode == expect_rc, "%s exited %s:\n%s" % (" ".join(argv), proc.returncode, output[-5000:])
    return output


def fingerprint(host):
    """Everything the test seeded, exactly: full row dumps, CHECKSUM TABLE, table lists, every Redis value."""
    rows = maria(host, "SELECT id, name, HEX(data), at FROM items ORDER BY id; SELECT * FROM tags ORDER BY k; SHOW TABLES")
    checksums = maria(host, "CHECKSUM TABLE items, tags")
    pg_rows = pg(host, "COPY (SELECT * FROM items ORDER BY id) TO STDOUT; COPY (SELECT * FROM s.notes ORDER BY n) TO "
                       "STDOUT; SELECT string_agg(table_schema || '.' || table_name, ',' ORDER BY 1) FROM "
                       "information_schema.tables WHERE table_schema IN ('public', 's')")
    keys = sorted(redis(host, "--scan").split())
    strings = [k for k in keys if k.startswith("k:")]
    values = redis(host, "MGET", *strings) + redis(host, "HGETALL", "h") + redis(host, "LRANGE", "l", "0", "-1")
    return {
        "mariadb_rows": hashlib.sha256(rows.encode()).hexdigest(),
        "mariadb_checksums": checksums,
        "postgres_rows": hashlib.sha256(pg_rows.encode()).hexdigest(),
        "postgres_count": pg(host, "SELECT count(*) FROM items").strip(),
        "redis_keys": keys,
        "redis_values": hashlib.sha256(values.encode()).hexdigest(),
    }


def test_seed_and_fingerprint(host):
    maria(host, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), data BLOB, at DATETIME(6));"
                "INSERT INTO items SELECT seq, CONCAT('item-', seq), RANDOM_BYTES(32), NOW(6) - INTERVAL seq SECOND "
                "FROM seq_1_to_2000;"
                "CREATE TABLE tags (k VARCHAR(20) PRIMARY KEY, v TEXT);"
                "INSERT INTO tags VALUES ('a', 'alpha'), ('b', 'beta with tab\\t'), ('c', NULL)")
    pg(host, "CREATE TABLE items (id int PRIMARY KEY, v text, j jsonb); INSERT INTO items SELECT g, md5(g::text), "
             "jsonb_build_object('n', g) FROM generate_series(1, 3000) g; CREATE SCHEMA s; "
             "CREATE TABLE s.notes (n int, body text); INSERT INTO s.notes VALUES (1, 'first'), (2, E'multi\\nline')")
    pairs = []
    for i in range(500):
        pairs += ["k:%d" % i, "value-%d-%s" % (i, "x" * (i % 40))]
    redis(host, "MSET", *pairs)
    redis(host, "HSET", "h", "f1", "one", "f2", "two")
    redis(host, "RPUSH", "l", "a", "b", "c")
    before = fingerprint(host)
    assert len(before["redis_keys"]) == 502 and before["postgres_count"] == "3000"
    SEEDED.update(before)  # the tests below run after this one and compare against it


# Each file of a zip with the sha256 of its content, a line each (run on the host).
ZIP_SUMS = """
import hashlib, sys, zipfile
archive = zipfile.ZipFile(sys.argv[1])
for name in archive.namelist():
    if not name.endswith("/"):
        print(name, hashlib.sha256(archive.read(name)).hexdigest())
"""


def test_role_installed_the_collection_library_and_private_configs(host):
    here = os.path.join(PROJECT_DIR, "plugins", "module_utils")
    with open(os.path.join(PROJECT_DIR, "roles", "backup", "vars", "main.yml"), encoding="utf-8") as handle:
        names = yaml.safe_load(handle)["__backup_lib_files"]
    # One zip of exactly the listed files, as the collection has them (opsbook.stack.library_bundle).
    bundle = host.file("/usr/local/lib/opsbook/opsbook-backup.zip")
    assert bundle.mode == 0o644 and bundle.user == "root"
    listing = host.check_output("python3 -c %s %s" % (shlex.quote(ZIP_SUMS), bundle.path))
    prefix = "ansible_collections/opsbook/stack/plugins/module_utils/"
    on_host = dict(line.split(" ") for line in listing.splitlines())
    here_sums = {prefix + n: hashlib.sha256(open(os.path.join(here, n), "rb").read()).hexdigest() for n in names}
    assert on_host == here_sums
    for before in ("_backup.py", "ansible_collections"):  # the libraries of earlier releases
        assert not host.file("/usr/local/lib/opsbook/" + before).exists, before
    assert host.run("/usr/local/bin/opsbook-backup --help").rc == 0
    assert host.file("/usr/local/bin/opsbook-backup").mode == 0o755
    for job in ("mysql", "postgres", "redis"):
        conf = host.file("%s/%s.json" % (CONFIG_DIR, job))
        assert conf.mode == 0o600 and conf.user == "root"
        assert host.file("/etc/cron.d/opsbook-backup-" + job).exists
    assert host.file(TEXTFILE_DIR).is_directory
    assert host.service("cron").is_running
    assert host.file("/etc/cron.d/opsbook-backup-redis").contains(r"^30 1 31 2 \* root /usr/local/bin/opsbook-backup ")
    assert host.file("/etc/cron.d/opsbook-backup-mysql").contains(r"^15 1 31 2 \* root .* backup mysql ")
    assert host.file("/etc/cron.d/opsbook-backup-mysql").contains(r"^45 1 31 2 \* root .* drill mysql ")


def test_restore_without_confirmation_is_refused():
    output = playbook("restore.yml", "-e", "restore_component=mysql", expect_rc=2)
    assert "restore_confirm=true" in output and "Nothing was changed" in output


def test_backup_change_restore_gives_back_exactly_the_data(host):
    before = dict(SEEDED)
    assert before, "test_seed_and_fingerprint runs first"
    output = playbook("backup.yml")
    for job in ("mysql", "postgres", "redis"):
        assert "%s: backup 2" % job in output, output[-3000:]

    maria(host, "DELETE FROM items WHERE id <= 500; UPDATE items SET name = 'changed' WHERE id % 7 = 0;"
                "DROP TABLE tags; CREATE TABLE later (x INT)")
    pg(host, "DELETE FROM items WHERE id % 2 = 0; UPDATE items SET v = 'x'; DROP TABLE s.notes; "
             "CREATE TABLE later (x int)")
    redis(host, "FLUSHALL")
    redis(host, "SET", "after", "1")
    assert fingerprint_safe(host) != before

    output = playbook("restore.yml", "-e", "restore_component=mysql,postgres,redis", "-e", "restore_confirm=true")
    for job in ("mysql", "postgres", "redis"):
        assert "%s: restored " % job in output, output[-3000:]
    assert "healthy" in output and "Stop the writers" in output
    assert fingerprint(host) == before
    assert "later" not in maria(host, "SHOW TABLES").split()
    # The writer was stopped for the restore and is running again.
    assert host.docker(BACKEND).is_running


def test_a_drill_run_skips_jobs_without_a_drill_and_goes_on():
    """Defect 16: -e backup_drill=true on jobs of a type without a drill verifies them, says so, and goes on."""
    output = playbook("backup.yml", "-e", "backup_drill=true", "-e", "backup_only=redisvol,redis")
    assert "redisvol: backup 2" in output and "no restore drill exists for type volume" in output, output[-3000:]
    assert "redis: backup 2" in output and "restore drill ok" in output, output[-3000:]
    output = playbook("backup.yml", "-e", "backup_only=../x", expect_rc=2)
    assert "Nothing was backed up" in output


HOLD_LOCK = """
import fcntl, json, os, sys, time
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
handle = open(path, "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.truncate(0)
handle.write(json.dumps({"operation": "rolling_upgrade bkp backend 2.0 (molecule)", "pid": os.getpid(),
                         "since": time.time()}))
handle.flush()
time.sleep(300)
"""


def test_a_held_project_lock_stops_nothing_and_names_its_holder(host):
    """Defect 7: the lock is waited for (restore_lock_timeout) before the writers stop; held, nothing is stopped."""
    lock = "/var/lib/opsbook/bkp/.lock"
    run(host, "cat > /root/hold_lock.py", HOLD_LOCK)
    pid = run(host, "nohup python3 /root/hold_lock.py %s >/dev/null 2>&1 & echo $!" % lock).stdout.strip()
    try:
        deadline = time.time() + 30
        while "molecule" not in host.file(lock).content_string:
            assert time.time() < deadline, "the lock holder did not start"
            time.sleep(0.2)
        redis(host, "SET", "marker", "before-locked-restore")
        started = time.time()
        output = playbook("restore.yml", "-e", "restore_component=redis", "-e", "restore_confirm=true",
                          "-e", "restore_lock_timeout=3", expect_rc=2)
        assert time.time() - started >= 3
        assert "rolling_upgrade bkp backend 2.0 (molecule)" in output and "touched nothing" in output, output[-3000:]
        assert "TASK [Stop the writers]" not in output
        assert host.docker(BACKEND).is_running  # nothing was stopped
        assert redis(host, "GET", "marker").strip() == "before-locked-restore"
    finally:
        host.run("kill %s" % pid)


def test_the_restore_record_says_done(host):
    record = json.loads(host.file("/var/backups/opsbook/mysql/restore.run.json").content_string)
    # The accounts (users, grants) go last, once the tables are in: issue 16, item 4.
    assert record["phase"] == "done" and record["done"] == ["app.sql.zst", "accounts.sql.zst"]
    record = json.loads(host.file("/var/backups/opsbook/redis/backup.run.json").content_string)
    assert record["phase"] == "done"


def fingerprint_safe(host):
    try:
        return fingerprint(host)
    except AssertionError:
        return None  # a dropped table makes the fingerprint query fail: different data


def cron_line(host, job):
    text = host.file("/etc/cron.d/opsbook-backup-" + job).content_string
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line.split(" ", 1)[0])
    lines = [line for line in text.splitlines() if line and not line.startswith("#") and "=" not in line.split(" ")[0]]
    backup = [line for line in lines if " backup %s " % job in line]
    assert len(backup) == 1, text
    fields = backup[0].split(None, 6)
    assert fields[5] == "root"
    return env, fields[6]


def test_a_cron_run_writes_metrics(host):
    env, command = cron_line(host, "redis")
    assert "--delay " in command
    started = time.time()
    # As cron runs it: the file's environment only, /bin/sh -c, as root.
    run(host, "env -i SHELL=%s PATH=%s HOME=/root LOGNAME=root /bin/sh -c %s"
        % (env["SHELL"], shlex.quote(env["PATH"]), shlex.quote(command)))
    metrics = host.file("%s/opsbook_backup_redis.prom" % TEXTFILE_DIR).content_string
    assert 'opsbook_backup_last_exit_code{component="redis",type="redis"} 0' in metrics
    success = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("opsbook_backup_last_success_timestamp_seconds{")]
    assert success and success[0] >= started - 5
    for name in ("opsbook_backup_last_attempt_timestamp_seconds", "opsbook_backup_last_size_bytes",
                 "opsbook_backup_last_duration_seconds", "opsbook_backup_verify_ok", "opsbook_backup_count"):
        assert name + "{" in metrics
    log = host.file("/var/log/opsbook/backup-redis.log").content_string.splitlines()
    assert " backup redis exit=0 ok id=" in log[-1]


def test_a_full_tmpfs_fails_clearly_and_keeps_the_previous_backup(host):
    run(host, "mkdir -p %s && (mountpoint -q %s || mount -t tmpfs -o size=4m tmpfs %s)" % (SMALL, SMALL, SMALL))
    config = {"dest": SMALL, "metrics_dir": "/root/small-metrics", "min_free_bytes": 0, "space_margin": 0,
              "components": {"fill": {"type": "mariadb", "container": MYSQL, "databases": ["fill"]}}}
    run(host, "cat > /root/small.json", json.dumps(config))
    try:
        maria(host, "CREATE DATABASE fill; CREATE TABLE fill.t (id INT PRIMARY KEY, b BLOB);"
                    "INSERT INTO fill.t VALUES (1, 'small')")
        cli = "opsbook-backup --config /root/small.json"
        run(host, cli + " backup fill")
        # 8 MiB of random bytes: about 9 MB after --hex-blob and zstd, more than the 4 MiB tmpfs holds.
        maria(host, "INSERT INTO fill.t SELECT seq + 1, RANDOM_BYTES(1024) FROM seq_1_to_8192")
        failed = run(host, cli + " backup fill", expect_rc=8)
        assert "disk_full: disk full writing %s/fill/" % SMALL in failed.stderr, failed.stderr
        assert ".sql.zst.partial" in failed.stderr and "bytes written, at least" in failed.stderr
        assert run(host, "find %s -name '*.partial'" % SMALL).stdout.strip() == ""
        listed = json.loads(run(host, cli + " list fill").stdout)
        assert len(listed) == 1 and listed[0]["problems"] == []
        run(host, cli + " verify fill")
        metrics = host.file("/root/small-metrics/opsbook_backup_fill.prom").content_string
        assert 'opsbook_backup_last_exit_code{component="fill",type="mariadb"} 8' in metrics
    finally:
        host.run("umount %s" % SMALL)
        maria(host, "DROP DATABASE IF EXISTS fill")


def test_a_flipped_byte_makes_restore_refuse(host):
    listed = json.loads(run(host, "opsbook-backup --config %s/redis.json list redis" % CONFIG_DIR).stdout)
    newest = listed[-1]["id"]
    artifact = "/var/backups/opsbook/redis/%s/dump.rdb.zst" % newest
    run(host, "python3 -c \"import sys; f = open(sys.argv[1], 'r+b'); f.seek(40); b = f.read(1); f.seek(40); "
              "f.write(bytes([b[0] ^ 1]))\" " + artifact)
    redis(host, "SET", "marker", "untouched")
    output = playbook("restore.yml", "-e", "restore_component=redis", "-e", "restore_confirm=true", expect_rc=2)
    assert "sha256" in output and "refusing" in output and artifact in output, output[-3000:]
    assert redis(host, "GET", "marker").strip() == "untouched"
    assert host.docker(BACKEND).is_running  # refused before the writers were stopped
