"""docker_engine on two sandbox hosts (plain and prebuilt image): the engine runs with our daemon.json and runs real
containers; on the prebuilt host the install tasks changed nothing."""

import json
import re
import time

import pytest

IMAGE = "registry:5000/demo-backend:1.0"


def test_docker_service_enabled_and_running(host):
    svc = host.service("docker")
    assert svc.is_running
    assert svc.is_enabled


def test_daemon_json_has_rotation_live_restore_and_registry(host):
    cfg = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert cfg["log-driver"] == "json-file"
    assert cfg["log-opts"] == {"max-size": "20m", "max-file": "3"}
    assert cfg["live-restore"] is True
    assert cfg["insecure-registries"] == ["registry:5000"]
    assert cfg["metrics-addr"] == "127.0.0.1:9323"


def test_engine_applied_the_config(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"
    assert "registry:5000" in json.dumps(info["RegistryConfig"])


def test_metrics_endpoint_on_loopback_only(host):
    out = host.check_output("curl -fsS http://127.0.0.1:9323/metrics")
    assert "engine_daemon_engine_info" in out
    listeners = host.check_output("ss -Hltn")
    assert "127.0.0.1:9323" in listeners
    assert "0.0.0.0:9323" not in listeners


def test_compose_v2_plugin(host):
    version = host.check_output("docker compose version --short")
    assert version.lstrip("v").startswith("2.")
    plugin = host.file("/usr/local/lib/docker/cli-plugins/docker-compose")
    assert plugin.mode == 0o755


def test_pull_from_sandbox_registry_and_run_healthy_container(host):
    host.run("docker rm -f mol-health")
    host.check_output(f"docker pull -q {IMAGE}")
    host.check_output(
        "docker run -d --name mol-health -p 127.0.0.1::8000 "
        "--health-cmd 'python3 -c \"import urllib.request;"
        "urllib.request.urlopen(\\\"http://127.0.0.1:8000/health\\\")\"' "
        f"--health-interval 1s --health-retries 3 {IMAGE}"
    )
    try:
        status = ""
        for _ in range(30):
            status = host.check_output("docker inspect -f '{{.State.Health.Status}}' mol-health")
            if status == "healthy":
                break
            time.sleep(1)
        assert status == "healthy"
        port = host.check_output("docker port mol-health 8000/tcp").splitlines()[0].rsplit(":", 1)[1]
        body = json.loads(host.check_output(f"curl -fsS http://127.0.0.1:{port}/health"))
        assert body["status"] == "ok"
        # json-file rotation options reach new containers
        opts = json.loads(host.check_output("docker inspect -f '{{json .HostConfig.LogConfig}}' mol-health"))
        assert opts["Type"] == "json-file"
    finally:
        host.run("docker rm -f mol-health")


def test_containers_survive_a_dockerd_restart(host):
    """live-restore: a config change restarts dockerd without stopping the workload."""
    host.run("docker rm -f mol-live")
    host.check_output(f"docker run -d --name mol-live {IMAGE}")
    try:
        pid_before = host.check_output("docker inspect -f '{{.State.Pid}}' mol-live")
        host.check_output("systemctl restart docker")
        pid_after = host.check_output("docker inspect -f '{{.State.Pid}}' mol-live")
        assert pid_before == pid_after != "0"
    finally:
        host.run("docker rm -f mol-live")


def booted_at(host):
    """When the sandbox host (its systemd, PID 1) started, in seconds since the epoch."""
    btime = int(host.check_output("awk '/^btime/ {print $2}' /proc/stat"))
    ticks = int(host.check_output("cut -d' ' -f22 /proc/1/stat"))
    return btime + ticks / int(host.check_output("getconf CLK_TCK"))


def test_engine_installed_from_nothing_on_the_plain_host(host):
    """The plain host image has no engine: the role's apt task installed docker.io during this run."""
    if host.backend.get_hostname().endswith("-ready"):
        pytest.skip("the prebuilt host")
    assert host.file("/var/log/dpkg.log").contains(r" install docker\.io:")
    assert host.file("/usr/local/lib/docker/cli-plugins/docker-compose").mtime.timestamp() >= booted_at(host) - 1


def test_install_tasks_changed_nothing_on_the_prebuilt_host(host):
    """The prebuilt image (sandbox/images/sandbox-host-ready) has what the install tasks install, so they report
    changed=0 there: dpkg installed nothing since the image was built (its logs were emptied then) and the Compose
    plugin is the image's file, untouched since the host booted."""
    if not host.backend.get_hostname().endswith("-ready"):
        pytest.skip("the plain host")
    assert host.package("docker.io").is_installed
    assert host.package("nginx").is_installed
    dpkg_log = host.file("/var/log/dpkg.log").content_string
    assert not re.findall(r" (install|upgrade|remove) \S+", dpkg_log), dpkg_log[-2000:]
    assert host.file("/usr/local/lib/docker/cli-plugins/docker-compose").mtime.timestamp() < booted_at(host)


def test_seeded_engine_has_the_stack_images_and_pulls_nothing_new(host):
    """Hosts of the prebuilt image start with the image seed: the pull finds the image up to date."""
    if not host.backend.get_hostname().endswith("-ready"):
        pytest.skip("the plain host")
    out = host.check_output(f"docker pull {IMAGE}")
    assert "Image is up to date" in out, out
    assert host.check_output("docker image ls -q registry:5000/mariadb:10.11")


def test_the_deploy_user_is_in_the_docker_group_and_reaches_the_engine(host):
    """docker_engine_users: the converge's own post-task already ran `docker version` as deployer in the same
    play (after the role's reset_connection); here, from a fresh login too."""
    assert "docker" in host.user("deployer").groups
    assert host.run("su -s /bin/sh deployer -c 'docker version --format {{.Server.Version}}'").rc == 0
