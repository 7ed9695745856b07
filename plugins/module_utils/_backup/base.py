# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What every backup engine shares: container facts, streamed exec and archives, artifacts, readiness, drills.

Private to this collection: not a public API, it may change in any release.

An engine (one file per kind, listed in ``registry.py``) subclasses ``Engine`` and implements ``dump``,
``restore`` and ``restore_steps``; one that can be drilled sets ``drillable`` and implements ``drill_checks``
(and ``ready_argv`` for ``wait_ready``). Docker is reached only through ``_docker.DockerClient`` and
``_docker_streams``; their errors become a ``BackupError`` with the exit code of the step here.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import secrets
import time
import typing as t
from dataclasses import replace

from ansible_collections.opsbook.stack.plugins.module_utils import _docker_streams as streams
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_COMPRESS,
    EXIT_DOCKER,
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_IMPLAUSIBLE,
    EXIT_RESTORE,
    EXIT_USAGE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import ArtifactWriter, decompressor
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DockerAPIError,
    DockerClient,
    DockerError,
    DockerNotFound,
    DockerTimeout,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker_streams import StreamResult

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import ComponentSpec, Settings


def plausibility(kind: str, head: bytes, tail: bytes) -> str:
    """Why this output is not a complete dump of its kind ("" when it looks complete)."""
    if kind in ("sql", "mysql_accounts") and b"-- Dump completed" not in tail:
        return "the SQL dump has no '-- Dump completed' trailer (cut off)"
    if kind == "pg_custom" and not head.startswith(b"PGDMP"):
        return "not a pg_dump custom-format archive (no PGDMP header)"
    if kind == "rdb" and (not head.startswith(b"REDIS") or len(tail) < 9 or tail[-9] != 0xFF):
        return "not a complete Redis RDB file (REDIS header / EOF marker missing)"
    if kind == "tar" and tail[-1024:] != b"\0" * 1024:
        return "the tar stream does not end with its two zero blocks (cut off)"
    return ""


def container_env(info: dict[str, t.Any]) -> dict[str, str]:
    env = {}
    for item in (info.get("Config") or {}).get("Env") or []:
        key, _sep, value = item.partition("=")
        env[key] = value
    return env


