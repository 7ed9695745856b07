"""The sandbox script's own logic: cache keys, refusal without root, the host capability set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("opsbook_sandbox", ROOT / "sandbox/sandbox.py")
sandbox = importlib.util.module_from_spec(spec)
sys.modules["opsbook_sandbox"] = sandbox
spec.loader.exec_module(sandbox)


def test_context_hash_follows_files_args_and_base(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    first = sandbox.context_hash(tmp_path, {}, "base1")
    assert sandbox.context_hash(tmp_path, {}, "base1") == first
    assert sandbox.context_hash(tmp_path, {"VERSION": "2"}, "base1") != first
    assert sandbox.context_hash(tmp_path, {}, "base2") != first
    (tmp_path / "app.py").write_text("print(1)\n")
    assert sandbox.context_hash(tmp_path, {}, "base1") != first


def test_context_hash_ignores_python_caches(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    first = sandbox.context_hash(tmp_path, {}, "b")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert sandbox.context_hash(tmp_path, {}, "b") == first


def test_no_engine_and_no_root_stops_with_what_to_do(monkeypatch):
    monkeypatch.setattr(sandbox, "docker_answers", lambda: False)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    installed = []
    monkeypatch.setattr(sandbox, "apt_install", installed.append)
    with pytest.raises(sandbox.SandboxError, match="no Docker Engine answers and this is not root: run as root"):
        sandbox.ensure_engine()
    assert installed == []  # never half-installs


def test_every_stack_image_has_a_build_context():
    for spec_ in sandbox.STACK_IMAGES:
        assert (spec_.context / "Dockerfile").is_file(), spec_.name
    names = {s.name for s in sandbox.STACK_IMAGES}
    assert {
        "demo-backend",
        "demo-frontend",
        "mariadb",
        "postgres",
        "redis",
        "prometheus",
        "alertmanager",
        "node-exporter",
        "nginx-exporter",
        "mysqld-exporter",
        "postgres-exporter",
        "redis-exporter",
        "blackbox-exporter",
        "registry",
    } <= names
    assert [s.tag for s in sandbox.STACK_IMAGES if s.name == "demo-backend"] == ["1.0", "2.0", "3.0", "4.0"]


def test_host_run_argv_uses_the_capability_set_not_privileged():
    argv = sandbox.host_run_argv("h1")
    assert "--privileged" not in argv
    caps = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert caps == sandbox.HOST_CAPS
    assert argv[-2:] == [sandbox.HOST_IMAGE, "/lib/systemd/systemd"]
    assert "h1-docker:/var/lib/docker" in argv


@pytest.mark.docker
def test_failed_build_names_the_image_and_keeps_the_previous_tag(tmp_path, monkeypatch):
    if not Path("/var/run/docker.sock").exists() or not sandbox.image_exists(sandbox.BASE_IMAGE):
        pytest.skip("needs the Docker Engine and the sandbox base image (./dev sandbox)")
    ctx = tmp_path / "images" / "opsbook-unit-build"
    ctx.mkdir(parents=True)
    monkeypatch.setattr(sandbox, "HERE", tmp_path)
    monkeypatch.setattr(sandbox, "LOG_DIR", tmp_path / "logs")
    spec_ = sandbox.ImageSpec("opsbook-unit-build", "1", push=False)
    try:
        (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo good > /good\n")
        assert sandbox.build_image(spec_, "base") is True
        good = sandbox.out(["docker", "image", "inspect", "--format", "{{.Id}}", spec_.local_ref])
        assert sandbox.build_image(spec_, "base") is False  # unchanged context: no rebuild
        marker = "opsbook-unit-failed-step-" + tmp_path.name
        (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN exit 3 || %s\n" % marker)
        with pytest.raises(
            sandbox.SandboxError,
            match=r"building image opsbook/opsbook-unit-build:1 failed "
            r"\(the previous image keeps the tag\)",
        ):
            sandbox.build_image(spec_, "base")
        assert sandbox.out(["docker", "image", "inspect", "--format", "{{.Id}}", spec_.local_ref]) == good
        # The failed step's container is gone too (a leftover per run piled up before --force-rm).
        commands = sandbox.out(["docker", "ps", "-a", "--no-trunc", "--format", "{{.Command}}"])
        assert marker not in commands
    finally:
        sandbox.run(["docker", "rmi", "-f", spec_.local_ref], check=False)
