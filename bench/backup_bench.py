# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup throughput of opsbook's backup tool against a bare `docker exec mariadb-dump | zstd` pipeline.

Starts a MariaDB container from the sandbox registry (name prefix opsbook-bkp-test-bench-), generates
--mb megabytes of dump data into it, warms the buffer pool with one untimed dump, then times, on the same data:

  bare:  docker exec -e MYSQL_PWD mariadb-dump --single-transaction ... app | zstd -3 -T1 > file
  tool:  backup.run_backup() (the same dump flags, plus manifest, fsync, read-back verification, retention)

alternately, --rounds times each (the median counts: this machine runs other work too), and finally the
restore drill of the tool's backup. Prints a table; the container is removed at the end.

    .venv/bin/python bench/backup_bench.py --mb 400 --rounds 3
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The repository must sit at <dir>/ansible_collections/opsbook/stack (./dev collection links one): <dir> goes on
# sys.path, as the host copy's directory does for cron.
COLLECTIONS = os.environ.get("OPSBOOK_COLLECTIONS_DIR") or os.path.join(REPO, "build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient

IMAGE = "127.0.0.1:5000/mariadb:10.11"


def sh(argv: list[str], **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


ROW_BYTES = 243  # one row of the events table is about 243 bytes of SQL dump


def create_server(client: t.Any, name: str, password: str) -> None:
    """The benchmark's MariaDB container (no network; its data is only what seed_events writes)."""
    client.create_container(
        {
            "Image": IMAGE,
            "Env": ["MARIADB_ROOT_PASSWORD=%s" % password, "MARIADB_DATABASE=app"],
            "Cmd": ["mariadbd", "--innodb-buffer-pool-size=512M", "--innodb-flush-log-at-trx-commit=0"],
            "HostConfig": {"NetworkMode": "none"},
        },
        name=name,
    )


def seed_events(mysql: list[str], mb: int) -> int:
    """The benchmark's data: the table events, about mb MB of SQL dump, through mysql (the client's argv up to
    -e); returns the number of rows."""
    sh(
        mysql
        + [
            "CREATE TABLE events (id INT PRIMARY KEY, user_id INT, kind VARCHAR(16), token CHAR(32), "
            "payload VARCHAR(400), created DATETIME, KEY (user_id))"
        ]
    )
    rows = mb * 1000 * 1000 // ROW_BYTES
    batch = 200_000
    for start in range(0, rows, batch):
        sh(
            mysql
            + [
                "INSERT INTO events SELECT seq, MOD(seq, 9973), ELT(1 + MOD(seq, 4), 'login', 'chat', 'upload', "
                "'logout'), MD5(seq), CONCAT(REPEAT(CONCAT('msg ', MOD(seq, 1000), ' '), 8), MD5(RAND()), "
                "' ', SHA2(RAND(), 256)), NOW() - INTERVAL seq SECOND FROM seq_%d_to_%d"
                % (start + 1, min(start + batch, rows))
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=400, help="approximate uncompressed dump size to generate")
    parser.add_argument("--dir", default="", help="where to write the dumps (default: a temp dir on /var/tmp)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each pipeline (median reported)")
    args = parser.parse_args()
    client = DockerClient()
    password = secrets.token_hex(8)
    name = "opsbook-bkp-test-bench-%s" % secrets.token_hex(3)
    workdir = args.dir or tempfile.mkdtemp(prefix="opsbook-bkp-bench-", dir="/var/tmp")
    create_server(client, name, password)
    try:
        client.start_container(name)
        spec = bk.ComponentSpec(
            name="bench", type="mariadb", container=name, databases=["app"], keep_last=1, keep_daily=0, keep_weekly=0
        )
        settings = bk.Settings(
            dest=os.path.join(workdir, "tool"), drill_prefix="opsbook-bkp-test-bench-drill-", drill_timeout=300
        )
        bk.engine_for(spec, settings, client).wait_ready(name, 120, 1)
        mysql = ["docker", "exec", "-e", "MYSQL_PWD=%s" % password, name, "mariadb", "-uroot", "-D", "app", "-e"]
        t0 = time.monotonic()
        rows = seed_events(mysql, args.mb)
        print("generated %d rows in %.1f s" % (rows, time.monotonic() - t0), flush=True)

        dump = [
            "docker",
            "exec",
            "-e",
            "MYSQL_PWD=%s" % password,
            name,
            "mariadb-dump",
            "-uroot",
            "--single-transaction",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--add-drop-database",
            "--databases",
            "app",
        ]
        bare_file = os.path.join(workdir, "bare.sql.zst")
        pipeline = "set -o pipefail; %s | zstd -q -c -3 -T1 > %s" % (" ".join(dump), bare_file)
        subprocess.run(["bash", "-c", pipeline.replace(bare_file, "/dev/null")], check=True)  # warm-up, untimed

        bare_times, tool_times = [], []
        for _round in range(args.rounds):
            t0 = time.monotonic()
            subprocess.run(["bash", "-c", pipeline], check=True)
            bare_times.append(time.monotonic() - t0)
            t0 = time.monotonic()
            result = bk.run_backup(spec, settings, client)
            tool_times.append(time.monotonic() - t0)
        bare_s, tool_s = statistics.median(bare_times), statistics.median(tool_times)
        raw = int(sh(["bash", "-c", "zstd -q -d -c %s | wc -c" % bare_file]).strip())
        bare_size = os.path.getsize(bare_file)

        t0 = time.monotonic()
        drill = bk.run_drill(spec, settings, client=client)
        drill_s = time.monotonic() - t0

        mb = raw / 1e6
        print()
        print(
            "%d rounds each, alternating; seconds are medians (bare %s, tool %s)"
            % (args.rounds, " ".join("%.2f" % x for x in bare_times), " ".join("%.2f" % x for x in tool_times))
        )
        print()
        print("| pipeline | dump MB (raw) | file MB | seconds | MB/s | ratio vs bare |")
        print("|---|---:|---:|---:|---:|---:|")
        print(
            "| bare `docker exec mariadb-dump \\| zstd -3` | %.1f | %.1f | %.2f | %.1f | 1.00 |"
            % (mb, bare_size / 1e6, bare_s, mb / bare_s)
        )
        print(
            "| opsbook backup (dump+zstd+sha256+fsync+manifest+verify) | %.1f | %.1f | %.2f | %.1f | %.2f |"
            % (
                result.raw_size / 1e6,
                result.size / 1e6,
                tool_s,
                result.raw_size / 1e6 / tool_s,
                (result.raw_size / tool_s) / (raw / bare_s),
            )
        )
        print(
            "| restore drill (new container, import, counts, CHECKSUM TABLE) | %.1f | | %.2f | %.1f | |"
            % (result.raw_size / 1e6, drill_s, result.raw_size / 1e6 / drill_s)
        )
        facts_s = bk.Store(settings.dest, "bench").get(result.id).facts.get("facts_s", 0)
        print(
            "(tool time includes %.2f s of exact row counts recorded for the drill before the dump and %.2f s "
            "reading the artifacts back to verify their sha256)" % (facts_s, result.verify_s)
        )
        print()
        print("drill matches source: %s; counts %s" % (drill["matches_source"], drill["tables"]["app"]["counts"]))
        return 0
    finally:
        client.remove_container(name, force=True, volumes=True)
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