def first_set(env: dict[str, str], *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    return ""


class Engine:
    """Dumps and restores one component; subclasses know one kind of server."""

    # Below this many uncompressed bytes a dump is not a dump but an error message or a header.
    min_bytes: t.ClassVar[int] = 1024
    # Restore drills (a throwaway container of the same image) exist for this engine.
    drillable: t.ClassVar[bool] = False
    # The drill container's environment: the variable that sets the server's admin password.
    drill_password_env: t.ClassVar[str] = ""
    # The ComponentSpec field that names what is backed up (a container, or a volume).
    requires: t.ClassVar[str] = "container"

    def __init__(self, spec: ComponentSpec, settings: Settings, client: DockerClient | None = None):
        self.spec = spec
        self.settings = settings
        self.client = client or DockerClient(settings.docker_host, timeout=60)
        self._tools: dict[tuple[str, str], str] = {}

    @classmethod
    def validate(cls, spec: t.Any) -> None:
        """Refuse a component this engine cannot back up (called by ComponentSpec)."""
        if not spec.container:
            raise BackupError(EXIT_USAGE, "component %s: type %s needs container: <name>" % (spec.name, spec.type))

    @property
    def plausible_bytes(self) -> int:
        return self.spec.min_bytes if self.spec.min_bytes is not None else self.min_bytes

    # -- container facts -------------------------------------------------------------------------------

    def progress(self, phase: str, done: str = "") -> None:
        """Called by restore at each phase (copying, swapping, starting) and after each step done; run_restore
        points it at the run record."""

    def container_info(self, container: str | None = None, running: bool = True) -> dict[str, t.Any]:
        name = container or self.spec.container
        try:
            info = self.client.inspect_container(name)
        except DockerNotFound as exc:
            raise BackupError(
                EXIT_DOCKER, "container %s does not exist (component %s)" % (name, self.spec.name)
            ) from exc
        except DockerError as exc:
            raise BackupError(EXIT_DOCKER, str(exc)) from exc
        if running and not (info.get("State") or {}).get("Running"):
            raise BackupError(
                EXIT_DOCKER, "container %s is not running (component %s): start it first" % (name, self.spec.name)
            )
        return info

    def image_facts(self, info: dict[str, t.Any]) -> dict[str, t.Any]:
        return {
            "container": self.spec.container,
            "image": (info.get("Config") or {}).get("Image"),
            "image_id": info.get("Image"),
        }

    def credentials(
        self, container: str | None = None, info: dict[str, t.Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        """(user, exec environment). Passwords travel in the exec environment, never in argv."""
        return "", {}

    # -- Docker, with this engine's exit codes ---------------------------------------------------------

    def exec_stream(
        self,
        container: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        stdout_sink: t.Callable[[bytes], None] | None = None,
        stdin_source: t.Callable[[], bytes] | None = None,
        keep_stdout: int = 0,
    ) -> StreamResult:
        try:
            return streams.exec_stream(
                self.client,
                container,
                argv,
                env=env,
                stdout_sink=stdout_sink,
                stdin_source=stdin_source,
                keep_stdout=keep_stdout,
                timeout=self.settings.timeout,
            )
        except DockerNotFound as exc:
            raise BackupError(EXIT_DOCKER, "container %s does not exist" % container) from exc
        except DockerTimeout as exc:
            raise BackupError(EXIT_DUMP, str(exc)) from exc
        except DockerAPIError as exc:
            raise BackupError(EXIT_DOCKER, "cannot exec in container %s: %s" % (container, exc.explanation)) from exc

    def run(
        self, container: str, argv: list[str], env: dict[str, str] | None = None, limit: int = 4 * 1024 * 1024
    ) -> StreamResult:
        """A small command whose whole output is wanted."""
        return self.exec_stream(container, argv, env=env, keep_stdout=limit)

    def get_archive(self, container: str, path: str, sink: t.Callable[[bytes], None]) -> int:
        try:
            return streams.get_archive(self.client, container, path, sink, timeout=self.settings.timeout)
        except DockerAPIError as exc:
            raise BackupError(EXIT_DOCKER, "archive of %s:%s: %s" % (container, path, exc)) from exc

    def put_archive(self, container: str, path: str, chunks: t.Iterable[bytes], length: int) -> None:
        try:
            streams.put_archive(self.client, container, path, chunks, length, timeout=self.settings.timeout)
        except DockerAPIError as exc:
            raise BackupError(EXIT_RESTORE, "copy into %s:%s failed: %s" % (container, path, exc)) from exc

    def check(self, res: StreamResult, what: str, code: int = EXIT_DUMP, container: str = "") -> str:
        """The command's stdout; a non-zero exit is a failure of class code with the command's stderr."""
        if res.exit_code != 0:
            raise BackupError(
                code,
                "%s in container %s exited with %s: %s"
                % (
                    what,
                    container or self.spec.container,
                    res.exit_code,
                    res.stderr.decode(errors="replace").strip()[-2000:],
                ),
                {"stderr": res.stderr.decode(errors="replace")[-4000:], "exit_code": res.exit_code},
            )
        return res.stdout.decode(errors="replace")

    def tool(self, container: str, candidates: tuple[str, ...]) -> str:
        """The first of candidates the container has (mariadb-dump or mysqldump, ...)."""
        key = (container, candidates[0])
        if key not in self._tools:
            for name in candidates:
                res = self.run(container, [name, "--version"])
                if res.exit_code not in (126, 127) and res.exit_code is not None:
                    self._tools[key] = name
                    break
            else:
                raise BackupError(EXIT_DUMP, "none of %s found in container %s" % (", ".join(candidates), container))
        return self._tools[key]

    # -- artifacts -------------------------------------------------------------------------------------

    def writer(self, path: str) -> ArtifactWriter:
        return ArtifactWriter(
            path,
            self.settings.zstd,
            self.spec.zstd_level,
            self.spec.zstd_threads,
            self.settings.age_recipients,
            self.settings.age,
        )

    def artifact_name(self, name: str) -> str:
        return name + (".age" if self.settings.age_recipients else "")

    def dump_exec(
        self, directory: str, artifact: Artifact, container: str, argv: list[str], env: dict[str, str]
    ) -> Artifact:
        """Stream argv's stdout in container through the pipeline into directory/artifact.name, checked."""
        if self.settings.age_recipients:
            artifact.name += ".age"
            artifact.encrypted = True
        writer = self.writer(os.path.join(directory, artifact.name))
        try:
            res = self.exec_stream(container, argv, env=env, stdout_sink=writer.write)
            self.check(res, argv[0], EXIT_DUMP, container)
            if res.stdout_bytes < self.plausible_bytes:
                raise BackupError(
                    EXIT_IMPLAUSIBLE,
                    "%s in %s produced %d bytes (< %d): an empty or failed dump, "
                    "not a backup; stderr: %s"
                    % (
                        argv[0],
                        container,
                        res.stdout_bytes,
                        self.plausible_bytes,
                        res.stderr.decode(errors="replace").strip()[-500:],
                    ),
                )
            why = plausibility(artifact.kind, res.head, res.tail)
            if why:
                raise BackupError(
                    EXIT_IMPLAUSIBLE,
                    "%s in %s: %s" % (argv[0], container, why),
                    {"tail": res.tail.decode(errors="replace")},
                )
            artifact.bytes, artifact.sha256 = writer.finish()
            artifact.raw_bytes = res.stdout_bytes
            if res.stderr.strip():
                artifact.info["stderr"] = res.stderr.decode(errors="replace")[-2000:]
            return artifact
        except BaseException:
            writer.abort()
            raise

    def dump_archive(self, directory: str, name: str, container: str, path: str, what: str) -> Artifact:
        """The archive API's tar of path in container through the pipeline into directory/name, checked."""
        return self.dump_tar(directory, name, lambda sink: self.get_archive(container, path, sink), what)

    def dump_tar(
        self, directory: str, name: str, produce: t.Callable[[t.Callable[[bytes], None]], int], what: str
    ) -> Artifact:
        """The tar stream produce(sink) writes (returning its byte count) through the pipeline into
        directory/name, checked: at least plausible_bytes, ending with its two zero blocks."""
        name = self.artifact_name(name)
        writer = self.writer(os.path.join(directory, name))
        tail = [b""]

        def sink(data: bytes) -> None:
            tail[0] = (tail[0] + data)[-1024:]
            writer.write(data)

        try:
            raw = produce(sink)
            if raw < self.plausible_bytes or plausibility("tar", b"", tail[0]):
                raise BackupError(EXIT_IMPLAUSIBLE, "archive of %s is %d bytes or cut off" % (what, raw))
            size, digest = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return Artifact(name, "tar", size, digest, raw, encrypted=bool(self.settings.age_recipients))

    def feed(
        self,
        container: str,
        path: str,
        argv: list[str],
        env: dict[str, str],
        code: int,
        encrypted: bool = False,
        transform: t.Callable[[t.Callable[[], bytes]], t.Callable[[], bytes]] | None = None,
    ) -> StreamResult:
        """Decompress path into argv's stdin in container (through transform, a reader of readers, when given);
        both must succeed."""
        proc, source = decompressor(path, self.settings, encrypted)
        if transform is not None:
            source = transform(source)
        try:
            res = self.exec_stream(container, argv, env=env, stdin_source=source, keep_stdout=64 * 1024)
        finally:
            if proc.poll() is None:
                proc.stdout.close()
            rc = proc.wait()
        self.check(res, " ".join(argv[:2]), code, container)
        if rc != 0:
            raise BackupError(
                EXIT_COMPRESS,
                "decompressing %s exited with %s: %s" % (path, rc, proc.stderr.read(2000).decode(errors="replace")),
            )
        return res

    # -- the engine's own work -------------------------------------------------------------------------

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        """Write every artifact of this component into directory; returns them and facts for the manifest."""
        raise NotImplementedError

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        """Restore the backup in directory into the component; returns the names of the artifacts restored."""
        raise NotImplementedError

    def restore_steps(self, manifest: Manifest) -> list[str]:
        """What restore would do, one sentence per step (check mode)."""
        raise NotImplementedError

    # -- readiness and drills --------------------------------------------------------------------------

    def ready_argv(self, container: str, user: str) -> list[str]:
        """A command that succeeds once the server answers on TCP."""
        raise NotImplementedError

    def wait_ready(self, container: str, timeout: float, code: int) -> None:
        """Until the server answers on TCP (init-time temporary servers listen on the socket only)."""
        user, env = self.credentials(container)
        argv = self.ready_argv(container, user)
        deadline = time.monotonic() + timeout
        last: t.Any = None
        while time.monotonic() < deadline:
            try:
                last = self.run(container, argv, env=env)
                if last.exit_code == 0 and b"LOADING" not in last.stdout:
                    return
            except BackupError as exc:
                last = exc
            time.sleep(0.3)
        raise BackupError(code, "%s did not become ready within %g s: %s" % (container, timeout, last))

    def drill(self, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        """Restore the backup into a throwaway container of the same image (no network) and check it there."""
        image = manifest.facts.get("image_id") or manifest.facts.get("image")
        password = secrets.token_hex(16)
        env = {self.drill_password_env: password} if self.drill_password_env else {}
        name = "%s%s-%s" % (self.settings.drill_prefix, self.spec.name, secrets.token_hex(3))
        body = {
            "Image": image,
            "Env": ["%s=%s" % kv for kv in env.items()],
            "Labels": {"opsbook.backup.drill": self.spec.name},
            "HostConfig": {"NetworkMode": "none"},
        }
        try:
            cid = self.client.create_container(body, name=name)
        except DockerError as exc:
            raise BackupError(EXIT_DRILL, "cannot create drill container from %s: %s" % (image, exc)) from exc
        spec = replace(self.spec, container=name, password=password, user="", databases=[])
        drill = type(self)(spec, self.settings, self.client)
        report: dict[str, t.Any] = {"container": name, "image": image}
        try:
            report.update(drill.drill_checks(cid, directory, manifest))
            return report
        finally:
            try:
                self.client.remove_container(cid, force=True, volumes=True)
            except DockerError:
                pass

    def drill_checks(self, cid: str, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        """On the drill engine (its spec names the created, not yet started container cid): restore, check."""
        raise NotImplementedError


__all__ = ["Engine", "container_env", "first_set", "plausibility"]
