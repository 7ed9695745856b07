# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backups: pure logic first (retention, manifests, metrics, locks), then real MariaDB/PostgreSQL/Redis
containers from the sandbox registry: back up, change, restore, the data is exactly as before."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils import _bundle
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError
from ansible_collections.opsbook.stack.tests.unit.db_containers import IMAGES, PREFIX, _create, _maria, _pg, _sh

MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------------------
# Pure logic
# ------------------------------------------------------------------------------------------------------------


def _fake_backup(store: bk.Store, backup_id: str, created: float, payload: bytes = b"data") -> bk.Manifest:
    directory = store.path(backup_id)
    os.makedirs(directory)
    with open(os.path.join(directory, "a.zst"), "wb") as handle:
        handle.write(payload)
    art = bk.Artifact("a.zst", "sql", len(payload), hashlib.sha256(payload).hexdigest(), len(payload), "app")
    manifest = bk.Manifest(backup_id, "c", "mariadb", created, 0.1, [art])
    bk.write_json_atomic(os.path.join(directory, bk.MANIFEST), manifest.to_dict())
    return manifest


def _spec(**kw):
    base = {"name": "c", "type": "mariadb", "container": "x", "keep_last": 2, "keep_daily": 0, "keep_weekly": 0}
    base.update(kw)
    return bk.ComponentSpec(**base)


def test_select_keep_last_daily_weekly():
    day = 86400.0
    start = 1_700_000_000.0  # a Tuesday
    manifests = [bk.Manifest("b%02d" % i, "c", "mariadb", start + i * day / 2, 0, []) for i in range(30)]
    keep = bk.select_keep(manifests, keep_last=3, keep_daily=4, keep_weekly=2, newest_verified=None)
    newest = sorted(manifests, key=lambda m: m.created)[-3:]
    assert {m.id for m in newest} <= keep
    # Every 12 h from Tue 2023-11-14 22:13 UTC: the 3 last; the newest of Nov 29, 28, 27, 26; the newest of
    # ISO weeks 48 and 47 (b24, Sun Nov 26, already kept as a daily).
    assert keep == {"b29", "b28", "b27", "b26", "b24"}
    assert bk.select_keep(manifests, 1, 0, 0, newest_verified="b00") == {"b29", "b00"}


