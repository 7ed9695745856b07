# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Off-host copies (offsite.py) against the bare borg commands they run, on the data of bench/backup_bench.py.

The data: a committed backup of --mb megabytes of generated dump data. With Docker and the sandbox registry's
MariaDB image, it is made exactly as backup_bench.py makes its own (a MariaDB container named
opsbook-bkp-test-bench-..., the same table and rows, then backup.run_backup()). Without Docker (or with
--synthetic) it is a synthetic committed backup of the same size: rows of the same shape generated here, through
`zstd -3 -T1`, committed with a manifest; then the drill rows say "not run". The table header says which.

Then, --repeat times each, alternating which of the two goes first, on the same backup:

  1. copy:  bare `borg create --compression none --files-cache disabled repo::<component>-<id> <id>` (the argv
            run_offsite runs) into a fresh repository, against offsite.run_offsite() into another fresh one (that
            create, then `borg list --format {sha256}` reading every artifact back from the repository and
            comparing it with the manifest). run_offsite's borg commands are timed one by one (a wrapper around
            offsite.Borg.run), so the verification read-back is a column of its own, not hidden in the copy.
  2. fetch: bare `borg extract repo::<archive>` into an empty directory, against offsite.fetch() into a fresh
            local store (extract, sha256 of every artifact against the manifest, commit);
     drill: jobs.run_drill() (the local drill) against offsite.run_offsite_drill() (extract from the repository,
            verify, restore into a throwaway container, compare), Docker only.

Medians are reported, with the ratio ours/bare of the medians (time: above 1 is slower); figures are noisy (this
machine runs other work too), which is why both sides run interleaved in one run. Both sides use the same
passphrase (a 0600 file read by BORG_PASSCOMMAND), repokey-blake2 repositories made fresh for every round
(`borg init`, untimed) and the same BORG_RSH.

