# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Zero-downtime rolling upgrades and rollbacks of a Compose project behind Nginx.

Private to this collection: not a public API, it may change in any release.

The mechanism (DESIGN.md, "Contracts"), for each service that changes:

1. The service's ``image:`` in the rendered ``compose.yaml`` is set to the target, so Compose stays the source
   of truth: ``docker compose up -d --no-deps --no-recreate --scale svc=2N svc`` then creates N new containers
   from the new image beside the N old ones, which ``--no-recreate`` leaves running. (An override file or an
   environment variable would leave compose.yaml saying one thing while the containers run another; editing the
   one line keeps ``docker compose config`` truthful, and the edit is checked with ``docker compose config``
   before it replaces the file.)
2. Gate, three layers: Docker health (watched every 0.2 s, honouring the container's start_period; an
   ``unhealthy``, an exit or a restart aborts at once), HTTP readiness on each new container's published port,
   and K synthetic requests through Nginx to the new containers only (a loopback-only gate server).
3. Optional canary: old and new share the upstream by weight for a while.
4. Switch: the upstream lists the new containers only (module_utils/_upstream.py, the one shared function).
5. Bake: probes through the real site plus the Nginx access log lines of the new servers; the 5xx ratio and
   the p95 upstream latency must stay under their limits, and the new containers must stay healthy.
6. Drain the old containers (no established connection to their port, or the drain timeout), stop them with
   their own grace period, remove them: the service is back to N containers, all new.

Failure before the switch removes only the new containers and puts the compose file back; failure in the
canary or the bake switches the upstream back first. Either way the result carries the evidence (health log,
log tail, failing probe) and the journal records the release as failed. Stateful services are recreated
stop-first, with a warning. One lock per project (module_utils/_project_lock.py) serializes runs; a run that
finds the leftovers of a killed run puts them in order first (``reconcile``).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import calendar
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import typing as t
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
    DockerNotFound,
)
from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    DEFAULT_ROOT,
    Journal,
    JournalError,
    Release,
    ServiceImage,
    file_sha256,
    iso_utc,
    new_release_id,
    project_images,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probes import (
    ContainerProbe,
    HttpProbe,
    check_container,
    check_http,
)
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import ProjectLocked, project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    DEFAULT_UPSTREAM_DIR,
    NginxControl,
    Server,
    Upstream,
    UpstreamError,
    activate,
    read_text,
    render_upstream,
    sync_upstream,
    upstream_file_for,
    upstream_name,
)

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ROLE = "io.opsbook.role"
LABEL_PORT = "io.opsbook.port"
WATCH_INTERVAL_S = 0.2
COMPOSE_TIMEOUT_S = 600.0
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LOG_RE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) .*? rt=(?P<rt>[0-9.]+) urt="(?P<urt>[^"]*)" '
    r'ua="(?P<ua>[^"]*)"'
)
_UPSTREAM_SERVER_RE = re.compile(r"^\s*server\s+(\S+?)(\s[^;]*)?;", re.M)


class UpgradeError(Exception):
    """The run failed; ``result`` is what the module returns (plan, steps, evidence)."""

    def __init__(self, message: str, result: dict[str, t.Any] | None = None):
        super().__init__(message)
        self.result = result or {}


class BadRequest(UpgradeError):
    """The arguments are wrong (unknown service, missing tag, unknown release); nothing was changed."""


# --------------------------------------------------------------------------------------------------------
# The options rolling_upgrade and rollback share (documented in doc_fragments/upgrade.py)
# --------------------------------------------------------------------------------------------------------

COMMON_OPTIONS: dict[str, dict[str, t.Any]] = dict(
    project=dict(type="str", required=True),
    project_dir=dict(type="path"),
    pull=dict(type="str", choices=["missing", "always"], default="missing"),
    journal_root=dict(type="path", default=DEFAULT_ROOT),
    keep=dict(type="int", default=10),
    lock_timeout=dict(type="float", default=0),
    health_timeout=dict(type="float", default=300),
    readiness_path=dict(type="str", default="/health"),
    gate_requests=dict(type="int", default=10),
    gate_port=dict(type="int", default=8099),
    canary_weight=dict(type="int", default=0),
    canary_s=dict(type="float", default=30),
    bake_s=dict(type="float", default=30),
    bake_paths=dict(type="list", elements="str", default=[]),
    bake_rate=dict(type="float", default=10),
    bake_min_requests=dict(type="int", default=20),
    bake_max_error_ratio=dict(type="float", default=0.01),
    bake_max_latency_ms=dict(type="float", default=1000),
    drain_timeout=dict(type="float", default=30),
    nginx_url=dict(type="str", default="http://127.0.0.1"),
    nginx_host_header=dict(type="str", default=""),
    upstream_dir=dict(type="path", default=DEFAULT_UPSTREAM_DIR),
    access_log=dict(type="path", default="/var/log/nginx/access.log"),
    docker_host=dict(type="str", default=DEFAULT_DOCKER_HOST),
)


def settings_from_params(p: dict[str, t.Any], check_mode: bool, docker_health_gate: bool = True) -> Settings:
    return Settings(
        project=p["project"],
        project_dir=p["project_dir"] or os.path.join("/opt", p["project"]),
        journal_root=p["journal_root"],
        docker_host=p["docker_host"],
        pull=p["pull"],
        lock_timeout_s=p["lock_timeout"],
        keep=p["keep"],
        docker_health_gate=docker_health_gate,
        health_timeout_s=p["health_timeout"],
        readiness_path=p["readiness_path"],
        gate_requests=p["gate_requests"],
        gate_port=p["gate_port"],
        nginx_url=p["nginx_url"],
        nginx_host_header=p["nginx_host_header"],
        bake_s=p["bake_s"],
        bake_paths=list(p["bake_paths"] or []),
        bake_rate=p["bake_rate"],
        bake_min_requests=p["bake_min_requests"],
        bake_max_error_ratio=p["bake_max_error_ratio"],
        bake_max_latency_ms=p["bake_max_latency_ms"],
        canary_weight=p["canary_weight"],
        canary_s=p["canary_s"],
        drain_timeout_s=p["drain_timeout"],
        upstream_dir=p["upstream_dir"],
        access_log=p["access_log"],
        check_mode=check_mode,
    )