def test_prune_deletes_only_listed_files_and_never_the_newest_verified(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    for i in range(4):
        _fake_backup(store, "b%d" % i, 1000.0 + i)
    # The two newest are corrupt: the newest verified one is b1, and retention must keep it.
    for bid in ("b2", "b3"):
        with open(os.path.join(store.path(bid), "a.zst"), "r+b") as handle:
            handle.write(b"X")
    stranger = os.path.join(store.path("b0"), "notes.txt")
    with open(stranger, "w", encoding="utf-8") as handle:
        handle.write("not ours")
    verified = bk.newest_verified(store)
    assert verified is not None and verified.id == "b1"
    removed = bk.prune(store, _spec(keep_last=2), verified.id)
    assert removed == ["b0"]
    assert sorted(m.id for m in store.manifests()) == ["b1", "b2", "b3"]
    assert os.listdir(store.path("b0")) == ["notes.txt"]  # a file no manifest lists stays


def test_prune_finishes_an_interrupted_prune(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    _fake_backup(store, "b0", 1000.0)
    _fake_backup(store, "b1", 1001.0)
    os.rename(os.path.join(store.path("b0"), bk.MANIFEST), os.path.join(store.path("b0"), bk.PRUNING))
    assert bk.prune(store, _spec(keep_last=5), "b1") == []
    assert not os.path.exists(store.path("b0"))


def test_verify_names_file_and_both_hashes(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    m = _fake_backup(store, "b0", 1000.0, b"payload")
    assert store.verify(m) == []
    path = os.path.join(store.path("b0"), "a.zst")
    with open(path, "r+b") as handle:
        handle.write(b"q")
    with pytest.raises(bk.BackupError) as err:
        store.require_verified(m)
    assert err.value.exit_code == bk.EXIT_VERIFY
    assert path in err.value.message and m.artifacts[0].sha256 in err.value.message
    assert hashlib.sha256(b"qayload").hexdigest() in err.value.message


def test_no_backup_is_a_verify_failure(tmp_path):
    with pytest.raises(bk.BackupError) as err:
        bk.Store(str(tmp_path), "c").get()
    assert err.value.exit_code == bk.EXIT_VERIFY and "no committed backup" in err.value.message


def test_metrics_are_written_atomically_in_textfile_format(tmp_path):
    settings = bk.Settings(dest=str(tmp_path / "d"), metrics_dir=str(tmp_path / "m"))
    path = bk.write_metrics(
        settings,
        _spec(),
        {"last_attempt": 5.5, "last_success": 5.0, "verify_ok": 1, "last_exit_code": 0, "drill_duration": None},
    )
    text = open(path, encoding="utf-8").read()
    assert 'opsbook_backup_last_success_timestamp_seconds{component="c",type="mariadb"} 5.0' in text
    assert "drill_duration" not in text and "# TYPE opsbook_backup_verify_ok gauge" in text
    assert os.listdir(tmp_path / "m") == ["opsbook_backup_c.prom"]


def test_lock_is_exclusive_per_job(tmp_path):
    path = str(tmp_path / "c" / ".lock")
    with bk.job_lock(path):
        with pytest.raises(bk.BackupError) as err:
            with bk.job_lock(path):
                pass
        assert err.value.exit_code == bk.EXIT_LOCKED and str(os.getpid()) in err.value.message
    with bk.job_lock(path):
        pass


def test_preflight_refuses_when_the_last_size_does_not_fit(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    settings = bk.Settings(dest=str(tmp_path))
    with pytest.raises(bk.BackupError) as err:
        bk.preflight_space(store, settings, {"last_size": 10**15})
    assert err.value.exit_code == bk.EXIT_DISK and store.root in err.value.message
    assert err.value.evidence["needed_bytes"] > err.value.evidence["free_bytes"]


@pytest.mark.parametrize(
    "kind,head,tail,ok",
    [
        ("sql", b"-- MariaDB dump", b"\n-- Dump completed on 2026-11-22\n", True),
        ("sql", b"-- MariaDB dump", b"INSERT INTO t VALUES (1", False),
        ("pg_custom", b"PGDMP\x01", b"", True),
        ("pg_custom", b"pg_dump: error", b"", False),
        ("rdb", b"REDIS0010", b"\xff" + b"\0" * 8, True),
        ("tar", b"", b"\0" * 1024, True),
        ("tar", b"", b"x" * 1024, False),
    ],
)
def test_plausibility(kind, head, tail, ok):
    assert (bk.plausibility(kind, head, tail) == "") is ok


def test_spec_validation_and_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(bk.BackupError):
        bk.ComponentSpec(name="x", type="oracle", container="c")
    with pytest.raises(bk.BackupError):
        bk.ComponentSpec(name="../x", type="redis", container="c")
    config = tmp_path / "backup.json"
    config.write_text(json.dumps({"dest": str(tmp_path), "components": {"r": {"type": "redis", "container": "c"}}}))
    assert bk.main(["--config", str(config), "backup", "nope"]) == bk.EXIT_USAGE
    assert bk.main(["--config", str(tmp_path / "missing.json"), "backup", "r"]) == bk.EXIT_USAGE
    assert bk.main(["--config", str(config), "verify", "r"]) == bk.EXIT_VERIFY
    assert "verify_failed" in capsys.readouterr().err


def test_zstd_missing_fails_clearly(tmp_path):
    with pytest.raises(bk.BackupError) as err:
        bk.ArtifactWriter(str(tmp_path / "x.zst"), zstd="zstd-not-installed")
    assert err.value.exit_code == bk.EXIT_COMPRESS and "zstd" in err.value.message


REPO = os.path.abspath(os.path.join(os.path.dirname(bk.__file__), "..", "..", ".."))
HOST_MAIN = "ansible_collections.opsbook.stack.plugins.module_utils._backup"


def _lib_files() -> list:
    """The role's one list of the files the host program needs (roles/backup/vars/main.yml)."""
    with open(os.path.join(REPO, "roles", "backup", "vars", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["__backup_lib_files"]


def _host_copy(lib) -> tuple:
    """Bundle exactly the role's list as the role does (one zip); returns the argv prefix and environment cron uses."""
    lib.mkdir(parents=True, exist_ok=True)
    bundle = lib / "opsbook-backup.zip"
    bundle.write_bytes(_bundle.build(_lib_files()))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(bundle)}
    return ["python3", "-S", "-m", HOST_MAIN], env


def test_the_role_copies_every_file_of_the_backup_package():
    package = sorted("_backup/" + n for n in os.listdir(os.path.dirname(bk.__file__)) if n.endswith(".py"))
    assert sorted(n for n in _lib_files() if n.startswith("_backup/")) == package


def test_runs_standalone_without_ansible(tmp_path):
    """The role copies the listed files under backup_lib_dir and cron runs the package with python3 -S."""
    argv, env = _host_copy(tmp_path)
    proc = subprocess.run(
        argv + ["--config", str(tmp_path / "none.json"), "list", "x"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == bk.EXIT_USAGE, proc.stderr
    assert "cannot read config" in proc.stderr
    proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, check=False, timeout=30, env=env)
    assert proc.returncode == 0 and "opsbook-backup" in proc.stdout, proc.stderr
    assert proc.stderr == ""


def _age_key(tmp_path):
    if not shutil.which("age") or not shutil.which("age-keygen"):
        pytest.skip("age is not installed (apt-get install age)")
    key = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return str(key), recipient


def test_age_encryption_round_trip_and_missing_identity(tmp_path):
    identity, recipient = _age_key(tmp_path)
    payload = os.urandom(300_000) + b"-- Dump completed\n" * 1000
    path = str(tmp_path / "app.sql.zst.age")
    writer = bk.ArtifactWriter(path, age_recipients=[recipient])
    for i in range(0, len(payload), 65536):
        writer.write(payload[i : i + 65536])
    size, digest = writer.finish()
    data = open(path, "rb").read()
    assert data.startswith(b"age-encryption.org/v1") and len(data) == size
    assert hashlib.sha256(data).hexdigest() == digest and payload[:64] not in data
    proc, source = bk.decompressor(path, bk.Settings(age_identity=identity), encrypted=True)  # no Docker needed
    assert b"".join(iter(source, b"")) == payload and proc.wait() == 0
    with pytest.raises(bk.BackupError) as err:
        bk.decompressor(path, bk.Settings(), encrypted=True)
    assert err.value.exit_code == bk.EXIT_USAGE and "age_identity" in err.value.message


def test_a_failing_encryption_stage_fails_the_artifact_and_leaves_no_partial(tmp_path):
    _age_key(tmp_path)
    path = str(tmp_path / "x.zst.age")
    writer = bk.ArtifactWriter(path, age_recipients=["age1notakey"])
    with pytest.raises(bk.BackupError) as err:
        try:
            writer.write(b"x" * 100_000)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    assert err.value.exit_code == bk.EXIT_COMPRESS and "age exited with 1" in err.value.message
    assert os.listdir(tmp_path) == ["identity.txt"]


def test_cli_log_line_and_fixed_delay(tmp_path):
    config = tmp_path / "backup.json"
    config.write_text(json.dumps({"dest": str(tmp_path), "components": {"r": {"type": "redis", "container": "c"}}}))
    log = tmp_path / "backup-r.log"
    started = time.monotonic()
    assert bk.main(["--config", str(config), "--delay", "0.3", "--log", str(log), "verify", "r"]) == bk.EXIT_VERIFY
    assert time.monotonic() - started >= 0.3
    line = log.read_text().splitlines()[-1]
    assert " verify r exit=9 verify_failed: no committed backup" in line and line[:8].isdigit()


# ------------------------------------------------------------------------------------------------------------
# Real containers
# ------------------------------------------------------------------------------------------------------------


def _redis(dbs, *args):
    return _sh(dbs["redis"], "redis-cli", *args)


def _settings(tmp_path, **kw):
    base = {
        "dest": str(tmp_path / "backups"),
        "metrics_dir": str(tmp_path / "metrics"),
        "drill_prefix": PREFIX + "drill-",
        "min_free_bytes": 0,
    }
    base.update(kw)
    return bk.Settings(**base)


@pytest.mark.docker
def test_mariadb_backup_modify_restore_drill(dbs, tmp_path):
    _maria(
        dbs,
        "CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(40), data BLOB);"
        "INSERT INTO app.items SELECT seq, CONCAT('item-', seq), RANDOM_BYTES(16) FROM seq_1_to_500;"
        "CREATE TABLE app.empty (x INT)",
    )
    before = _maria(dbs, "CHECKSUM TABLE app.items, app.empty")
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="mariadb", type="mariadb", container=dbs["mariadb"], source_checksums=True)
    result = bk.run_backup(spec, settings)
    assert result.size > 0 and result.raw_size > 500 * 16
    # The accounts (users, grants, roles) are an artifact of their own since issue 16 (item 4).
    assert sorted(os.listdir(result.path)) == ["accounts.sql.zst", "app.sql.zst", "manifest.json"]
    metrics = open(result.metrics_file, encoding="utf-8").read()
    assert 'opsbook_backup_last_exit_code{component="mariadb",type="mariadb"} 0' in metrics

    _maria(
        dbs,
        "DELETE FROM app.items WHERE id <= 100; UPDATE app.items SET name = 'changed'; DROP TABLE app.empty;"
        "CREATE TABLE app.later (x INT)",
    )
    restored = bk.run_restore(spec, settings)
    assert restored["restored"] == ["app.sql.zst", "accounts.sql.zst"]
    assert _maria(dbs, "CHECKSUM TABLE app.items, app.empty") == before
    assert _maria(dbs, "SHOW TABLES FROM app").split() == ["empty", "items"]
    assert "app__opsbook" not in _maria(dbs, "SHOW DATABASES")  # the scratch and old schemas are gone

    drill = bk.run_drill(spec, settings)
    assert drill["matches_source"] is True and drill["tables"]["app"]["counts"] == {"empty": 0, "items": 500}
    assert drill["duration_s"] > 0
    assert "opsbook_backup_restore_drill_duration_seconds" in open(result.metrics_file, encoding="utf-8").read()


@pytest.mark.docker
def test_postgres_backup_modify_restore_drill(dbs, tmp_path):
    _pg(dbs, "CREATE DATABASE app", db="postgres")
    _pg(
        dbs,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM "
        "generate_series(1, 1000) g; CREATE SCHEMA s; CREATE TABLE s.u (x int); INSERT INTO s.u VALUES (1)",
    )
    before = _pg(dbs, "SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM t")
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="postgres", type="postgres", container=dbs["postgres"])
    result = bk.run_backup(spec, settings)
    assert [a["name"] for a in result.artifacts] == ["globals.sql.zst", "app.pgdump.zst"]
    _pg(dbs, "DELETE FROM t WHERE id % 2 = 0; DROP TABLE s.u; CREATE TABLE later (x int)")
    bk.run_restore(spec, settings)
    assert _pg(dbs, "SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM t") == before
    assert _pg(dbs, "SELECT count(*) FROM s.u").strip() == "1"
    assert _pg(dbs, "SELECT to_regclass('public.later') IS NULL").strip() == "t"
    drill = bk.run_drill(spec, settings)
    assert drill["tables"]["app"]["counts"] == {"public.t": 1000, "s.u": 1} and drill["matches_source"]


@pytest.mark.docker
def test_postgres_wrong_identity_or_a_failed_load_leaves_the_database_serving(dbs, tmp_path, monkeypatch):
    """Defect 6: the database is neither dropped nor replaced unless the backup decodes and loads completely."""
    identity, recipient = _age_key(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong, _r = _age_key(other)
    _pg(dbs, "CREATE DATABASE keep", db="postgres")
    _pg(dbs, "CREATE TABLE k (id int); INSERT INTO k SELECT generate_series(1, 50)", db="keep")
    spec = bk.ComponentSpec(name="pgkeep", type="postgres", container=dbs["postgres"], databases=["keep"])
    bk.run_backup(spec, _settings(tmp_path, age_recipients=[recipient]))
    _pg(dbs, "INSERT INTO k VALUES (999)", db="keep")
    with pytest.raises(bk.BackupError) as err:
        bk.run_restore(spec, _settings(tmp_path, age_identity=wrong))
    assert err.value.exit_code == bk.EXIT_RESTORE and "trial decode" in err.value.message
    assert err.value.evidence["touched"] is False
    assert _pg(dbs, "SELECT count(*) FROM k", db="keep").strip() == "51"  # not dropped, not restored

    def broken_load(self, directory, art, c, env, user):
        self.q(
            c, "CREATE DATABASE %s" % bk.engine_postgres.ident(bk.engine_postgres.scratch_name(art.database)), env, user
        )
        raise bk.BackupError(bk.EXIT_RESTORE, "pg_restore failed halfway (injected)")

    monkeypatch.setattr(bk.engine_postgres.PostgresEngine, "load_beside", broken_load)
    with pytest.raises(bk.BackupError) as err:
        bk.run_restore(spec, _settings(tmp_path, age_identity=identity))
    assert err.value.evidence["touched"] is False and err.value.evidence["phase"] == "copying"
    assert _pg(dbs, "SELECT count(*) FROM k", db="keep").strip() == "51"
    assert (
        _pg(dbs, "SELECT count(*) FROM pg_database WHERE datname LIKE 'keep__opsbook%'", db="postgres").strip() == "0"
    )
    monkeypatch.undo()
    bk.run_restore(spec, _settings(tmp_path, age_identity=identity))
    assert _pg(dbs, "SELECT count(*) FROM k", db="keep").strip() == "50"


@pytest.mark.docker
def test_mariadb_accounts_and_grants_restore_onto_a_new_server(dbs, tmp_path):
    """Issue 16, item 4: a restore onto a server that never had them gives back the application's accounts, their
    passwords, grants and roles; the new server's root keeps its own password (the restore logs in with it); the
    drill counts the accounts."""
    _maria(
        dbs,
        "CREATE DATABASE IF NOT EXISTS shop; CREATE TABLE IF NOT EXISTS shop.orders (id INT PRIMARY KEY);"
        "INSERT IGNORE INTO shop.orders SELECT seq FROM seq_1_to_20;"
        "CREATE USER IF NOT EXISTS 'shop'@'%' IDENTIFIED BY 'shop-pass-1';"
        "GRANT SELECT, INSERT ON shop.* TO 'shop'@'%';"
        "CREATE ROLE IF NOT EXISTS auditor; GRANT SELECT ON shop.orders TO auditor;"
        "CREATE USER IF NOT EXISTS 'audit'@'localhost' IDENTIFIED BY 'audit-pass-1';"
        "GRANT auditor TO 'audit'@'localhost';"
        "SET DEFAULT ROLE auditor FOR 'audit'@'localhost'",
    )
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="shop", type="mariadb", container=dbs["mariadb"], databases=["shop"])
    result = bk.run_backup(spec, settings)
    assert [a["name"] for a in result.artifacts] == ["shop.sql.zst", "accounts.sql.zst"]

    client = DockerClient()
    fresh = "%sfresh-%s" % (PREFIX, secrets.token_hex(3))
    _create(
        client,
        fresh,
        Image=IMAGES["mariadb"],
        Env=["MARIADB_ROOT_PASSWORD=fresh-root-1"],
        HostConfig={"NetworkMode": "none"},
    )
    try:
        client.request("POST", "/containers/%s/start" % fresh)
        on_fresh = bk.ComponentSpec(name="shop", type="mariadb", container=fresh, databases=["shop"])
        bk.engine_for(on_fresh, settings, client).wait_ready(fresh, 90, 1)
        restored = bk.run_restore(on_fresh, settings)
        assert restored["restored"] == ["shop.sql.zst", "accounts.sql.zst"]

        def login(user, password, sql):
            return subprocess.run(
                ["docker", "exec", "-e", "MYSQL_PWD=" + password, fresh, "mariadb", "-u", user, "-N", "-B", "-h",
                 "127.0.0.1", "--protocol=tcp", "-e", sql],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        done = login("shop", "shop-pass-1", "SELECT COUNT(*) FROM shop.orders")
        assert done.returncode == 0 and done.stdout.strip() == "20", done.stderr
        assert login("shop", "shop-pass-1", "DELETE FROM shop.orders").returncode != 0  # only what was granted
        done = login("audit", "audit-pass-1", "SELECT COUNT(*) FROM shop.orders")
        assert done.returncode != 0 or done.stdout.strip() == "20"  # 'audit'@'localhost': not over TCP
        done = subprocess.run(
            ["docker", "exec", "-e", "MYSQL_PWD=audit-pass-1", fresh, "mariadb", "-u", "audit", "-N", "-B", "-e",
             "SELECT CURRENT_ROLE(), COUNT(*) FROM shop.orders"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout.split() == ["auditor", "20"], done.stderr
        assert login("root", "fresh-root-1", "SELECT 1").returncode == 0, "the new server's root lost its password"
    finally:
        client.remove_container(fresh, force=True, volumes=True)

    accounts = json.loads(open(os.path.join(result.path, "manifest.json"), encoding="utf-8").read())["facts"][
        "accounts"
    ]
    assert "'shop'@'%'" in accounts and "'audit'@'localhost'" in accounts and not [a for a in accounts if "root" in a]
    drill = bk.run_drill(spec, settings)
    assert drill["matches_source"] is True and drill["accounts"] == len(accounts), drill


@pytest.mark.docker
def test_mariadb_with_a_trigger_restores_through_the_proven_dump(dbs, tmp_path):
    _maria(
        dbs,
        "CREATE DATABASE trig; CREATE TABLE trig.t (id INT PRIMARY KEY, v INT); CREATE TABLE trig.log (id INT);"
        "CREATE TRIGGER trig.t_ins AFTER INSERT ON trig.t FOR EACH ROW INSERT INTO trig.log VALUES (NEW.id);"
        "INSERT INTO trig.t SELECT seq, seq FROM seq_1_to_100",
    )
    spec = bk.ComponentSpec(name="trig", type="mariadb", container=dbs["mariadb"], databases=["trig"])
    settings = _settings(tmp_path)
    bk.run_backup(spec, settings)
    _maria(dbs, "DELETE FROM trig.t WHERE id > 10; CREATE TABLE trig.later (x INT)")
    bk.run_restore(spec, settings)
    assert _maria(dbs, "SELECT COUNT(*) FROM trig.t").strip() == "100"
    assert _maria(dbs, "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = 'trig'").strip() == "1"
    assert _maria(dbs, "SHOW TABLES FROM trig").split() == ["log", "t"]
    assert "trig__opsbook" not in _maria(dbs, "SHOW DATABASES")


@pytest.mark.docker
def test_redis_backup_modify_restore_drill(dbs, tmp_path):
    pairs = []
    for i in range(300):
        pairs += ["key:%d" % i, "value-%d" % i]
    _redis(dbs, "MSET", *pairs)
    keys_before = sorted(_redis(dbs, "KEYS", "*").split())
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="redis", type="redis", container=dbs["redis"])
    bk.run_backup(spec, settings)
    _redis(dbs, "FLUSHALL")
    _redis(dbs, "SET", "after", "1")
    bk.run_restore(spec, settings)
    assert sorted(_redis(dbs, "KEYS", "*").split()) == keys_before
    assert _redis(dbs, "GET", "key:50").strip() == "value-50"
    assert "opsbook-restore" not in _sh(dbs["redis"], "ls", "-A", "/data")  # the staged RDB was renamed in
    drill = bk.run_drill(spec, settings)
    assert drill["dbsize"] == len(keys_before) and drill["matches_source"]


@pytest.mark.docker
def test_flipped_byte_makes_restore_refuse(dbs, tmp_path):
    _redis(dbs, "SET", "flip", "before")
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="redis", type="redis", container=dbs["redis"])
    result = bk.run_backup(spec, settings)
    path = os.path.join(result.path, "dump.rdb.zst")
    with open(path, "r+b") as handle:
        handle.seek(result.size // 2)
        byte = handle.read(1)
        handle.seek(result.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    _redis(dbs, "SET", "flip", "after")
    with pytest.raises(bk.BackupError) as err:
        bk.run_restore(spec, settings)
    assert err.value.exit_code == bk.EXIT_VERIFY
    assert path in err.value.message and result.artifacts[0]["sha256"] in err.value.message
    assert _redis(dbs, "GET", "flip").strip() == "after"  # nothing was touched
    with pytest.raises(bk.BackupError) as err:
        bk.run_drill(spec, settings)
    assert err.value.exit_code == bk.EXIT_VERIFY


@pytest.mark.docker
def test_failed_dump_is_a_failure_and_leaves_nothing(dbs, tmp_path):
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="broken", type="mariadb", container=dbs["mariadb"], databases=["no_such_db"])
    with pytest.raises(bk.BackupError) as err:
        bk.run_backup(spec, settings)
    assert err.value.exit_code == bk.EXIT_DUMP and "no_such_db" in err.value.message
    root = os.path.join(settings.dest, "broken")
    assert sorted(os.listdir(root)) == [".lock", "backup.run.json", "state.json"]  # no backup directory
    state = json.load(open(os.path.join(root, "state.json"), encoding="utf-8"))
    assert state["last_exit_code"] == bk.EXIT_DUMP and "last_success" not in state
    record = json.load(open(os.path.join(root, "backup.run.json"), encoding="utf-8"))
    assert record["phase"] == "failed" and record["failed_in"] == "dumping" and record["exit_code"] == bk.EXIT_DUMP
    missing = bk.ComponentSpec(name="gone", type="redis", container=PREFIX + "does-not-exist")
    with pytest.raises(bk.BackupError) as gone:
        bk.run_backup(missing, settings)
    assert gone.value.exit_code == bk.EXIT_DOCKER


@pytest.mark.docker
def test_disk_full_removes_partial_and_keeps_older_backups(dbs, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        _maria(
            dbs,
            "CREATE DATABASE IF NOT EXISTS fill; CREATE TABLE IF NOT EXISTS fill.t (id INT, b BLOB);"
            "TRUNCATE fill.t; INSERT INTO fill.t VALUES (1, 'small')",
        )
        settings = _settings(tmp_path, dest=str(target))
        spec = bk.ComponentSpec(name="fill", type="mariadb", container=dbs["mariadb"], databases=["fill"])
        first = bk.run_backup(spec, settings)
        # ~2 MiB of random bytes: incompressible, larger than the whole tmpfs.
        _maria(dbs, "INSERT INTO fill.t SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_2048")
        with pytest.raises(bk.BackupError) as err:
            bk.run_backup(spec, settings)
        assert err.value.exit_code == bk.EXIT_DISK
        assert str(target) in err.value.message and "bytes" in err.value.message
        assert err.value.evidence["needed_bytes"] > 0
        leftovers = [os.path.join(d, f) for d, _s, fs in os.walk(target) for f in fs if f.endswith(".partial")]
        assert leftovers == []
        store = bk.Store(str(target), "fill")
        assert [m.id for m in store.manifests()] == [first.id]
        assert store.verify(store.get()) == []
        assert (
            os.listdir(store.root).count(first.id) == 1
            and len([e for e in os.listdir(store.root) if e[0].isdigit()]) == 1
        )
        state = json.load(open(os.path.join(store.root, "state.json"), encoding="utf-8"))
        assert state["last_exit_code"] == bk.EXIT_DISK
    finally:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.docker
def test_retention_keeps_newest_verified_with_real_backups(dbs, tmp_path):
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="ret", type="redis", container=dbs["redis"], keep_last=2, keep_daily=0, keep_weekly=0)
    ids = []
    for _i in range(3):
        ids.append(bk.run_backup(spec, settings).id)
        time.sleep(1.05)  # ids have one-second resolution
    store = bk.Store(settings.dest, "ret")
    assert [m.id for m in store.manifests()] == ids[1:]
    # Corrupt the newest: the next run's retention must still keep the newest *verified* one (its own).
    newest = store.get()
    with open(os.path.join(store.path(newest.id), "dump.rdb.zst"), "ab") as handle:
        handle.write(b"junk")
    fourth = bk.run_backup(spec, settings)
    kept = [m.id for m in store.manifests()]
    assert fourth.id in kept and len(kept) == 2
    assert bk.newest_verified(store).id == fourth.id


@pytest.mark.docker
def test_volume_backup_and_restore(dbs, tmp_path):
    client = DockerClient()
    volume = "%svol-%s" % (PREFIX, secrets.token_hex(3))
    owner = "%svol-owner-%s" % (PREFIX, secrets.token_hex(3))
    client.request_json("POST", "/volumes/create", body={"Name": volume})
    try:
        client.request_json(
            "POST",
            "/containers/create",
            query={"name": owner},
            body={
                "Image": IMAGES["redis"],
                "Labels": {"opsbook.backup.stop": "true"},
                "HostConfig": {"Binds": ["%s:/data" % volume], "NetworkMode": "none"},
            },
        )
        client.request("POST", "/containers/%s/start" % owner)
        _sh(owner, "sh", "-c", "mkdir -p /data/sub && seq 1 5000 > /data/sub/numbers && echo one > /data/a.txt")
        settings = _settings(tmp_path)
        spec = bk.ComponentSpec(name="vol", type="volume", volume=volume)
        result = bk.run_backup(spec, settings)
        assert result.artifacts[0]["kind"] == "tar" and result.raw_size > 10 * 1024
        assert client.inspect_container(owner)["State"]["Running"]  # labelled owner restarted after the archive
        _sh(owner, "sh", "-c", "echo two > /data/a.txt && rm /data/sub/numbers && echo new > /data/after.txt")
        restored = bk.run_restore(spec, settings)
        assert restored["restored"] == ["volume.tar.zst"]
        assert _sh(owner, "cat", "/data/a.txt") == "one\n"
        assert _sh(owner, "wc", "-l", "/data/sub/numbers").split()[0] == "5000"
        # The volume holds what the backup held: a file created after it does not survive, nothing is left over.
        listing = _sh(owner, "ls", "-A", "/data").split()
        assert "after.txt" not in listing and not [n for n in listing if n.startswith(".opsbook")], listing
    finally:
        client.remove_container(owner, force=True)
        client.request("DELETE", "/volumes/%s" % volume)


@pytest.mark.docker
def test_cron_run_of_the_copied_script_writes_metrics(dbs, tmp_path):
    """What the role's cron line runs: the copied files, a JSON config, exit code 0 and a metrics file."""
    lib = tmp_path / "lib"
    lib.mkdir()
    argv, env = _host_copy(lib)
    config = tmp_path / "backup.json"
    config.write_text(
        json.dumps(
            {
                "dest": str(tmp_path / "b"),
                "metrics_dir": str(tmp_path / "m"),
                "components": {"cache": {"type": "redis", "container": dbs["redis"]}},
            }
        )
    )
    proc = subprocess.run(
        argv + ["--config", str(config), "--jitter", "0.2", "backup", "cache"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
        cwd=str(lib),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["component"] == "cache"
    metrics = (tmp_path / "m" / "opsbook_backup_cache.prom").read_text()
    assert 'opsbook_backup_last_exit_code{component="cache",type="redis"} 0' in metrics
    proc = subprocess.run(
        argv + ["--config", str(config), "verify", "cache"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
        cwd=str(lib),
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.docker
def test_encrypted_backup_restores_and_drills_with_the_identity_only(dbs, tmp_path):
    identity, recipient = _age_key(tmp_path)
    _redis(dbs, "SET", "secret:1", "plain-value-%s" % secrets.token_hex(4))
    expected = _redis(dbs, "GET", "secret:1")
    spec = bk.ComponentSpec(name="enc", type="redis", container=dbs["redis"])
    result = bk.run_backup(spec, _settings(tmp_path, age_recipients=[recipient]))
    art = result.artifacts[0]
    assert art["name"] == "dump.rdb.zst.age" and art["encrypted"] is True
    assert expected.strip().encode() not in open(os.path.join(result.path, art["name"]), "rb").read()
    _redis(dbs, "DEL", "secret:1")
    with pytest.raises(bk.BackupError) as err:
        bk.run_restore(spec, _settings(tmp_path))  # no identity: refused before Redis is stopped
    assert err.value.exit_code == bk.EXIT_USAGE
    bk.run_restore(spec, _settings(tmp_path, age_identity=identity))
    assert _redis(dbs, "GET", "secret:1") == expected
    assert bk.run_drill(spec, _settings(tmp_path, age_identity=identity))["matches_source"]


def _prom_query(url, query, at=None):
    import urllib.parse
    import urllib.request

    params = {"query": query}
    if at is not None:
        params["time"] = repr(at)
    with urllib.request.urlopen("%s/api/v1/query?%s" % (url, urllib.parse.urlencode(params)), timeout=10) as resp:
        return json.load(resp)["data"]["result"]


@pytest.mark.docker
def test_prometheus_snapshot_backup_and_restore(tmp_path):
    image = "127.0.0.1:5000/prometheus:2.42"
    client = DockerClient()
    try:
        client.request_json("GET", "/images/%s/json" % image)
    except DockerError as exc:
        pytest.skip("sandbox image %s missing: %s" % (image, exc))
    name = "%sprom-%s" % (PREFIX, secrets.token_hex(3))
    _create(
        client,
        name,
        Image=image,
        Cmd=[
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--web.enable-admin-api",
        ],
    )
    try:
        client.request("POST", "/containers/%s/start" % name)
        spec = bk.ComponentSpec(name="prom", type="prometheus", container=name)
        settings = _settings(tmp_path)
        engine = bk.engine_for(spec, settings, client)
        url = engine.prometheus_url(client.inspect_container(name))
        deadline = time.monotonic() + 60
        sample = []
        while not sample and time.monotonic() < deadline:
            try:
                sample = _prom_query(url, 'timestamp(up{job="prometheus"})')
            except OSError:
                pass
            time.sleep(0.5)
        assert sample, "Prometheus did not scrape itself within 60 s"
        first = float(sample[0]["value"][1])
        result = bk.run_backup(spec, settings, client)
        assert result.artifacts[0]["name"] == "tsdb.tar.zst" and result.raw_size > 1024
        assert _sh(name, "ls", "-A", "/prometheus/snapshots").strip() == ""  # the snapshot was removed
        # Wipe the TSDB: a fresh Prometheus holds no sample from before.
        _sh(name, "sh", "-c", "rm -rf /prometheus/snapshots")
        client.stop_container(name)
        client.request_json(
            "POST",
            "/containers/create",
            query={"name": name + "-wipe"},
            body={
                "Image": image,
                "Entrypoint": ["sh", "-c", "rm -rf /prometheus/*"],
                "User": "0",
                "HostConfig": {"VolumesFrom": [name], "NetworkMode": "none"},
            },
        )
        client.request("POST", "/containers/%s-wipe/start" % name)
        client.request_json("POST", "/containers/%s-wipe/wait" % name)
        client.remove_container(name + "-wipe", force=True)
        client.request("POST", "/containers/%s/start" % name)
        url = engine.prometheus_url(client.inspect_container(name))
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _prom_query(url, 'up{job="prometheus"}', at=first) == []
                break
            except OSError:
                assert time.monotonic() < deadline, "the wiped Prometheus did not come up"
                time.sleep(0.5)
        restored = bk.run_restore(spec, settings, client=client)
        assert restored["restored"] == ["tsdb.tar.zst"]
        url = engine.prometheus_url(client.inspect_container(name))
        assert _prom_query(url, 'up{job="prometheus"}', at=first)[0]["value"][1] == "1"
        with pytest.raises(bk.BackupError) as err:
            bk.run_drill(spec, settings, client=client)
        assert err.value.exit_code == bk.EXIT_USAGE
    finally:
        for leftover in (name, name + "-wipe"):
            try:
                client.remove_container(leftover, force=True, volumes=True)
            except DockerError:
                pass