Transport. By default the SSH side is emulated: OPSBOOK_BORG_RSH (and the bare commands' BORG_RSH) is a script
that runs `exec borg serve --append-only --restrict-to-repository <repo>`, the forced command of the repository
host's authorized_keys line, and the repository location is ssh://x<path>; so the bytes go through borg's RPC
over a pipe, without ssh's encryption or a network. With --repository ssh://user@host/path the benchmark runs
against a real SSH host: both sides use the BORG_RSH offsite.Borg builds (ssh in batch mode, with --ssh-key and
--known-hosts when given). It creates the fresh repositories <path>/ours-N, <path>/bare-N, ... there
(`borg init --make-parent-dirs`) and deletes them at the end, so that key must be allowed plain `borg serve` under
<path> (e.g. a forced `borg serve --restrict-to-path <path>`), not the append-only, one-repository key the role
installs.

    .venv/bin/python bench/offsite_bench.py --mb 100 --repeat 3
    .venv/bin/python bench/offsite_bench.py --mb 400 --repository ssh://bench@store.example/srv/opsbook-bench \\
        --ssh-key ~/.ssh/bench_ed25519 --known-hosts ~/.ssh/known_hosts
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import argparse
import datetime
import hashlib
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COLLECTIONS = os.environ.get("OPSBOOK_COLLECTIONS_DIR") or os.path.join(REPO, "build", "collections")
sys.path.insert(0, COLLECTIONS)
sys.path.insert(0, HERE)

from backup_bench import IMAGE, ROW_BYTES, create_server, seed_events, sh  # the backup benchmark's server and data

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils import _files
from ansible_collections.opsbook.stack.plugins.module_utils._backup import offsite
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import (
    MANIFEST,
    Artifact,
    Manifest,
    write_json_atomic,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient

COMPONENT = "bench"
DRILL_PREFIX = "opsbook-bkp-test-bench-drill-"


class BorgCalls:
    """The time of every borg command offsite.Borg runs (Borg.run wrapped, for this benchmark only)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        original = offsite.Borg.run
        calls = self.calls

        def timed(borg: offsite.Borg, args: list[str], *rest: t.Any, **kw: t.Any) -> subprocess.CompletedProcess:
            started = time.monotonic()
            try:
                return original(borg, args, *rest, **kw)
            finally:
                calls.append((self.kind(args), time.monotonic() - started))

        offsite.Borg.run = timed  # type: ignore[method-assign,assignment]

    @staticmethod
    def kind(args: list[str]) -> str:
        if args[0] == "list":
            return "verify" if "--format" in args else "listing"
        return args[0]

    def take(self) -> dict[str, float]:
        """Seconds per kind of command since the last take."""
        totals: dict[str, float] = {}
        for kind, seconds in self.calls:
            totals[kind] = totals.get(kind, 0.0) + seconds
        self.calls.clear()
        return totals


class Transport:
    """Fresh repositories, and the environment of the bare borg commands (the same BORG_RSH as ours)."""

    def __init__(self, args: argparse.Namespace, workdir: str, passphrase_file: str):
        self.args = args
        self.workdir = workdir
        self.passphrase_file = passphrase_file
        self.real = bool(args.repository)
        self.made: list[str] = []  # real host: the repositories to delete at the end
        self.scripts: dict[str, str] = {}  # emulated: location -> its forced-command script
        os.environ.pop("OPSBOOK_BORG_RSH", None)

    def describe(self) -> str:
        if self.real:
            return "real SSH to %s (offsite.Borg's ssh command line)" % self.args.repository
        return (
            "emulated SSH: BORG_RSH/OPSBOOK_BORG_RSH = a script running `exec borg serve --append-only "
            "--restrict-to-repository <repo>` (the forced command), location ssh://x<repo>"
        )

    def offsite_cfg(self, location: str, base_dir: str = "") -> dict[str, t.Any]:
        cfg: dict[str, t.Any] = {
            "repository": location,
            "passphrase_file": self.passphrase_file,
            "compression": "none",
            "borg": self.args.borg,
        }
        for key in ("ssh_key", "known_hosts", "remote_path"):
            if getattr(self.args, key):
                cfg[key] = getattr(self.args, key)
        if base_dir:
            cfg["base_dir"] = base_dir
        return cfg

    def env(self, base_dir: str, rsh: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env.update(
            BORG_PASSCOMMAND="cat %s" % shlex.quote(self.passphrase_file),
            BORG_BASE_DIR=base_dir,
            BORG_RSH=rsh,
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )
        return env

    def rsh(self, location: str) -> str:
        """The BORG_RSH for a repository: exactly what offsite.Borg puts in borg's environment."""
        if not self.real:
            os.environ["OPSBOOK_BORG_RSH"] = self.scripts[location]
        return offsite.Borg(offsite.Offsite(**self.offsite_cfg(location, "/nonexistent"))).env()["BORG_RSH"]

    def borg(self, command: str) -> list[str]:
        """borg <command>, with --remote-path as offsite.Borg adds it."""
        return [self.args.borg, command] + (["--remote-path", self.args.remote_path] if self.args.remote_path else [])

    def rsh_real(self) -> str:
        return self.rsh(self.args.repository)

    def new_repository(self, label: str) -> str:
        """A fresh, empty repokey-blake2 repository; returns its location (as both sides name it)."""
        init_env = self.env(os.path.join(self.workdir, "borg-init"), "")
        borg = self.borg("init") + ["--encryption=repokey-blake2"]
        if self.real:
            location = "%s/%s" % (self.args.repository.rstrip("/"), label)
            self.made.append(location)
            init_env["BORG_RSH"] = self.rsh_real()
            sh(borg + ["--make-parent-dirs", location], env=init_env)
            return location
        path = os.path.join(self.workdir, "repos", label)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sh(borg + [path], env=init_env)  # on the repository host itself, as the role does
        script = os.path.join(self.workdir, "rsh-%s.sh" % label)
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(
                "#!/bin/sh\n# the forced command of the repository host's authorized_keys line\n"
                "exec %s serve --append-only --restrict-to-repository %s\n"
                % (shlex.quote(self.args.borg), shlex.quote(path))
            )
        os.chmod(script, 0o700)
        location = "ssh://x" + path
        self.scripts[location] = script
        return location

    def drop(self, location: str) -> None:
        """Remove a repository the benchmark made (a real host's: borg delete of the whole repository)."""
        if not self.real:
            shutil.rmtree(location[len("ssh://x") :], ignore_errors=True)
            return
        if location not in self.made:
            return
        self.made.remove(location)
        env = self.env(os.path.join(self.workdir, "borg-init"), self.rsh_real())
        env["BORG_DELETE_I_KNOW_WHAT_I_AM_DOING"] = "YES"
        proc = subprocess.run(self.borg("delete") + [location], check=False, env=env, capture_output=True, text=True)
        if proc.returncode >= 2:
            print("warning: could not delete %s: %s" % (location, proc.stderr.strip()[-300:]), flush=True)


def timed_run(argv: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.monotonic() - started


def mariadb_backup(client: DockerClient, workdir: str, mb: int, name: str) -> tuple[bk.ComponentSpec, bk.Settings]:
    """backup_bench.py's container, table and rows, then one run_backup (untimed here)."""
    password = secrets.token_hex(8)
    create_server(client, name, password)
    client.start_container(name)
    spec = bk.ComponentSpec(
        name=COMPONENT, type="mariadb", container=name, databases=["app"], keep_last=1, keep_daily=0, keep_weekly=0
    )
    settings = bk.Settings(dest=os.path.join(workdir, "tool"), drill_prefix=DRILL_PREFIX, drill_timeout=300)
    bk.engine_for(spec, settings, client).wait_ready(name, 120, 1)
    mysql = ["docker", "exec", "-e", "MYSQL_PWD=%s" % password, name, "mariadb", "-uroot", "-D", "app", "-e"]
    started = time.monotonic()
    rows = seed_events(mysql, mb)
    generated = time.monotonic() - started
    started = time.monotonic()
    bk.run_backup(spec, settings, client)
    print(
        "generated %d rows in %.1f s; run_backup took %.1f s" % (rows, generated, time.monotonic() - started),
        flush=True,
    )
    return spec, settings


def synthetic_backup(workdir: str, mb: int, zstd: str) -> tuple[bk.ComponentSpec, bk.Settings]:
    """A committed backup of the same size without a server: backup_bench.py's rows (same columns, same random
    parts), written as a dump's extended INSERTs through zstd -3 -T1, and a manifest. Not drillable."""
    settings = bk.Settings(dest=os.path.join(workdir, "tool"), drill_prefix=DRILL_PREFIX)
    spec = bk.ComponentSpec(
        name=COMPONENT, type="mariadb", container="none", databases=["app"], keep_last=1, keep_daily=0, keep_weekly=0
    )
    store = bk.Store(settings.dest, COMPONENT)
    backup_id = bk.utc_id()
    partial = store.partial_path(backup_id)
    os.makedirs(partial)
    name = "app.sql.zst"
    rows = mb * 1000 * 1000 // ROW_BYTES
    base = datetime.datetime(2024, 1, 1)
    kinds = ("login", "chat", "upload", "logout")
    raw = 0
    with open(os.path.join(partial, name), "wb") as out:
        proc = subprocess.Popen([zstd, "-q", "-c", "-3", "-T1"], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        for start in range(1, rows + 1, 1000):
            values = []
            for seq in range(start, min(start + 1000, rows + 1)):
                rand = os.urandom(48).hex()
                values.append(
                    "(%d,%d,'%s','%s','%s%s %s','%s')"
                    % (
                        seq,
                        seq % 9973,
                        kinds[seq % 4],
                        hashlib.md5(str(seq).encode()).hexdigest(),  # MD5(seq), as the SQL has it
                        ("msg %d " % (seq % 1000)) * 8,
                        rand[:32],
                        rand[32:],
                        (base - datetime.timedelta(seconds=seq)).strftime("%Y-%m-%d %H:%M:%S"),
                    )
                )
            chunk = ("INSERT INTO `events` VALUES %s;\n" % ",".join(values)).encode()
            raw += len(chunk)
            proc.stdin.write(chunk)
        proc.stdin.close()
        if proc.wait() != 0:
            raise SystemExit("%s failed" % zstd)
    path = os.path.join(partial, name)
    manifest = Manifest(
        id=backup_id,
        component=COMPONENT,
        type="mariadb",
        created=time.time(),
        duration_s=0.0,
        artifacts=[Artifact(name, "sql", os.path.getsize(path), _files.sha256_file(path), raw, database="app")],
        facts={"synthetic": True},
    )
    write_json_atomic(os.path.join(partial, MANIFEST), manifest.to_dict())
    store.commit(backup_id)
    return spec, settings


def docker_reason(client: DockerClient) -> str:
    """Why the MariaDB path cannot run ("" when it can)."""
    try:
        client.ping()
    except Exception as exc:  # pylint: disable=broad-except
        return "Docker is not running (%s)" % str(exc)[:200]
    try:
        client.inspect_image(IMAGE)
    except Exception:  # pylint: disable=broad-except
        repository, tag = IMAGE.rsplit(":", 1)
        try:
            client.pull_image(repository, tag)
        except Exception as exc:  # pylint: disable=broad-except
            return "no image %s (%s)" % (IMAGE, str(exc)[:120])
    return ""


def med(values: list[float]) -> float:
    """The median (the lower middle one when there is an even number): always a measured round."""
    return statistics.median_low(values) if values else float("nan")


def mid(values: list[float]) -> int:
    """The round whose value is med(values): its parts add up to the row they split."""
    return sorted(range(len(values)), key=values.__getitem__)[(len(values) - 1) // 2]


def listing(values: list[float]) -> str:
    return " ".join("%.2f" % v for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="uncompressed dump size to generate (backup_bench's --mb)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (median reported)")
    parser.add_argument("--drill-repeat", type=int, default=None, help="drills of each kind (default: --repeat)")
    parser.add_argument("--dir", default="", help="work directory (default: a temp dir on /var/tmp, removed)")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic committed backup even with Docker")
    parser.add_argument("--repository", default="", help="ssh://user@host/path: a real SSH host (see the docstring)")
    parser.add_argument("--ssh-key", default="", help="with --repository: the SSH key both sides use")
    parser.add_argument("--known-hosts", default="", help="with --repository: the known_hosts file both sides use")
    parser.add_argument("--remote-path", default="", help="with --repository: borg on the remote host")
    parser.add_argument("--borg", default="borg")
    parser.add_argument("--zstd", default="zstd")
    args = parser.parse_args()
    if args.repository and not args.repository.startswith("ssh://"):
        parser.error("--repository must be ssh://user@host/path")
    drill_repeat = args.repeat if args.drill_repeat is None else args.drill_repeat
    wall = time.monotonic()

    workdir = args.dir or tempfile.mkdtemp(prefix="opsbook-offsite-bench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    passphrase_file = os.path.join(workdir, "passphrase")
    _files.write_atomic(passphrase_file, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
    transport = Transport(args, workdir, passphrase_file)
    client = DockerClient()
    container = "opsbook-bkp-test-bench-%s" % secrets.token_hex(3)
    no_docker = "--synthetic" if args.synthetic else docker_reason(client)
    calls = BorgCalls()
    try:
        if no_docker:
            spec, settings = synthetic_backup(workdir, args.mb, args.zstd)
            data = "synthetic committed backup (%s): backup_bench.py's rows, zstd -3" % no_docker
        else:
            spec, settings = mariadb_backup(client, workdir, args.mb, container)
            data = "committed MariaDB backup made by run_backup, data as bench/backup_bench.py makes it"
        store = bk.Store(settings.dest, COMPONENT)
        manifest = store.get()
        backup_dir = store.path(manifest.id)
        files = sorted(os.listdir(backup_dir))
        size = sum(os.path.getsize(os.path.join(backup_dir, f)) for f in files)
        archive = offsite.archive_name(COMPONENT, manifest.id)
        create = transport.borg("create") + ["--compression", "none", "--files-cache", "disabled"]
        bare_base = os.path.join(workdir, "borg-bare")

        def bare_create(label: str) -> float:
            location = transport.new_repository(label)
            seconds = timed_run(
                create + ["%s::%s" % (location, archive), manifest.id],
                transport.env(bare_base, transport.rsh(location)),
                store.root,
            )
            transport.drop(location)
            return seconds

        def ours_copy(label: str) -> tuple[str, float, dict[str, float]]:
            location = transport.new_repository(label)
            transport.rsh(location)  # sets OPSBOOK_BORG_RSH for the emulated transport
            run_settings = bk.Settings(dest=settings.dest, offsite=transport.offsite_cfg(location))
            # A fresh repository each round: the job's state must not remember the last round's verified copy.
            state = bk.load_state(store)
            state["offsite_verified"] = []
            bk.save_state(store, state)
            calls.take()
            started = time.monotonic()
            result = offsite.run_offsite(spec, run_settings)
            seconds = time.monotonic() - started
            if result.get("verified") != [manifest.id] or result.get("copied") != [manifest.id]:
                raise SystemExit("run_offsite did not copy and verify %s: %r" % (manifest.id, result))
            return location, seconds, calls.take()

        print("warm-up (untimed): bare borg create", flush=True)
        bare_create("warmup")
        bare_s: list[float] = []
        ours_s: list[float] = []
        ours_parts: list[dict[str, float]] = []
        keep = ""  # the repository of ours' first copy: fetch and the drill read from it
        for i in range(args.repeat):
            for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
                if side == "bare":
                    bare_s.append(bare_create("bare-%d" % i))
                else:
                    location, seconds, parts = ours_copy("ours-%d" % i)
                    ours_s.append(seconds)
                    ours_parts.append(parts)
                    if keep:
                        transport.drop(location)
                    else:
                        keep = location
            print("copy round %d: bare %.2f s, ours %.2f s" % (i + 1, bare_s[-1], ours_s[-1]), flush=True)

        fetch_cfg = transport.offsite_cfg(keep)
        keep_rsh = transport.rsh(keep)

        def bare_extract(label: str) -> float:
            into = os.path.join(workdir, "extract-%s" % label)
            os.makedirs(into)
            seconds = timed_run(
                transport.borg("extract") + ["%s::%s" % (keep, archive)],
                transport.env(os.path.join(into, ".borg"), keep_rsh),
                into,
            )
            shutil.rmtree(into)
            return seconds

        def ours_fetch(label: str) -> tuple[float, dict[str, float]]:
            dest = os.path.join(workdir, "fetch-%s" % label)
            transport.rsh(keep)
            calls.take()
            started = time.monotonic()
            result = offsite.fetch(spec, bk.Settings(dest=dest, offsite=fetch_cfg))
            seconds = time.monotonic() - started
            if not result.get("fetched"):
                raise SystemExit("fetch did not fetch %s: %r" % (manifest.id, result))
            shutil.rmtree(dest)
            return seconds, calls.take()

        print("warm-up (untimed): bare borg extract", flush=True)
        bare_extract("warmup")
        extract_s: list[float] = []
        fetch_s: list[float] = []
        fetch_parts: list[dict[str, float]] = []
        for i in range(args.repeat):
            for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
                if side == "bare":
                    extract_s.append(bare_extract("%d" % i))
                else:
                    seconds, parts = ours_fetch("%d" % i)
                    fetch_s.append(seconds)
                    fetch_parts.append(parts)
            print("fetch round %d: bare %.2f s, ours %.2f s" % (i + 1, extract_s[-1], fetch_s[-1]), flush=True)

        local_drill: list[float] = []
        remote_drill: list[float] = []
        remote_fetch: list[float] = []
        drill_note = ""
        if no_docker:
            drill_note = "not run: %s (a synthetic backup is no server's dump)" % no_docker
        elif drill_repeat < 1:
            drill_note = "not run: --drill-repeat %d" % drill_repeat
        else:
            drill_settings = bk.Settings(
                dest=settings.dest, drill_prefix=DRILL_PREFIX, drill_timeout=300, offsite=fetch_cfg
            )
            for i in range(drill_repeat):
                for side in ("local", "remote") if i % 2 == 0 else ("remote", "local"):
                    started = time.monotonic()
                    if side == "local":
                        result = bk.run_drill(spec, drill_settings)
                        local_drill.append(time.monotonic() - started)
                    else:
                        transport.rsh(keep)
                        result = offsite.run_offsite_drill(spec, drill_settings)
                        remote_drill.append(time.monotonic() - started)
                        remote_fetch.append(float(result.get("fetch_s", 0.0)))
                    if not result.get("matches_source"):
                        raise SystemExit("the %s drill does not match the source: %r" % (side, result))
                print(
                    "drill round %d: local %.2f s, from remote %.2f s" % (i + 1, local_drill[-1], remote_drill[-1]),
                    flush=True,
                )

        def part(parts: list[dict[str, float]], kind: str) -> list[float]:
            return [p.get(kind, 0.0) for p in parts]

        verify = part(ours_parts, "verify")
        copy_only = [total - v for total, v in zip(ours_s, verify, strict=True)]
        inner_create, inner_list = part(ours_parts, "create"), part(ours_parts, "listing")
        rest = [c - cr - li for c, cr, li in zip(copy_only, inner_create, inner_list, strict=True)]
        inner_extract, fetch_list = part(fetch_parts, "extract"), part(fetch_parts, "listing")
        fetch_rest = [f - e - li for f, e, li in zip(fetch_s, inner_extract, fetch_list, strict=True)]
        mb = size / 1e6
        b_create, b_extract = med(bare_s), med(extract_s)

        def row(what: str, seconds: float, base: float | None, rate: bool = True) -> None:
            ratio = "%.2f" % (seconds / base) if base else ""
            speed = "%.1f" % (mb / seconds) if rate and seconds > 0 else ""
            print("| %s | %s | %.2f | %s | %s |" % (what, "%.1f" % mb if rate else "", seconds, speed, ratio))

        print()
        print("data: %s; --mb %d, backup %s: %s, %d bytes" % (data, args.mb, manifest.id, ", ".join(files), size))
        print(
            "transport: %s; repokey-blake2, passphrase via BORG_PASSCOMMAND, fresh repository per run"
            % (transport.describe())
        )
        print(
            "%d rounds each (drills: %d), alternating which side goes first; seconds are medians (the lower middle "
            "for an even count), ratio = ours/bare of the medians (time: above 1.00 is slower); the 'of which' rows "
            "are the parts of the median round of the row above, so they add up to it" % (args.repeat, drill_repeat)
        )
        print(
            "  bare create %s | ours copy+verify %s | of which verify %s"
            % (listing(bare_s), listing(ours_s), listing(verify))
        )
        print("  bare extract %s | ours fetch %s" % (listing(extract_s), listing(fetch_s)))
        if local_drill:
            print("  local drill %s | drill from remote %s" % (listing(local_drill), listing(remote_drill)))
        print()
        print("| measurement | MB | seconds | MB/s | ours/bare |")
        print("|---|---:|---:|---:|---:|")
        row("1. bare `borg create --compression none` (fresh repository)", b_create, b_create)
        row("1. run_offsite copy (run_offsite minus its verification)", med(copy_only), b_create)
        c = mid(copy_only)
        row("    of which `borg create` (same argv as bare)", inner_create[c], b_create)
        row("    of which `borg list --json` (which backups the repository has)", inner_list[c], None, False)
        row("    of which the rest (lock, manifest sha256, state)", rest[c], None, False)
        row("1. run_offsite verification read-back (`borg list --format {sha256}`)", med(verify), b_create)
        row("1. run_offsite copy + verification (total)", med(ours_s), b_create)
        row("2. bare `borg extract` (empty directory)", b_extract, b_extract)
        row("2. offsite.fetch (list, extract, local sha256 check, commit)", med(fetch_s), b_extract)
        f = mid(fetch_s)
        row("    of which `borg list --json` (choosing the archive)", fetch_list[f], None, False)
        row("    of which `borg extract`", inner_extract[f], b_extract)
        row("    of which the rest (sha256 of every artifact, commit, state)", fetch_rest[f], None, False)
        if local_drill:
            b_drill = med(local_drill)
            row("2. local drill (jobs.run_drill), ratio base", b_drill, b_drill)
            row("2. drill from remote (offsite.run_offsite_drill)", med(remote_drill), b_drill)
            row("    of which fetch from remote (its fetch_s)", remote_fetch[mid(remote_drill)], None, False)
        else:
            print("| 2. local drill vs drill from remote (run_offsite_drill) | %.1f | %s | | |" % (mb, drill_note))
        copy_ratio = med(copy_only) / b_create
        print()
        print(
            "target, copy within 10%% of bare borg create: %s (%.2f); the verification read-back is extra: "
            "%.2f s, %.0f%% of the bare create"
            % ("met" if copy_ratio <= 1.10 else "NOT met", copy_ratio, med(verify), 100 * med(verify) / b_create)
        )
        print("wall time of the whole benchmark: %.0f s" % (time.monotonic() - wall))
        return 0
    finally:
        for location in list(transport.made):
            transport.drop(location)
        if not no_docker:
            try:
                client.remove_container(container, force=True, volumes=True)
            except Exception:  # pylint: disable=broad-except
                pass
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