# --------------------------------------------------------------------------------------------------------
# Configuration and plan
# --------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Every knob of a run; the modules fill it from their arguments."""

    project: str
    project_dir: str
    journal_root: str = DEFAULT_ROOT
    docker_host: str = DEFAULT_DOCKER_HOST
    compose_file: str = ""
    pull: str = "missing"
    lock_timeout_s: float = 0.0
    keep: int = 10
    docker_health_gate: bool = True
    health_timeout_s: float = 300.0
    readiness_path: str = "/health"
    readiness_timeout_s: float = 30.0
    gate_requests: int = 10
    gate_port: int = 8099
    nginx_url: str = "http://127.0.0.1"
    nginx_host_header: str = ""
    bake_s: float = 30.0
    bake_paths: list[str] = field(default_factory=list)
    bake_rate: float = 10.0
    bake_min_requests: int = 20
    bake_max_error_ratio: float = 0.01
    bake_max_latency_ms: float = 1000.0
    canary_weight: int = 0
    canary_s: float = 30.0
    drain_timeout_s: float = 30.0
    upstream_dir: str = DEFAULT_UPSTREAM_DIR
    access_log: str = "/var/log/nginx/access.log"
    nginx_binary: str = "nginx"
    nginx_reload_command: list[str] | None = None
    check_mode: bool = False

    def __post_init__(self) -> None:
        if not self.compose_file:
            self.compose_file = os.path.join(self.project_dir, "compose.yaml")


@dataclass
class ComposeService:
    """A service as the rendered compose file describes it."""

    name: str
    image: str
    replicas: int
    role: str
    port: int | None
    has_healthcheck: bool


@dataclass
class ServicePlan:
    service: str
    role: str
    action: str  # none | rolling | recreate
    replicas: int
    from_image: str
    from_image_ids: list[str]
    from_digest: str
    to_image: str
    to_image_id: str
    to_digest: str
    port: int | None = None

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "service": self.service,
            "role": self.role,
            "action": self.action,
            "replicas": self.replicas,
            "from": {"image": self.from_image, "digest": self.from_digest, "image_ids": self.from_image_ids},
            "to": {"image": self.to_image, "digest": self.to_digest, "image_id": self.to_image_id},
        }


@dataclass
class Container:
    id: str
    name: str
    image_id: str
    state: str
    number: int
    created: float
    host_port: int | None = None

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.host_port if self.host_port else ""


@dataclass
class Run:
    """What a run did, in order; returned to the module as the result."""

    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict[str, t.Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reconciled: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        self.steps.append("%6.2fs %s" % (time.monotonic() - self.started, text))

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 3)


# --------------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)
# --------------------------------------------------------------------------------------------------------


def split_image(ref: str) -> tuple[str, str]:
    """'registry:5000/app:1.0' -> ('registry:5000/app', '1.0'); no tag -> (ref, 'latest'); digests kept whole."""
    if "@" in ref:
        return ref.split("@", 1)[0], ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def target_image(current: str, tag: str) -> str:
    """The service's repository with the new tag (a full reference with '/' or ':' is taken as it is)."""
    if not tag or not isinstance(tag, str):
        raise ValueError("empty tag")
    if "/" in tag or "@" in tag:
        return tag
    if not _TAG_RE.match(tag):
        raise ValueError("%r is not a valid image tag" % tag)
    return "%s:%s" % (split_image(current)[0], tag)


def set_service_image(text: str, service: str, image: str) -> str:
    """compose.yaml with the image of one service replaced, everything else byte for byte the same.

    Works on block-style YAML as compose_app renders it (and as people write it): the service's key under the
    top-level `services:`, then the `image:` key at the first indentation level of that service's block.
    """
    lines = text.splitlines(keepends=True)
    in_services = False
    service_indent: int | None = None
    child_indent: int | None = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_services = stripped.startswith("services:")
            service_indent = child_indent = None
            continue
        if not in_services:
            continue
        if service_indent is None:
            key = stripped.split(":", 1)[0].strip("'\"")
            if key == service and stripped.endswith(":"):
                service_indent = indent
            continue
        if indent <= service_indent:
            break  # the next service: ours has no image line
        if child_indent is None:
            child_indent = indent
        if indent != child_indent:
            continue
        match = re.match(r"^(\s*image:\s*)(['\"]?)([^'\"#\s]*)(['\"]?)(\s*(#.*)?)$", line.rstrip("\r\n"))
        if match:
            ending = line[len(line.rstrip("\r\n")) :]
            lines[index] = "".join(
                (match.group(1), match.group(2), image, match.group(4), match.group(5) or "", ending)
            )
            return "".join(lines)
    raise ValueError("cannot find the `image:` line of service %s under `services:` in the compose file" % service)


def parse_access_line(line: str) -> dict[str, t.Any] | None:
    """status, request time (ms), upstream response time of the last try (ms) and the upstream address."""
    match = _LOG_RE.search(line)
    if not match:
        return None
    addresses = [a.strip() for a in match.group("ua").replace(" : ", ",").split(",") if a.strip()]
    times = [x.strip() for x in match.group("urt").replace(" : ", ",").split(",") if x.strip()]
    upstream_ms = None
    if times and times[-1] not in ("-", ""):
        try:
            upstream_ms = float(times[-1]) * 1000.0
        except ValueError:
            upstream_ms = None
    return {
        "status": int(match.group("status")),
        "request_ms": float(match.group("rt")) * 1000.0,
        "upstream_ms": upstream_ms,
        "upstream": addresses[-1] if addresses else "",
        "request": match.group("request"),
    }


@dataclass
class BakeVerdict:
    ok: bool
    requests: int
    errors: int
    error_ratio: float
    p95_ms: float | None
    reason: str = ""

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)


def judge_bake(
    samples: list[dict[str, t.Any]], max_error_ratio: float, max_latency_ms: float, min_requests: int, final: bool
) -> BakeVerdict | None:
    """Verdict on the samples so far: a failure as soon as it is certain, success only at the end (final)."""
    total = len(samples)
    errors = sum(1 for s in samples if s["status"] >= 500 or s["status"] == 0)
    ratio = errors / total if total else 0.0
    latencies = sorted(s["ms"] for s in samples if s.get("ms") is not None)
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))] if latencies else None
    verdict = BakeVerdict(True, total, errors, round(ratio, 4), round(p95, 1) if p95 is not None else None)
    enough = total >= min_requests
    if enough and ratio > max_error_ratio:
        verdict.ok = False
        verdict.reason = "5xx ratio %.1f%% (%d of %d) is over the limit of %.1f%%" % (
            100 * ratio,
            errors,
            total,
            100 * max_error_ratio,
        )
        return verdict
    if enough and p95 is not None and p95 > max_latency_ms:
        verdict.ok = False
        verdict.reason = "p95 latency %.0f ms is over the limit of %.0f ms" % (p95, max_latency_ms)
        return verdict
    if not final:
        return None
    if not enough:
        verdict.ok = False
        verdict.reason = "only %d requests reached the new containers during the bake (bake_min_requests %d)" % (
            total,
            min_requests,
        )
    return verdict


def established_on_ports(ports: t.Iterable[int], tables: t.Iterable[str] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """Established TCP connections with a local or remote port in `ports` (loopback traffic to old replicas)."""
    wanted = set(ports)
    count = 0
    for table in tables:
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 4 or cols[3] != "01":  # 01 = ESTABLISHED
                continue
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if local_port in wanted or remote_port in wanted:
                count += 1
    return count


def upstream_addresses(content: str | None) -> list[str]:
    return [m.group(1) for m in _UPSTREAM_SERVER_RE.finditer(content or "")]


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> unix time (None when missing or zero)."""
    if not value or value.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    base = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    fraction = float("0" + match.group(2)) if match.group(2) else 0.0
    zone = match.group(3)
    offset = 0
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return base + fraction - offset


def content_key(services: dict[str, ServiceImage]) -> str:
    return ",".join("%s=%s" % (n, s.digest or s.image_id or s.image) for n, s in sorted(services.items()))


# --------------------------------------------------------------------------------------------------------
# The host: Compose, Docker, Nginx
# --------------------------------------------------------------------------------------------------------


class Host:
    """Everything that touches the host, in one place (the Engine API, the compose CLI, Nginx, files)."""

    def __init__(self, settings: Settings, client: DockerClient | None = None):
        self.s = settings
        self.client = client or DockerClient(settings.docker_host, timeout=60.0)
        self.nginx = NginxControl(binary=settings.nginx_binary, reload_command=settings.nginx_reload_command)
        self.lock_fd: int | None = None
        self.workers_before_switch: set[int] = set()

    # -- compose ------------------------------------------------------------------------------------------

    def compose_argv(self, *args: str, compose_file: str | None = None) -> list[str]:
        return [
            "docker",
            "compose",
            "--project-name",
            self.s.project,
            "--project-directory",
            self.s.project_dir,
            "--file",
            compose_file or self.s.compose_file,
            *args,
        ]

    def compose(
        self, *args: str, compose_file: str | None = None, timeout: float = COMPOSE_TIMEOUT_S
    ) -> subprocess.CompletedProcess:
        argv = self.compose_argv(*args, compose_file=compose_file)
        # The lock's descriptor goes to compose: if this process dies, compose still holds the project's lock.
        fds = (self.lock_fd,) if self.lock_fd is not None else ()
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, pass_fds=fds)
        except FileNotFoundError as exc:
            raise UpgradeError("docker compose is not installed on this host (%s)" % exc) from exc
        except subprocess.TimeoutExpired as exc:
            raise UpgradeError("`%s` did not finish within %g s" % (" ".join(argv), timeout)) from exc

    def compose_config(self, compose_file: str | None = None) -> dict[str, ComposeService]:
        done = self.compose("config", "--no-interpolate", "--format", "json", compose_file=compose_file, timeout=60)
        if done.returncode != 0:
            raise UpgradeError(
                "docker compose config failed for %s: %s"
                % (compose_file or self.s.compose_file, (done.stderr or done.stdout).strip()[-1500:])
            )
        data = json.loads(done.stdout)
        out = {}
        for name, svc in (data.get("services") or {}).items():
            labels = svc.get("labels") or {}
            if isinstance(labels, list):
                labels = dict(item.split("=", 1) for item in labels if "=" in item)
            port = labels.get(LABEL_PORT)
            role = labels.get(LABEL_ROLE) or ("web" if port else "worker")
            replicas = (svc.get("deploy") or {}).get("replicas")
            if replicas is None:
                replicas = svc.get("scale", 1)
            health = svc.get("healthcheck") or {}
            out[name] = ComposeService(
                name=name,
                image=svc.get("image", ""),
                replicas=int(replicas or 1),
                role=role,
                port=int(port) if port else None,
                has_healthcheck=bool(health) and not health.get("disable"),
            )
        return out

    # -- docker -------------------------------------------------------------------------------------------

    def containers(self, service: str, port: int | None = None) -> list[Container]:
        found = []
        items = self.client.list_containers(labels={LABEL_PROJECT: self.s.project, LABEL_SERVICE: service}, all=True)
        for item in items:
            labels = item.get("Labels") or {}
            if labels.get(LABEL_ONEOFF, "False") == "True":
                continue
            host_port = None
            for binding in item.get("Ports") or []:
                if port is not None and binding.get("PrivatePort") == port and binding.get("PublicPort"):
                    if binding.get("IP") in ("127.0.0.1", "0.0.0.0", "", None):
                        host_port = int(binding["PublicPort"])
            try:
                number = int(labels.get(LABEL_NUMBER, "0"))
            except ValueError:
                number = 0
            found.append(
                Container(
                    id=item["Id"],
                    name=(item.get("Names") or ["/?"])[0].lstrip("/"),
                    image_id=item.get("ImageID", ""),
                    state=item.get("State", ""),
                    number=number,
                    created=float(item.get("Created", 0)),
                    host_port=host_port,
                )
            )
        return sorted(found, key=lambda c: (c.created, c.number))

    def image(self, ref: str) -> dict[str, t.Any] | None:
        try:
            return self.client.request_json("GET", "/images/%s/json" % quote(ref, safe=""))
        except DockerNotFound:
            return None

    def registry_digest(self, ref: str) -> str:
        """The digest the registry has for ref, without pulling (check mode); '' when it cannot be asked."""
        try:
            data = self.client.request_json("GET", "/distribution/%s/json" % quote(ref, safe=""), timeout=20)
        except DockerError:
            return ""
        digest = ((data or {}).get("Descriptor") or {}).get("digest", "")
        return "%s@%s" % (split_image(ref)[0], digest) if digest else ""

    def pull(self, ref: str) -> None:
        repo, tag = split_image(ref)
        query = {"fromImage": repo, "tag": tag} if tag else {"fromImage": ref}
        try:
            body = self.client.request("POST", "/images/create", query=query, timeout=600).body
        except DockerError as exc:
            raise UpgradeError("cannot pull %s: %s" % (ref, exc)) from exc
        for line in body.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                raise UpgradeError("cannot pull %s: %s" % (ref, event["error"]))

    def inspect(self, container_id: str) -> dict[str, t.Any] | None:
        try:
            return self.client.inspect_container(container_id)
        except DockerNotFound:
            return None

    def stop_and_remove(self, container: Container, grace_s: int | None = None) -> None:
        info = self.inspect(container.id)
        if info is None:
            return
        if grace_s is None:
            grace_s = (info.get("Config") or {}).get("StopTimeout")
            grace_s = int(grace_s) if grace_s is not None else 10
        try:
            self.client.stop_container(container.id, grace_s=grace_s)
        except DockerNotFound:
            return
        except DockerError:
            pass  # removed with force below
        try:
            self.client.remove_container(container.id, force=True)
        except DockerNotFound:
            pass

    def evidence(self, container: Container) -> dict[str, t.Any]:
        """Health log, log tail and state of a container, from the health_check probe code."""
        result = check_container(ContainerProbe(name=container.name, container=container.id, timeout=10), self.client)
        return {"container": container.name, "detail": result.detail, **result.evidence}

    # -- nginx --------------------------------------------------------------------------------------------

    def upstream_path(self, service: str) -> str:
        return upstream_file_for(upstream_name(self.s.project, service), self.s.upstream_dir)

    def serving(self, service: str) -> list[str]:
        return upstream_addresses(read_text(self.upstream_path(service)))

    def switch(self, service: str, servers: list[Server]) -> None:
        self.workers_before_switch = self.nginx_workers()
        sync_upstream(self.s.project, service, servers=servers, directory=self.s.upstream_dir, nginx=self.nginx)

    def sync_from_docker(self, service: str, port: int | None) -> bool:
        return sync_upstream(
            self.s.project, service, port=port, directory=self.s.upstream_dir, nginx=self.nginx, docker=self.client
        ).changed

    def gate_file(self, service: str) -> str:
        return upstream_file_for(upstream_name(self.s.project, service) + "_gate", self.s.upstream_dir)

    def open_gate(self, service: str, servers: list[Server]) -> None:
        name = upstream_name(self.s.project, service) + "_gate"
        block = render_upstream(Upstream(name, tuple(servers), keepalive=8, source="the new containers under test"))
        content = block + (
            "# The gate of opsbook.stack rolling_upgrade: synthetic requests reach the new containers through\n"
            "# Nginx before any user request does. Loopback only; removed when the gate is done.\n"
            "server {\n"
            "    listen 127.0.0.1:%d;\n"
            "    location / {\n"
            "        proxy_pass http://%s;\n"
            "        proxy_http_version 1.1;\n"
            "        proxy_set_header Connection \"\";\n"
            "        proxy_set_header Host $host;\n"
            "    }\n"
            "}\n" % (self.s.gate_port, name)
        )
        activate(self.gate_file(service), content, nginx=self.nginx)
        # `systemctl reload` returns once the signal is sent; the master opens the new listener a moment later.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.s.gate_port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise UpgradeError(
                        "Nginx did not open the gate listener 127.0.0.1:%d within 10 s after the "
                        "reload (is the port taken? set gate_port)" % self.s.gate_port
                    ) from None
                time.sleep(0.05)

    def close_gate(self, service: str) -> None:
        if os.path.exists(self.gate_file(service)):
            activate(self.gate_file(service), None, nginx=self.nginx)

    @staticmethod
    def nginx_workers() -> set[int]:
        """PIDs of the Nginx worker processes now (those of before a reload finish their requests, then exit)."""
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if cmdline.startswith(b"nginx: worker process"):
                pids.add(int(entry))
        return pids

    def log_offset(self) -> int:
        try:
            return os.path.getsize(self.s.access_log)
        except OSError:
            return -1

    def log_samples(self, offset: int, addresses: set[str]) -> tuple[list[dict[str, t.Any]], list[str]]:
        """Access log lines written since offset whose last upstream is one of addresses."""
        if offset < 0:
            return [], []
        try:
            with open(self.s.access_log, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset if size >= offset else 0)
                data = handle.read()
        except OSError:
            return [], []
        samples, bad = [], []
        for raw in data.decode("utf-8", errors="replace").splitlines():
            entry = parse_access_line(raw)
            if entry is None or entry["upstream"] not in addresses:
                continue
            samples.append({"status": entry["status"], "ms": entry["upstream_ms"]})
            if entry["status"] >= 500 and len(bad) < 5:
                bad.append(raw)
        return samples, bad


# --------------------------------------------------------------------------------------------------------
# The rolling replacement of one service (upgrade, rollback and the undo of a failed service use it)
# --------------------------------------------------------------------------------------------------------


class Rollout:
    def __init__(self, host: Host, run: Run):
        self.host = host
        self.s = host.s
        self.run = run

    # -- compose file -------------------------------------------------------------------------------------

    def write_compose_image(self, service: str, image: str) -> str:
        """Set the service's image in compose.yaml (checked by `docker compose config` first); returns the old text."""
        with open(self.s.compose_file, encoding="utf-8") as handle:
            before = handle.read()
        after = set_service_image(before, service, image)
        if after == before:
            return before
        directory = os.path.dirname(self.s.compose_file)
        fd, tmp = tempfile.mkstemp(prefix=".compose.", suffix=".yaml", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(after)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, os.stat(self.s.compose_file).st_mode & 0o777)
            config = self.host.compose_config(compose_file=tmp)
            if config.get(service) is None or config[service].image != image:
                raise UpgradeError("the edited compose file does not give service %s the image %s" % (service, image))
            os.replace(tmp, self.s.compose_file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return before

    def restore_compose(self, text: str) -> None:
        with open(self.s.compose_file, encoding="utf-8") as handle:
            if handle.read() == text:
                return
        directory = os.path.dirname(self.s.compose_file)
        fd, tmp = tempfile.mkstemp(prefix=".compose.", suffix=".yaml", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, os.stat(self.s.compose_file).st_mode & 0o777)
        os.replace(tmp, self.s.compose_file)

    # -- gate ---------------------------------------------------------------------------------------------

    def wait_healthy(self, new: list[Container], needs_health: bool) -> None:
        """Watch the new containers until all are healthy; abort at once on unhealthy, exit or restart."""
        deadline = time.monotonic() + self.s.health_timeout_s
        pending = {c.id: c for c in new}
        while pending:
            for cid, container in list(pending.items()):
                info = self.host.inspect(cid)
                if info is None:
                    raise UpgradeError(
                        "new container %s disappeared during the health gate" % container.name,
                        {"failed_container": container.name},
                    )
                state = info.get("State") or {}
                health = (state.get("Health") or {}).get("Status")
                if state.get("Restarting") or state.get("Status") in ("exited", "dead") or info.get("RestartCount"):
                    raise self._gate_failure(
                        container,
                        "exited or restarted (state %s, exit code %s)" % (state.get("Status"), state.get("ExitCode")),
                        info,
                    )
                if health == "unhealthy":
                    raise self._gate_failure(container, "became unhealthy", info)
                if (
                    health == "healthy"
                    or (health is None and state.get("Running"))
                    or (not needs_health and state.get("Running"))
                ):
                    del pending[cid]
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending.values())
                raise UpgradeError(
                    "%s not healthy within %g s (health_timeout)" % (names, self.s.health_timeout_s),
                    {"evidence": [self.host.evidence(c) for c in pending.values()]},
                )
            time.sleep(WATCH_INTERVAL_S)

    def _gate_failure(self, container: Container, what: str, info: dict[str, t.Any]) -> UpgradeError:
        health = (info.get("State") or {}).get("Health") or {}
        log = health.get("Log") or []
        detected = None
        if log:
            ended = parse_docker_time(log[-1].get("End"))
            if ended is not None:
                detected = round(max(time.time() - ended, 0.0), 3)
        interval_ns = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Interval") or 30_000_000_000
        evidence = self.host.evidence(container)
        evidence["aborted_after_last_check_s"] = detected
        evidence["health_interval_s"] = interval_ns / 1e9
        return UpgradeError(
            "new container %s %s: gate failed before the switch" % (container.name, what),
            {"evidence": [evidence], "failing_probe": "docker health of %s" % container.name},
        )

    def readiness(self, new: list[Container]) -> None:
        for container in new:
            if not container.host_port:
                continue
            probe = HttpProbe(
                name="readiness:%s" % container.name,
                url="http://127.0.0.1:%d%s" % (container.host_port, self.s.readiness_path),
                timeout=3.0,
                use_proxy=False,
            )
            deadline = time.monotonic() + self.s.readiness_timeout_s
            while True:
                result = check_http(probe)
                if result.ok:
                    break
                if time.monotonic() > deadline:
                    raise UpgradeError(
                        "new container %s: %s answered %s" % (container.name, probe.url, result.error),
                        {"failing_probe": result.to_dict(), "evidence": [self.host.evidence(container)]},
                    )
                time.sleep(WATCH_INTERVAL_S)

    def through_gate(self, service: str, new: list[Container]) -> None:
        if self.s.gate_requests <= 0:
            return
        servers = [Server(address=c.address, comment=c.name) for c in new]
        self.host.open_gate(service, servers)
        try:
            for index in range(self.s.gate_requests):
                probe = HttpProbe(
                    name="gate:%s#%d" % (service, index + 1),
                    url="http://127.0.0.1:%d%s" % (self.s.gate_port, self.s.readiness_path),
                    timeout=5.0,
                    use_proxy=False,
                )
                result = check_http(probe)
                if not result.ok:
                    raise UpgradeError(
                        "synthetic request %d of %d through Nginx to the new %s containers failed: %s"
                        % (index + 1, self.s.gate_requests, service, result.error),
                        {"failing_probe": result.to_dict(), "evidence": [self.host.evidence(c) for c in new]},
                    )
        finally:
            self.host.close_gate(service)

    # -- bake ---------------------------------------------------------------------------------------------

    def bake(self, service: str, new: list[Container], seconds: float, offset: int, share: float = 1.0) -> BakeVerdict:
        addresses = {c.address for c in new}
        paths = self.s.bake_paths or [self.s.readiness_path]
        headers = {"Host": self.s.nginx_host_header} if self.s.nginx_host_header else {}
        probe_samples: list[dict[str, t.Any]] = []
        deadline = time.monotonic() + seconds
        gap = 1.0 / self.s.bake_rate if self.s.bake_rate > 0 else seconds
        n = 0
        while True:
            for container in new:
                info = self.host.inspect(container.id) or {}
                state = info.get("State") or {}
                if (state.get("Health") or {}).get("Status") == "unhealthy" or not state.get("Running"):
                    return BakeVerdict(
                        False,
                        0,
                        0,
                        0.0,
                        None,
                        "new container %s became %s during the bake"
                        % (container.name, (state.get("Health") or {}).get("Status") or state.get("Status")),
                    )
            if self.s.bake_rate > 0:
                path = paths[n % len(paths)]
                n += 1
                result = check_http(
                    HttpProbe(
                        name="bake",
                        url=self.s.nginx_url.rstrip("/") + path,
                        timeout=5.0,
                        headers=headers,
                        status=tuple(range(100, 500)),
                        use_proxy=False,
                    )
                )
                if result.status is None:
                    probe_samples.append({"status": 0, "ms": result.latency_ms})
            log_samples, bad = self.host.log_samples(offset, addresses)
            samples = log_samples + probe_samples
            final = time.monotonic() >= deadline
            # A canary sees only its share of the requests (the probes through the site are split too).
            verdict = judge_bake(
                samples,
                self.s.bake_max_error_ratio,
                self.s.bake_max_latency_ms,
                max(1, int(self.s.bake_min_requests * share)),
                final,
            )
            if verdict is not None:
                if not verdict.ok:
                    self.run.evidence["bake_failing_requests"] = bad
                return verdict
            time.sleep(gap)

    # -- the whole thing ----------------------------------------------------------------------------------

    def replace(self, plan: ServicePlan) -> None:
        """Move one service from plan.from_image to plan.to_image; raise UpgradeError with evidence on failure."""
        if plan.role == "stateful":
            self._recreate(plan)
            return
        service = plan.service
        old = [c for c in self.host.containers(service, plan.port) if c.state == "running"]
        old_ids = {c.id for c in old}
        replicas = max(len(old), 1) if old else plan.replicas
        compose_before = self.write_compose_image(service, plan.to_image)
        self.run.step("%s: compose.yaml image set to %s" % (service, plan.to_image))
        new: list[Container] = []
        switched = False
        try:
            scale = len(old) + replicas
            done = self.host.compose(
                "up", "--detach", "--no-deps", "--no-recreate", "--scale", "%s=%d" % (service, scale), service
            )
            if done.returncode != 0:
                raise UpgradeError(
                    "docker compose up --scale %s=%d failed: %s"
                    % (service, scale, (done.stderr or done.stdout).strip()[-1500:])
                )
            new = [c for c in self.host.containers(service, plan.port) if c.id not in old_ids]
            started = ", ".join(c.name for c in new)
            beside = ", ".join(c.name for c in old) or "nothing"
            self.run.step("%s: started %s beside %s" % (service, started, beside))
            self.run.mark("%s_started" % service)
            if not new:
                raise UpgradeError("docker compose created no new container for %s" % service)
            self.wait_healthy(new, self.s.docker_health_gate)
            self.run.step(
                "%s: new containers running%s" % (service, " and healthy" if self.s.docker_health_gate else "")
            )
            if plan.port is not None:
                new = [c for c in self.host.containers(service, plan.port) if c.id not in old_ids]
                missing = [c.name for c in new if not c.host_port]
                if missing:
                    raise UpgradeError("new containers %s publish no port for %s" % (", ".join(missing), plan.port))
                self.readiness(new)
                self.run.step("%s: readiness %s answered on every new container" % (service, self.s.readiness_path))
                self.through_gate(service, new)
                if self.s.gate_requests:
                    self.run.step("%s: %d synthetic requests through Nginx passed" % (service, self.s.gate_requests))
                self.run.mark("%s_gate_passed" % service)
                old_servers = [Server(address=c.address, comment=c.name) for c in old if c.host_port]
                new_servers = [Server(address=c.address, comment=c.name) for c in new]
                if self.s.canary_weight and old_servers:
                    weight_new, weight_old = self.s.canary_weight, 100 - self.s.canary_weight
                    self.host.switch(
                        service,
                        [Server(s.address, weight=weight_old, comment=s.comment) for s in old_servers]
                        + [Server(s.address, weight=weight_new, comment=s.comment) for s in new_servers],
                    )
                    switched = True
                    self.run.step("%s: canary, new containers take %d%% of requests" % (service, weight_new))
                    offset = self.host.log_offset()
                    verdict = self.bake(service, new, self.s.canary_s, offset, share=weight_new / 100.0)
                    self.run.evidence.setdefault("canary", {})[service] = verdict.to_dict()
                    if not verdict.ok:
                        raise UpgradeError("%s canary failed: %s" % (service, verdict.reason))
                offset = self.host.log_offset()
                self.host.switch(service, new_servers)
                switched = True
                self.run.mark("%s_switched" % service)
                self.run.step("%s: upstream switched to the new containers" % service)
                verdict = self.bake(service, new, self.s.bake_s, offset)
                self.run.evidence.setdefault("bake", {})[service] = verdict.to_dict()
                if not verdict.ok:
                    raise UpgradeError("%s bake failed: %s" % (service, verdict.reason))
                self.run.step(
                    "%s: bake passed (%d requests, %d errors, p95 %s ms)"
                    % (service, verdict.requests, verdict.errors, verdict.p95_ms)
                )
        except (UpgradeError, UpstreamError, DockerError, OSError) as exc:
            self._undo(plan, old, new, compose_before, switched, exc)
            raise
        self._retire(service, old)
        if plan.port is not None:
            if not self.s.docker_health_gate:
                # The switch did not wait for the healthcheck's first pass (a rollback to a warm release), but the
                # shared upstream function lists healthy containers only: re-rendering now would drop the new
                # containers still "starting". Wait for their first pass; if it never comes, keep the switched file.
                try:
                    self.wait_healthy(new, True)
                except UpgradeError as exc:
                    self.run.warnings.append(
                        "%s: upstream left as switched, not re-read from Docker: %s" % (service, exc)
                    )
                    self.run.mark("%s_done" % service)
                    return
            self.host.sync_from_docker(service, plan.port)
        self.run.mark("%s_done" % service)

    def _undo(
        self,
        plan: ServicePlan,
        old: list[Container],
        new: list[Container],
        compose_before: str,
        switched: bool,
        exc: Exception,
    ) -> None:
        service = plan.service
        if switched:
            old_servers = [Server(address=c.address, comment=c.name) for c in old if c.host_port]
            if old_servers:
                self.host.switch(service, old_servers)
                self.run.mark("%s_switched_back" % service)
                self.run.step("%s: upstream switched back to the old containers" % service)
        if isinstance(exc, UpgradeError):
            self.run.evidence.update({k: v for k, v in exc.result.items() if k not in self.run.evidence})
        if new and "evidence" not in self.run.evidence:
            self.run.evidence["evidence"] = [self.host.evidence(c) for c in new[:2]]
        if switched and new:
            self.run.step("%s: drained the new containers (%s)" % (service, self._drain(new)))
        for container in new:
            self.host.stop_and_remove(container, grace_s=None if switched else 1)
        self.host.close_gate(service)
        self.restore_compose(compose_before)
        self.run.step("%s: removed the new containers, compose.yaml back to %s" % (service, plan.from_image))
        if plan.port is not None and old:
            self.host.sync_from_docker(service, plan.port)

    def _drain(self, containers: list[Container]) -> str:
        """Wait until the Nginx workers of before the last switch (the only ones that still route to these
        containers) have finished their in-flight requests and exited, and no connection to the containers' ports
        is left; or the drain timeout. Returns what was seen, for the steps."""
        ports = [c.host_port for c in containers if c.host_port]
        deadline = time.monotonic() + self.s.drain_timeout_s
        while True:
            old_workers = self.host.workers_before_switch & self.host.nginx_workers()
            remaining = established_on_ports(ports) if ports else 0
            if (not old_workers and not remaining) or time.monotonic() >= deadline:
                break
            time.sleep(WATCH_INTERVAL_S)
        if not (old_workers or remaining):
            return "in-flight requests done"
        return "drain timeout with %d old Nginx workers and %d connections left" % (len(old_workers), remaining)

    def _retire(self, service: str, old: list[Container]) -> None:
        self.run.step("%s: drained the old containers (%s)" % (service, self._drain(old)))
        for container in old:
            self.host.stop_and_remove(container)
        if old:
            self.run.step("%s: stopped and removed %s" % (service, ", ".join(c.name for c in old)))

    def _recreate(self, plan: ServicePlan) -> None:
        service = plan.service
        self.run.warnings.append(
            "%s is stateful: recreated stop-first (%s -> %s), so it was unavailable while it restarted"
            % (service, plan.from_image, plan.to_image)
        )
        compose_before = self.write_compose_image(service, plan.to_image)
        done = self.host.compose("up", "--detach", "--no-deps", "--force-recreate", service)
        new = [c for c in self.host.containers(service) if c.state == "running"]
        try:
            if done.returncode != 0:
                raise UpgradeError(
                    "docker compose up --force-recreate %s failed: %s"
                    % (service, (done.stderr or done.stdout).strip()[-1500:])
                )
            self.wait_healthy(new, True)
        except UpgradeError as exc:
            self.run.evidence.update(exc.result)
            self.restore_compose(compose_before)
            self.host.compose("up", "--detach", "--no-deps", "--force-recreate", service)
            self.run.step("%s: recreated again from %s after the failure" % (service, plan.from_image))
            raise
        self.run.step("%s: recreated stop-first on %s" % (service, plan.to_image))


# --------------------------------------------------------------------------------------------------------
# Planning, reconciling, running
# --------------------------------------------------------------------------------------------------------


def digest_of(image: dict[str, t.Any] | None, ref: str) -> str:
    if not image:
        return ""
    repo = split_image(ref)[0]
    for repo_digest in image.get("RepoDigests") or []:
        if repo_digest.split("@", 1)[0] == repo:
            return repo_digest
    return (image.get("RepoDigests") or [""])[0]


def plan_service(host: Host, svc: ComposeService, to_image: str, resolve_remote: bool) -> ServicePlan:
    running = [c for c in host.containers(svc.name, svc.port) if c.state == "running"]
    from_ids = sorted({c.image_id for c in running})
    from_image_info = host.image(from_ids[0]) if from_ids else host.image(svc.image)
    target = host.image(to_image)
    to_id = (target or {}).get("Id", "")
    to_digest = digest_of(target, to_image) or (host.registry_digest(to_image) if resolve_remote else "")
    up_to_date = (
        svc.image == to_image and bool(running) and to_id != "" and from_ids == [to_id] and len(running) == svc.replicas
    )
    action = "none" if up_to_date else ("recreate" if svc.role == "stateful" else "rolling")
    return ServicePlan(
        service=svc.name,
        role=svc.role,
        action=action,
        replicas=svc.replicas,
        from_image=svc.image,
        from_image_ids=from_ids,
        from_digest=digest_of(from_image_info, svc.image),
        to_image=to_image,
        to_image_id=to_id,
        to_digest=to_digest,
        port=svc.port,
    )


def reconcile(host: Host, services: dict[str, ComposeService], journal: Journal, run: Run) -> None:
    """Put the leftovers of a killed run in order: interrupted journal records, containers no upstream lists."""
    for release in journal.releases():
        if release.status == "in_progress":
            release.status = "failed"
            release.detail = (
                "interrupted: the %s was stopped before it finished; the next run (%s) put the "
                "containers and the upstream in order" % (release.kind, iso_utc(time.time()))
            )
            journal.record(release)
            run.reconciled.append("journal: %s marked failed (interrupted)" % release.id)
    for svc in services.values():
        containers = host.containers(svc.name, svc.port)
        for container in containers:
            if container.state not in ("running", "restarting", "paused"):
                host.stop_and_remove(container, grace_s=1)
                run.reconciled.append(
                    "%s: removed leftover container %s (%s)" % (svc.name, container.name, container.state)
                )
        running = [c for c in containers if c.state == "running"]
        if svc.role == "stateful" or len(running) <= svc.replicas:
            continue
        serving = set(host.serving(svc.name)) if svc.port is not None else set()
        in_upstream = [c for c in running if c.address in serving]
        if svc.port is None or not in_upstream:
            # No upstream to tell who serves: keep the oldest replicas (the ones that served before the run).
            keep = running[: svc.replicas]
        elif len(in_upstream) > svc.replicas:
            # Killed during a canary: both generations take traffic. Go back to the old ones first.
            keep = running[: svc.replicas]
            host.switch(svc.name, [Server(address=c.address, comment=c.name) for c in keep])
            run.reconciled.append(
                "%s: upstream put back to %s (an interrupted canary)" % (svc.name, ", ".join(c.name for c in keep))
            )
        else:
            keep = in_upstream
        for container in running:
            if container not in keep:
                host.stop_and_remove(container)
                run.reconciled.append(
                    "%s: removed %s, which the upstream did not list (left by an interrupted run)"
                    % (svc.name, container.name)
                )
        if svc.port is not None:
            host.sync_from_docker(svc.name, svc.port)
    if run.reconciled:
        run.step("reconciled the leftovers of an interrupted run: %s" % "; ".join(run.reconciled))


def _result(run: Run, plans: list[ServicePlan], **extra: t.Any) -> dict[str, t.Any]:
    out = {
        "plan": [p.to_dict() for p in plans],
        "steps": run.steps,
        "warnings": run.warnings,
        "timings": run.timings,
        "reconciled": run.reconciled,
    }
    if run.evidence:
        out["evidence"] = run.evidence
    out.update(extra)
    return out


def _record(
    host: Host,
    journal: Journal,
    release_id: str,
    kind: str,
    status: str,
    started_wall: float,
    previous: Release | None,
    detail: str,
    services: dict[str, ServiceImage] | None = None,
    extra: dict[str, t.Any] | None = None,
) -> Release:
    if services is None:
        services = project_images(host.client, host.s.project)
    release = Release(
        id=release_id,
        project=host.s.project,
        kind=kind,
        status=status,
        created=iso_utc(started_wall),
        created_ts=started_wall,
        services=services,
        compose_hash=file_sha256(host.s.compose_file),
        duration_s=round(time.time() - started_wall, 3),
        previous=previous.id if previous else None,
        detail=detail,
        extra=extra or {},
    )
    journal.record(release)
    return release


def execute(
    settings: Settings,
    targets: dict[str, str],
    kind: str = "upgrade",
    host: Host | None = None,
    rollback_of: str | None = None,
    services: dict[str, ComposeService] | None = None,
) -> dict[str, t.Any]:
    """Plan, and unless in check mode carry out, the move of `targets` (service -> image reference)."""
    host = host or Host(settings)
    run = Run()
    if not os.path.isfile(settings.compose_file):
        raise BadRequest(
            "%s does not exist: deploy the project (compose_app role) before upgrading it" % settings.compose_file
        )
    if services is None:
        try:
            services = host.compose_config()
        except UpgradeError as exc:
            raise BadRequest(str(exc)) from exc
    unknown = sorted(set(targets) - set(services))
    if unknown:
        raise BadRequest(
            "unknown service%s %s in project %s (its services: %s); nothing was changed"
            % ("s" if len(unknown) > 1 else "", ", ".join(unknown), settings.project, ", ".join(sorted(services)))
        )
    journal = Journal(settings.journal_root, settings.project)

    if settings.check_mode:
        plans = [plan_service(host, services[name], image, True) for name, image in targets.items()]
        changed = any(p.action != "none" for p in plans)
        return _result(
            run,
            plans,
            changed=changed,
            release=None,
            previous_release=(journal.latest("succeeded").id if journal.latest("succeeded") else None),
        )

    try:
        lock = project_lock(settings.project, kind, settings.journal_root, settings.lock_timeout_s)
        held = lock.__enter__()
    except ProjectLocked as exc:
        raise UpgradeError(str(exc), {"lock_holder": exc.holder, "changed": False}) from exc
    try:
        host.lock_fd = held.fd
        if held.waited_s:
            run.step("waited %g s for the project lock" % held.waited_s)
        reconcile(host, {n: services[n] for n in targets}, journal, run)
        if run.reconciled:
            services = host.compose_config()
        plans = [plan_service(host, services[name], image, False) for name, image in targets.items()]
        previous = journal.latest("succeeded")
        todo = [p for p in plans if p.action != "none"]
        if not todo:
            current = project_images(host.client, settings.project)
            release = None
            if run.reconciled and (previous is None or content_key(previous.services) != content_key(current)):
                started_wall = time.time()
                rid = new_release_id(
                    started_wall, file_sha256(settings.compose_file), (r.id for r in journal.releases())
                )
                release = _record(
                    host,
                    journal,
                    rid,
                    kind,
                    "succeeded",
                    started_wall,
                    previous,
                    "completed by reconciling an interrupted run",
                    current,
                ).to_dict()
            return _result(
                run,
                plans,
                changed=bool(run.reconciled),
                release=release or (previous.to_dict() if previous else None),
                previous_release=previous.id if previous else None,
            )
        for plan in todo:
            if settings.pull == "always" or not plan.to_image_id:
                host.pull(plan.to_image)
                run.step("%s: pulled %s" % (plan.service, plan.to_image))
                fresh = plan_service(host, services[plan.service], plan.to_image, False)
                plan.to_image_id, plan.to_digest = fresh.to_image_id, fresh.to_digest
                plan.action = fresh.action if fresh.action != "none" else plan.action
        started_wall = time.time()
        rid = new_release_id(started_wall, file_sha256(settings.compose_file), (r.id for r in journal.releases()))
        intended = {p.service: ServiceImage(p.to_image, p.to_image_id, p.to_digest) for p in plans}
        extra = {"rollback_of": rollback_of} if rollback_of else {}
        _record(
            host,
            journal,
            rid,
            kind,
            "in_progress",
            started_wall,
            previous,
            "%s in progress (pid %d)" % (kind, os.getpid()),
            {**project_images(host.client, settings.project), **intended},
            extra,
        )
        rollout = Rollout(host, run)
        done: list[ServicePlan] = []
        try:
            for plan in todo:
                rollout.replace(plan)
                done.append(plan)
        except (UpgradeError, UpstreamError, DockerError, OSError) as exc:
            message = str(exc)
            failed_service = next((p.service for p in todo if p not in done), "?")
            # Services already moved in this run go back too: a release is all or nothing.
            for plan in reversed(done):
                back = ServicePlan(
                    plan.service,
                    plan.role,
                    "rolling",
                    plan.replicas,
                    plan.to_image,
                    [plan.to_image_id],
                    plan.to_digest,
                    plan.from_image,
                    plan.from_image_ids[0] if plan.from_image_ids else "",
                    plan.from_digest,
                    plan.port,
                )
                try:
                    rollout.replace(back)
                    run.step("%s: moved back to %s" % (plan.service, plan.from_image))
                except (UpgradeError, UpstreamError, DockerError, OSError) as undo_exc:
                    run.warnings.append(
                        "%s could not be moved back to %s: %s" % (plan.service, plan.from_image, undo_exc)
                    )
            release = _record(
                host,
                journal,
                rid,
                kind,
                "failed",
                started_wall,
                previous,
                "%s failed on %s: %s" % (kind, failed_service, message),
                {**project_images(host.client, settings.project), **intended},
                {**extra, "evidence": run.evidence, "steps": run.steps},
            )
            journal.prune(settings.keep)
            raise UpgradeError(
                "%s of %s failed on service %s and was undone; the previous release keeps serving. %s"
                % (kind, settings.project, failed_service, message),
                _result(
                    run,
                    plans,
                    changed=True,
                    release=release.to_dict(),
                    previous_release=previous.id if previous else None,
                    failed_service=failed_service,
                ),
            ) from exc
        release = _record(
            host,
            journal,
            rid,
            kind,
            "succeeded",
            started_wall,
            previous,
            "%s of %s" % (kind, ", ".join("%s to %s" % (p.service, p.to_image) for p in todo)),
            extra={**extra, "timings": run.timings},
        )
        journal.prune(settings.keep)
        return _result(
            run, plans, changed=True, release=release.to_dict(), previous_release=previous.id if previous else None
        )
    finally:
        host.lock_fd = None
        lock.__exit__(None, None, None)


# --------------------------------------------------------------------------------------------------------
# Entry points of the two modules
# --------------------------------------------------------------------------------------------------------


def rolling_upgrade(settings: Settings, services: dict[str, str], host: Host | None = None) -> dict[str, t.Any]:
    """services: name -> new tag (or a full image reference)."""
    if not services:
        raise BadRequest(
            "services is empty: give at least one service and its new tag, e.g. {backend: '2.0'}; nothing was changed"
        )
    host = host or Host(settings)
    missing = sorted(name for name, tag in services.items() if not tag or not str(tag).strip())
    if missing:
        raise BadRequest(
            "no tag given for %s: every service needs its new image tag; nothing was changed" % ", ".join(missing)
        )
    if not os.path.isfile(settings.compose_file):
        raise BadRequest(
            "%s does not exist: deploy the project (compose_app role) before upgrading it" % settings.compose_file
        )
    try:
        current = host.compose_config()
    except UpgradeError as exc:
        raise BadRequest(str(exc)) from exc
    targets = {}
    for name, tag in services.items():
        if name not in current:
            raise BadRequest(
                "unknown service %s in project %s (its services: %s); nothing was changed"
                % (name, settings.project, ", ".join(sorted(current)))
            )
        try:
            targets[name] = target_image(current[name].image, str(tag).strip())
        except ValueError as exc:
            raise BadRequest("service %s: %s; nothing was changed" % (name, exc)) from exc
    return execute(settings, targets, "upgrade", host, services=current)


def intact(host: Host, release: Release) -> bool:
    """Every image of the release is still on this host."""
    for img in release.services.values():
        if not (img.image_id and host.image(img.image_id)):
            return False
    return True


def choose_release(host: Host, journal: Journal, wanted: str | None) -> Release:
    releases = journal.releases()
    if wanted:
        try:
            release = journal.get(wanted)
        except JournalError as exc:
            raise BadRequest("%s; nothing was changed" % exc) from exc
        if release.status not in ("succeeded",):
            raise BadRequest(
                "release %s has status %s: only a release that succeeded can be returned to" % (wanted, release.status)
            )
        if not intact(host, release):
            raise BadRequest(
                "release %s is not intact on this host (one of its images is gone); pick another "
                "with release_info" % wanted
            )
        return release
    current = project_images(host.client, host.s.project)
    for release in reversed(releases):
        if release.status != "succeeded" or not release.services:
            continue
        if all(current.get(n) and (current[n].image_id == s.image_id) for n, s in release.services.items()):
            continue  # what runs now
        if intact(host, release):
            return release
    raise BadRequest(
        "no previous succeeded release of %s is intact on this host (release_info lists the journal)" % host.s.project
    )


def rollback(settings: Settings, release_id: str | None = None, host: Host | None = None) -> dict[str, t.Any]:
    host = host or Host(settings)
    journal = Journal(settings.journal_root, settings.project)
    release = choose_release(host, journal, release_id)
    targets = {}
    for name, img in release.services.items():
        tagged = host.image(img.image)
        # The tag may have moved since: then pin the digest the release ran.
        targets[name] = img.image if tagged and tagged.get("Id") == img.image_id else (img.digest or img.image)
    result = execute(settings, targets, "rollback", host, rollback_of=release.id)
    result["rolled_back_to"] = release.id
    return result


__all__ = [
    "COMMON_OPTIONS",
    "BadRequest",
    "BakeVerdict",
    "ComposeService",
    "Host",
    "Rollout",
    "ServicePlan",
    "Settings",
    "UpgradeError",
    "choose_release",
    "content_key",
    "established_on_ports",
    "execute",
    "judge_bake",
    "parse_access_line",
    "parse_docker_time",
    "rollback",
    "rolling_upgrade",
    "set_service_image",
    "settings_from_params",
    "split_image",
    "target_image",
    "upstream_addresses",
]
