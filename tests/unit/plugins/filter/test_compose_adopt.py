# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compose_adopt and compose_override_yaml filters: the override that runs an operator's own compose file the
compose_app way (web replicas on loopback, secrets in .env, health checks, pinned images), and its text."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.opsbook.stack.plugins.filter.compose import (
    FilterModule,
    compose_adopt,
    compose_override_yaml,
    compose_tag,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import set_service_image

DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[4] / "roles/compose_app/defaults/main.yml").read_text())
PRESETS = DEFAULTS["compose_app_presets"]
LOGGING = {"driver": "json-file", "options": {"max-size": "50m", "max-file": "5"}}
RESET = compose_tag("!reset")


def override(*ports):
    return compose_tag("!override", list(ports))


def adopt(services_yaml, settings=None, project="demo", name="docker-compose.yml"):
    text = "services:\n" + textwrap.indent(textwrap.dedent(services_yaml).strip("\n"), "  ") + "\n"
    return compose_adopt([{"name": name, "text": text}], project, PRESETS, settings)


class _TagLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """Reads the override back: `!reset` and `!override` as the markers compose_adopt builds."""


def _tagged(loader, suffix, node):
    tag = "!" + suffix
    if isinstance(node, yaml.SequenceNode):
        return compose_tag(tag, loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return compose_tag(tag, loader.construct_mapping(node, deep=True))
    value = loader.construct_scalar(node)
    return compose_tag(tag, None if value == "null" else value)


_TagLoader.add_multi_constructor("!", _tagged)

# id, the services of the file, settings, the service looked at, its expected override keys (None: absent), report
# lines and refusals (substrings; an empty list of refusals: none at all).
CASES = [
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          container_name: agentchat-backend
          ports: ["7860:7860"]
        """,
        {},
        "backend",
        {"image": "reg/backend:1.0", "container_name": RESET, "ports": override("127.0.0.1::7860")},
        [
            "backend: container_name agentchat-backend removed so two replicas can run during an upgrade",
            "backend: port 7860 (was published on 0.0.0.0:7860) now on 127.0.0.1 with an ephemeral host port; "
            "Nginx routes to it",
            "backend: health check added from preset web (GET /health on 7860)",
        ],
        [],
        id="container_name-on-web",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["0.0.0.0:8000:8000", "9090:9090"]
        """,
        {},
        "backend",
        {"ports": override("127.0.0.1::8000"), "container_name": None},
        [
            "port 8000 (was published on 0.0.0.0:8000) now on 127.0.0.1",
            "backend: port 9090:9090 (published on 0.0.0.0:9090) is no longer published",
        ],
        [],
        id="fixed-host-ports",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["${BACKEND_PORT:-7860}:7860"]
        """,
        {"env": {"BACKEND_PORT": "9000"}},
        "backend",
        {"ports": override("127.0.0.1::7860")},
        ["backend: port 7860 (was published on 0.0.0.0:9000) now on 127.0.0.1"],
        [],
        id="interpolated-host-port",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports:
            - target: 8080
              published: "8081"
              host_ip: 0.0.0.0
              protocol: tcp
        """,
        {},
        "backend",
        {"ports": override("127.0.0.1::8080")},
        ["port 8080 (was published on 0.0.0.0:8081) now on 127.0.0.1"],
        [],
        id="long-syntax-port",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["127.0.0.1::8000", "8001/udp"]
        """,
        {},
        "backend",
        {"ports": override("127.0.0.1::8000")},
        ["port 8000 (was published on 127.0.0.1 with an ephemeral host port) now on 127.0.0.1"],
        [],
        id="loopback-ephemeral-and-udp",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000/tcp"]
        """,
        {},
        "backend",
        {
            "ports": override("127.0.0.1::8000"),
            "labels": {"io.opsbook.port": "8000", "io.opsbook.project": "demo", "io.opsbook.role": "web"},
        },
        ["port 8000 (was published on 0.0.0.0 with an ephemeral host port)"],
        [],
        id="container-port-with-protocol",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000-8010:8000-8010"]
        """,
        {},
        "backend",
        {"ports": None},
        [],
        [
            "backend: its first port 8000-8010:8000-8010 (docker-compose.yml line 4) is a range; a web service is "
            "proxied on one port: give compose_app_services.backend.port"
        ],
        id="port-range-on-web-refused",
    ),
    pytest.param(
        """
        backend:
          build: ./backend
        """,
        {"builds": {"backend": "reg/backend:abc123"}},
        "backend",
        {"ports": None},
        [],
        [
            "backend: a web service needs the container port Nginx proxies to and the file publishes no TCP port; "
            "give compose_app_services.backend.port"
        ],
        id="web-without-port-refused",
    ),
    pytest.param(
        """
        backend:
          build:
            context: ./backend
          container_name: backend
          ports: ["8000:8000"]
        """,
        {"builds": {"backend": "reg/backend:abc123"}},
        "backend",
        {"image": "reg/backend:abc123", "build": RESET, "container_name": RESET},
        [
            "backend: built from compose_app_build.backend, tagged reg/backend:abc123; `build:` (docker-compose.yml "
            "line 3) reset"
        ],
        [],
        id="build-with-builds-entry",
    ),
    pytest.param(
        """
        backend:
          build: ./backend
          ports: ["8000:8000"]
        """,
        {},
        "backend",
        {"build": None, "image": None},
        [],
        [
            "backend has `build:` (docker-compose.yml line 3): set compose_app_build.backend to {source: git, repo: "
            "..., ref: ...} or {source: dir, src: ...} to build it on the host, or {source: image, image: "
            "registry/name:tag} to run an image you pushed"
        ],
        id="build-without-builds-entry-refused",
    ),
    pytest.param(
        """
        db:
          image: mysql:8.4
          environment:
            MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD}
        api:
          image: reg/api:1.0
          ports: ["8000:8000"]
          depends_on:
            db:
              condition: service_healthy
        """,
        {"secret_names": ["MYSQL_ROOT_PASSWORD"]},
        "api",
        {"depends_on": None},
        ["db: health check added from preset mysql (mysqladmin ping -h 127.0.0.1)"],
        [],
        id="depends_on-service_healthy-untouched",
    ),
    pytest.param(
        """
        queue:
          image: reg/queue:1.0
        api:
          image: reg/api:1.0
          ports: ["8000:8000"]
          depends_on:
            queue:
              condition: service_healthy
        """,
        {},
        "queue",
        {"healthcheck": None},
        ["queue: no health check (no preset gives one)"],
        [
            "api waits for queue to be healthy (depends_on, docker-compose.yml line 8) and queue has no health check; "
            "give compose_app_services.queue.healthcheck"
        ],
        id="depends_on-healthy-without-health-check-refused",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          healthcheck:
            test: ["CMD", "curl", "-f", "http://localhost:8000/ping"]
            interval: 10s
        """,
        {},
        "backend",
        {"healthcheck": None},
        ["backend: health check: the file's own (every 10s)"],
        [],
        id="own-healthcheck-with-interval",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          healthcheck:
            test: ["CMD", "curl", "-f", "http://localhost:8000/ping"]
            interval: 10s
        """,
        {"healthcheck_overrides": {"interval": "2s"}},
        "backend",
        {"healthcheck": {"interval": "2s"}},
        ["backend: health check: the file's own, with interval 2s from compose_app_healthcheck_overrides"],
        [],
        id="own-healthcheck-with-the-sandbox-overrides",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          healthcheck:
            test: curl -f http://localhost:8000/ping
        """,
        {},
        "backend",
        {"healthcheck": None},
        ["backend: health check: the file's own (no interval: Docker checks every 30s)"],
        [],
        id="own-healthcheck-without-interval",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          healthcheck:
            disable: true
        """,
        {},
        "backend",
        {"healthcheck": None},
        [],
        [
            "backend is a web service without any way to check health: docker-compose.yml line 6 disables it; remove "
            "`disable` or give compose_app_services.backend.healthcheck"
        ],
        id="disabled-healthcheck-on-web-refused",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          healthcheck:
            test: ["NONE"]
        """,
        {"services": {"backend": {"healthcheck": {"test": ["CMD", "true"]}}}},
        "backend",
        {
            "healthcheck": compose_tag(
                "!override",
                {"test": ["CMD", "true"], "interval": "30s", "timeout": "10s", "retries": 3, "start_period": "40s"},
            )
        },
        ["backend: health check from compose_app_services.backend.healthcheck (true), instead of the file's own"],
        [],
        id="disabled-healthcheck-with-hint",
    ),
    pytest.param(
        """
        db:
          image: mariadb:10.11
          restart: unless-stopped
          environment:
            MARIADB_ROOT_PASSWORD: ${DB_ROOT}
          volumes:
            - ./mysql/init:/docker-entrypoint-initdb.d:ro
            - db-data:/var/lib/mysql
            - ${DOCKER_VOLUME_DIRECTORY:-.}/volumes/db:/backup
        """,
        {"secret_names": ["DB_ROOT"], "logging": LOGGING, "healthcheck_overrides": {"interval": "2s"}},
        "db",
        {
            "volumes": None,
            "restart": None,
            "environment": None,
            "container_name": None,
            "logging": LOGGING,
            "healthcheck": {
                "test": ["CMD", "mysqladmin", "ping", "-h", "127.0.0.1"],
                "interval": "2s",
                "timeout": "20s",
                "retries": 10,
                "start_period": "30s",
            },
        },
        ["db: health check added from preset mariadb", "db: json-file log rotation 50m x 5"],
        [],
        id="init-scripts-named-volumes-restart-untouched",
    ),
    pytest.param(
        """
        mysql:
          image: mysql:8.4
          container_name: astron-mysql
          environment:
            MYSQL_ROOT_PASSWORD: 123456
            MYSQL_DATABASE: app
        """,
        {},
        "mysql",
        {"environment": None},
        [],
        [
            "mysql: environment MYSQL_ROOT_PASSWORD is written inline in docker-compose.yml line 6; set "
            "compose_app_secrets.MYSQL_ROOT_PASSWORD (compose_app moves it into the 0600 .env) or write "
            "${MYSQL_ROOT_PASSWORD} in the file"
        ],
        id="inline-password-refused",
    ),
    pytest.param(
        """
        mysql:
          image: mysql:8.4
          container_name: astron-mysql
          environment:
            MYSQL_ROOT_PASSWORD: 123456
            MYSQL_DATABASE: app
        """,
        {"secret_names": ["MYSQL_ROOT_PASSWORD"]},
        "mysql",
        {
            "environment": {"MYSQL_ROOT_PASSWORD": "${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is missing from .env}"},
            "container_name": None,
        },
        [
            "mysql: MYSQL_ROOT_PASSWORD moved to the 0600 .env (the inline value in docker-compose.yml line 6 is no "
            "longer used)"
        ],
        [],
        id="inline-password-moved",
    ),
    pytest.param(
        """
        mysql:
          image: mysql:8.4
          environment:
            - MYSQL_DATABASE=app
            - MYSQL_ROOT_PASSWORD=123456
            - MYSQL_ALLOW_EMPTY_PASSWORD=yes
        """,
        {"secret_names": ["MYSQL_ROOT_PASSWORD"]},
        "mysql",
        {"environment": {"MYSQL_ROOT_PASSWORD": "${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is missing from .env}"}},
        ["the inline value in docker-compose.yml line 6 is no longer used"],
        [],
        id="inline-password-list-form",
    ),
    pytest.param(
        """
        api:
          image: reg/api:1.0
          ports: ["8000:8000"]
          environment:
            DATABASE_URL: mysql+pymysql://root:123456@mysql:3306/app
            CACHE_URL: redis://:${REDIS_PASSWORD}@redis:6379/0
            MAX_TOKENS: 4096
            JWT_EXPIRE_SECONDS: 3600
        """,
        {"secret_names": ["REDIS_PASSWORD"]},
        "api",
        {"environment": None},
        [],
        [
            "api: environment DATABASE_URL holds a password in a URL written inline in docker-compose.yml line 6; set "
            "compose_app_secrets.DATABASE_URL"
        ],
        id="url-credentials-refused",
    ),
    pytest.param(
        """
        minio:
          image: minio/minio:RELEASE.2024-05-01T01-11-10Z
          environment:
            MINIO_ROOT_USER: minioadmin
            MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-minioadmin}
          ports: ["9000:9000", "${MINIO_CONSOLE_PORT:-9001}:9001"]
        """,
        {"secret_names": ["MINIO_ROOT_PASSWORD"]},
        "minio",
        {
            "ports": override("127.0.0.1:9000:9000", "127.0.0.1:${MINIO_CONSOLE_PORT:-9001}:9001"),
            "environment": None,
            "labels": {"io.opsbook.project": "demo", "io.opsbook.role": "worker"},
        },
        [
            "minio: port 9000 was published on every address; now on 127.0.0.1:9000 only",
            "minio: port 9001 was published on every address; now on 127.0.0.1:9001 only",
        ],
        [],
        id="minio-worker-ports-on-loopback",
    ),
    pytest.param(
        """
        minio:
          image: minio/minio:RELEASE.2024-05-01T01-11-10Z
          environment:
            MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-minioadmin}
        """,
        {},
        "minio",
        {},
        [],
        ["minio: environment MINIO_ROOT_PASSWORD is written inline in docker-compose.yml line 5"],
        id="default-of-an-unset-secret-refused",
    ),
    pytest.param(
        """
        redis:
          image: redis:7.2
          container_name: redis
          ports:
            - 6379:6379
            - 127.0.0.1:16379:6380
        """,
        {},
        "redis",
        {
            "ports": override("127.0.0.1:6379:6379", "127.0.0.1:16379:6380"),
            "container_name": None,
            "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "30s", "timeout": "10s", "retries": 3},
        },
        [
            "redis: port 6379 was published on every address; now on 127.0.0.1:6379 only",
            "redis: health check added from preset redis (redis-cli ping)",
        ],
        [],
        id="redis-fixed-unquoted-port",
    ),
    pytest.param(
        """
        valkey:
          image: valkey/valkey:8.0
          ports: ["6379:6379", "[::]:6379:6379", "127.0.0.1:16379:16379"]
        """,
        {},
        "valkey",
        {"ports": override("127.0.0.1:6379:6379", "127.0.0.1:16379:16379")},
        [
            "valkey: port 6379 was published on every address; now on 127.0.0.1:6379 only",
            "valkey: health check added from preset redis (redis-cli ping)",
        ],
        [],
        id="dual-stack-ports-one-loopback-port",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          network_mode: host
          ports: ["8000:8000"]
        """,
        {},
        "backend",
        {"ports": None},
        [],
        [
            "backend: network_mode: host (docker-compose.yml line 4) binds the host's ports directly, so two replicas "
            "cannot run and Nginx cannot route to loopback ports; remove it, or mark it "
            "compose_app_services.backend.role: worker"
        ],
        id="network_mode-host-on-web-refused",
    ),
    pytest.param(
        """
        agent:
          image: reg/agent:1.0
          network_mode: host
        """,
        {},
        "agent",
        {"ports": None, "labels": {"io.opsbook.project": "demo", "io.opsbook.role": "worker"}},
        ["agent: network_mode: host (docker-compose.yml line 4): it listens on the host's own addresses"],
        [],
        id="network_mode-host-on-worker",
    ),
    pytest.param(
        """
        frontend:
          image: reg/frontend:1.0
          ports: ["80:80"]
        """,
        {
            "services": {
                "frontend": {"preset": "frontend", "port": 8080, "tag": "1.2", "replicas": 2, "labels": {"team": "web"}}
            }
        },
        "frontend",
        {
            "image": "reg/frontend:1.2",
            "ports": override("127.0.0.1::8080"),
            "deploy": {"replicas": 2},
            "labels": {
                "io.opsbook.port": "8080",
                "io.opsbook.project": "demo",
                "io.opsbook.role": "web",
                "team": "web",
            },
        },
        [
            "frontend: health check added from preset frontend (GET / on 8080)",
            "frontend: runs reg/frontend:1.2 (compose_app_services.frontend), not the file's reg/frontend:1.0",
            "frontend: port 8080 (was not published) now on 127.0.0.1",
        ],
        [],
        id="hints-preset-port-tag-replicas-labels",
    ),
    pytest.param(
        """
        metrics:
          image: reg/metrics:1.0
          ports: ["9100:9100"]
        """,
        {"services": {"metrics": {"role": "worker"}}},
        "metrics",
        {"ports": override("127.0.0.1:9100:9100")},
        ["metrics: port 9100 was published on every address"],
        [],
        id="hint-role-worker",
    ),
    pytest.param(
        """
        gis:
          image: postgis/postgis:15-3.4
        """,
        {},
        "gis",
        {
            "healthcheck": {
                "test": ["CMD-SHELL", "pg_isready -U \"$${POSTGRES_USER:-postgres}\" -h 127.0.0.1"],
                "interval": "10s",
                "timeout": "5s",
                "retries": 5,
                "start_period": "30s",
            }
        },
        ["gis: health check added from preset postgres"],
        [],
        id="postgis-is-postgres",
    ),
    pytest.param(
        """
        web:
          image: ${REGISTRY:-docker.io}/team/web
          ports: ["8000:8000"]
          command: ["serve", "--url", "${PUBLIC_URL}"]
          environment:
            SECRET_KEY: ${APP_SECRET:?set APP_SECRET}
        """,
        {},
        "web",
        {"image": "docker.io/team/web"},
        [
            "web: image docker.io/team/web has no tag (latest); pin one",
            "web: uses ${PUBLIC_URL}, which neither compose_app_secrets nor compose_app_env sets (docker-compose.yml "
            "line 5",
        ],
        [
            "web: ${APP_SECRET:?set APP_SECRET} (docker-compose.yml line 7) needs APP_SECRET, which neither "
            "compose_app_secrets nor compose_app_env sets, so Compose would stop"
        ],
        id="interpolated-image-and-unset-variables",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          logging:
            driver: json-file
            options:
              max-size: 10m
          container_name: !reset null
        """,
        {"logging": LOGGING},
        "backend",
        {"logging": None, "container_name": None},
        ["backend: logging: the file's own json-file rotation (max-size 10m)"],
        [],
        id="own-log-rotation-and-unknown-tags",
    ),
    pytest.param(
        """
        backend:
          image: reg/backend:1.0
          ports: ["8000:8000"]
          logging:
            driver: syslog
        """,
        {"logging": LOGGING},
        "backend",
        {"logging": compose_tag("!override", LOGGING)},
        ["backend: json-file log rotation 50m x 5 (instead of the file's syslog)"],
        [],
        id="other-log-driver-replaced",
    ),
    pytest.param(
        """
        tool:
          command: ["true"]
        """,
        {},
        "tool",
        {"image": None},
        [],
        ["tool has neither `image:` nor `build:` (docker-compose.yml line 2); give compose_app_services.tool.image"],
        id="no-image-refused",
    ),
]


@pytest.mark.parametrize("services_yaml, settings, service, expected, report, refused", CASES)
def test_override_fragments(services_yaml, settings, service, expected, report, refused):
    result = adopt(services_yaml, settings)
    got = result["override"]["services"][service]
    assert next(iter(got)) == "image" or "image" not in got
    assert list(got)[1:] == sorted(list(got)[1:]) if "image" in got else list(got) == sorted(got)
    for key, value in expected.items():
        if value is None:
            assert key not in got, (key, got)
        else:
            assert got[key] == value, (key, got)
    for line in report:
        assert any(line in seen for seen in result["report"]), (line, result["report"])
    for line in refused:
        assert any(line in seen for seen in result["refused"]), (line, result["refused"])
    if not refused:
        assert result["refused"] == []
    assert all(line.split(": ", 1)[0] in result["override"]["services"] for line in result["report"])


PLATFORM = """\
# An astron-agent-like platform, as its vendor ships it.
x-common: &common
  restart: unless-stopped
  networks: [platform]

services:
  mysql:
    <<: *common
    image: mysql:8.4
    container_name: astron-mysql
    environment:
      MYSQL_ROOT_PASSWORD: 123456
      MYSQL_DATABASE: astron
    volumes:
      - ./mysql/schema.sql:/docker-entrypoint-initdb.d/schema.sql:ro
      - mysql-data:/var/lib/mysql
    healthcheck:
      test: ["CMD", "mysqladmin", "ping", "-h", "localhost", "-p$$MYSQL_ROOT_PASSWORD"]
      interval: 10s
      timeout: 5s
      retries: 10
  redis:
    <<: *common
    image: redis:7.2
    container_name: astron-redis
    command: redis-server --appendonly yes
    ports:
      - 6379:6379
  minio:
    <<: *common
    image: minio/minio:RELEASE.2024-05-01T01-11-10Z
    command: server /data --console-address ":9001"
    environment:
      MINIO_ROOT_USER: minioadmin
      MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-minioadmin123}
    ports:
      - "9000:9000"
      - "9001:9001"
    volumes:
      - ${DOCKER_VOLUME_DIRECTORY:-.}/volumes/minio:/data
  backend:
    <<: *common
    build:
      context: ./backend
      dockerfile: Dockerfile
    image: astron/backend
    container_name: agentchat-backend
    ports:
      - "${BACKEND_PORT:-7860}:7860"
    environment:
      DATABASE_URL: mysql+pymysql://root:123456@mysql:3306/astron
      REDIS_URL: redis://redis:6379/0
      OPENAI_API_KEY: sk-test-not-a-real-key-000
      LOG_LEVEL: info
    depends_on:
      mysql:
        condition: service_healthy
      redis:
        condition: service_healthy
      minio:
        condition: service_started
  frontend:
    <<: *common
    image: astron/frontend:1.3.0
    container_name: agentchat-frontend
    ports:
      - "80:80"
    depends_on:
      - backend

networks:
  platform: {}
volumes:
  mysql-data: {}
"""
SECRET_VALUES = ("123456", "minioadmin123", "sk-test-not-a-real-key-000")
PLATFORM_SETTINGS = {
    "services": {"frontend": {"preset": "frontend"}},
    "secret_names": ["MYSQL_ROOT_PASSWORD", "MINIO_ROOT_PASSWORD", "DATABASE_URL", "OPENAI_API_KEY"],
    "env": {"DOCKER_VOLUME_DIRECTORY": "/srv/astron"},
    "logging": LOGGING,
    "healthcheck_overrides": {"interval": "2s"},
    "builds": {"backend": "registry.example.com/astron/backend:3f2a9c1"},
}


def platform(settings=None):
    return compose_adopt(
        [{"name": "docker-compose.yml", "text": PLATFORM}], "astron", PRESETS, settings or PLATFORM_SETTINGS
    )


def test_a_whole_platform_file_end_to_end():
    result = platform()
    assert result["refused"] == []
    assert result["roles"] == {
        "backend": "web",
        "frontend": "web",
        "minio": "worker",
        "mysql": "stateful",
        "redis": "stateful",
    }
    assert result["presets"] == {
        "backend": "web",
        "frontend": "frontend",
        "minio": "",
        "mysql": "mysql",
        "redis": "redis",
    }
    assert result["web"] == {"backend": 7860, "frontend": 80}
    doc = result["override"]
    assert list(doc) == ["name", "services"] and doc["name"] == "astron"
    assert list(doc["services"]) == sorted(doc["services"])
    backend = doc["services"]["backend"]
    assert list(backend) == [
        "image", "build", "container_name", "environment", "healthcheck", "labels", "logging", "ports",
    ]  # fmt: skip
    assert backend["image"] == "registry.example.com/astron/backend:3f2a9c1"
    assert backend["build"] == RESET and backend["container_name"] == RESET
    assert backend["ports"] == override("127.0.0.1::7860")
    assert backend["environment"] == {
        "DATABASE_URL": "${DATABASE_URL:?DATABASE_URL is missing from .env}",
        "OPENAI_API_KEY": "${OPENAI_API_KEY:?OPENAI_API_KEY is missing from .env}",
    }
    assert backend["healthcheck"]["interval"] == "2s"
    assert "http://127.0.0.1:7860/health" in backend["healthcheck"]["test"][1]
    assert backend["labels"] == {"io.opsbook.port": "7860", "io.opsbook.project": "astron", "io.opsbook.role": "web"}
    mysql = doc["services"]["mysql"]
    # The file's own health check stays; compose_app_healthcheck_overrides is merged over it.
    assert "container_name" not in mysql and mysql["healthcheck"] == {"interval": "2s"} and "volumes" not in mysql
    assert mysql["environment"] == {
        "MYSQL_ROOT_PASSWORD": "${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is missing from .env}"
    }
    assert doc["services"]["redis"]["ports"] == override("127.0.0.1:6379:6379")
    assert doc["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert doc["services"]["minio"]["ports"] == override("127.0.0.1:9000:9000", "127.0.0.1:9001:9001")
    assert "environment" not in doc["services"]["minio"]  # its password is a reference to a secret
    frontend = doc["services"]["frontend"]
    assert frontend["container_name"] == RESET and frontend["ports"] == override("127.0.0.1::80")
    report = result["report"]
    for line in (
        "backend: built from compose_app_build.backend, tagged registry.example.com/astron/backend:3f2a9c1",
        "backend: container_name agentchat-backend removed so two replicas can run during an upgrade",
        "backend: port 7860 (was published on 0.0.0.0:7860) now on 127.0.0.1 with an ephemeral host port; "
        "Nginx routes to it",
        "backend: health check added from preset web (GET /health on 7860)",
        "backend: DATABASE_URL moved to the 0600 .env (the inline value in docker-compose.yml line 51 is no longer "
        "used)",
        "frontend: health check added from preset frontend (GET / on 80)",
        "mysql: health check: the file's own, with interval 2s from compose_app_healthcheck_overrides",
        "mysql: MYSQL_ROOT_PASSWORD moved to the 0600 .env (the inline value in docker-compose.yml line 12 is no "
        "longer used)",
        "redis: port 6379 was published on every address; now on 127.0.0.1:6379 only",
        "redis: health check added from preset redis (redis-cli ping)",
        "minio: no health check",
        "minio: json-file log rotation 50m x 5",
    ):
        assert any(seen.startswith(line) for seen in report), (line, report)
    assert not any("LOG_LEVEL" in line or "REDIS_URL" in line or "uses ${" in line for line in report)


def test_the_platform_without_its_secrets_is_refused_and_says_what_to_set():
    result = platform(dict(PLATFORM_SETTINGS, secret_names=[], builds={}))
    assert result["refused"] == [
        "backend has `build:` (docker-compose.yml line 43): set compose_app_build.backend to {source: git, repo: "
        "..., ref: ...} or {source: dir, src: ...} to build it on the host, or {source: image, image: "
        "registry/name:tag} to run an image you pushed",
        "backend: environment DATABASE_URL holds a password in a URL written inline in docker-compose.yml line 51; "
        "set compose_app_secrets.DATABASE_URL (compose_app moves it into the 0600 .env) or write ${DATABASE_URL} in "
        "the file",
        "backend: environment OPENAI_API_KEY is written inline in docker-compose.yml line 53; set "
        "compose_app_secrets.OPENAI_API_KEY (compose_app moves it into the 0600 .env) or write ${OPENAI_API_KEY} in "
        "the file",
        "minio: environment MINIO_ROOT_PASSWORD is written inline in docker-compose.yml line 35; set "
        "compose_app_secrets.MINIO_ROOT_PASSWORD (compose_app moves it into the 0600 .env) or write "
        "${MINIO_ROOT_PASSWORD} in the file",
        "mysql: environment MYSQL_ROOT_PASSWORD is written inline in docker-compose.yml line 12; set "
        "compose_app_secrets.MYSQL_ROOT_PASSWORD (compose_app moves it into the 0600 .env) or write "
        "${MYSQL_ROOT_PASSWORD} in the file",
    ]


@pytest.mark.parametrize("settings", [PLATFORM_SETTINGS, dict(PLATFORM_SETTINGS, secret_names=[], builds={})])
def test_secret_values_never_appear_in_what_the_filter_returns(settings):
    result = platform(settings)
    text = json.dumps(result) + compose_override_yaml(result["override"], "header")
    for value in SECRET_VALUES:
        assert value not in text


def test_the_emitted_yaml_parses_with_the_tags_and_the_upgrade_can_edit_its_images():
    doc = platform()["override"]
    text = compose_override_yaml(doc, "Managed by opsbook.stack.compose_app.\nEdit the inventory.")
    assert text.startswith("# Managed by opsbook.stack.compose_app.\n# Edit the inventory.\nname: astron\n")
    assert yaml.load(text, Loader=_TagLoader) == doc
    assert "    build: !reset null\n    container_name: !reset null\n" in text
    assert "    ports: !override\n      - 127.0.0.1::7860\n" in text
    assert "      MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:?MYSQL_ROOT_PASSWORD is missing from .env}\n" in text
    for name, svc in doc["services"].items():
        assert "\n  %s:\n    image: %s\n" % (name, svc["image"]) in text
        edited = set_service_image(text, name, "registry.example.com/%s:9.9" % name)
        assert yaml.load(edited, Loader=_TagLoader)["services"][name]["image"] == "registry.example.com/%s:9.9" % name
        assert edited.replace("registry.example.com/%s:9.9" % name, svc["image"], 1) == text


def test_strings_yaml_would_read_as_other_types_are_quoted_and_dollars_stay():
    doc = {
        "name": "demo",
        "services": {
            "web": {
                "image": "reg/web:1.0",
                "labels": {"a": "5", "b": "true", "c": "1.0", "d": "yes", "e": "0600", "f": "x$y", "g": "null"},
                "environment": {"K": "${K:?K is missing from .env}"},
            }
        },
    }
    text = compose_override_yaml(doc)
    for line in ("a: '5'", "b: 'true'", "c: '1.0'", "d: 'yes'", "e: '0600'", "f: x$y", "g: 'null'"):
        assert line in text
    assert yaml.safe_load(text) == doc
    assert "K: ${K:?K is missing from .env}" in text


def test_later_files_override_earlier_ones_and_messages_name_the_file():
    base = "services:\n  api:\n    image: reg/api:1.0\n    ports: ['8000:8000']\n"
    local = "services:\n  api:\n    environment:\n      API_TOKEN: abcdefghijklmnop\n    ports: ['9000:9000']\n"
    result = compose_adopt(
        [{"name": "docker-compose.yml", "text": base}, {"name": "docker-compose.override.yml", "text": local}],
        "demo",
        PRESETS,
    )
    assert result["override"]["services"]["api"]["ports"] == override("127.0.0.1::8000")
    assert "api: port 9000:9000 (published on 0.0.0.0:9000) is no longer published" in result["report"]
    assert result["refused"] == [
        "api: environment API_TOKEN is written inline in docker-compose.override.yml line 4; set "
        "compose_app_secrets.API_TOKEN (compose_app moves it into the 0600 .env) or write ${API_TOKEN} in the file"
    ]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"services": {"web": {"imgae": "x"}}}, "compose_app_services.web: unknown keys ['imgae']; known keys: "),
        ({"services": {"ghost": {"port": 80}}}, "compose_app_services.ghost: no service ghost in docker-compose.yml"),
        ({"services": {"web": {"preset": "nope"}}}, "compose_app_services.web: preset 'nope' is not one of"),
        ({"services": {"web": {"role": "db"}}}, "compose_app_services.web: role 'db' is not one of web, stateful"),
        ({"services": {"web": {"port": "http"}}}, "compose_app_services.web: port must be a number from 1 to 65535"),
        ({"services": {"web": {"tag": "bad tag"}}}, "compose_app_services.web: tag: 'bad tag' is not a valid"),
        ({"services": {"web": {"role": "worker", "healthcheck": {"interval": "5s"}}}}, "healthcheck needs a 'test'"),
        ({"builds": {"ghost": "reg/ghost:1"}}, "compose_app_build.ghost: no service ghost in docker-compose.yml"),
        ({"secret_names": ["not a name"]}, "'not a name' is not a variable name"),
    ],
)
def test_bad_hints_raise_naming_the_key(settings, message):
    with pytest.raises(AnsibleFilterError) as err:
        adopt("web:\n  image: reg/web:1.0\n  ports: ['8000:8000']\n", settings)
    assert message in str(err.value)


def test_hints_unknown_keys_list_the_known_ones():
    with pytest.raises(AnsibleFilterError) as err:
        adopt("web:\n  image: reg/web:1.0\n", {"services": {"web": {"ports": ["80"]}}})
    assert "known keys: health_path, healthcheck, image, labels, port, preset, replicas, role, tag" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- just\n- a list\n", "docker-compose.yml is not a Compose file: it needs a top-level mapping with a"),
        ("version: '3'\n", "docker-compose.yml is not a Compose file"),
        ("services:\n  - web\n", "docker-compose.yml is not a Compose file"),
        ("services:\n  db:\n    environment:\n      PASSWORD: 'hunter2-secret\n", "docker-compose.yml"),
    ],
)
def test_files_that_are_not_compose_files_are_named(text, message):
    with pytest.raises(AnsibleFilterError) as err:
        compose_adopt([{"name": "docker-compose.yml", "text": text}], "demo", PRESETS)
    assert message in str(err.value)
    assert "hunter2" not in str(err.value)


def test_replicas_only_for_web_services_and_bad_project_names():
    result = adopt("db:\n  image: redis:7\n", {"services": {"db": {"replicas": 2}}})
    assert result["refused"] == [
        "db: compose_app_services.db.replicas > 1 only for stateless web services (this one is stateful)"
    ]
    with pytest.raises(AnsibleFilterError, match="compose_app_project 'My App'"):
        adopt("db:\n  image: redis:7\n", project="My App")


def test_compose_tag_and_the_filters_are_registered():
    assert compose_tag("!override", [1]) == {"__compose_tag__": "!override", "value": [1]}
    with pytest.raises(AnsibleFilterError):
        compose_tag("!merge")
    filters = FilterModule().filters()
    assert filters["compose_adopt"] is compose_adopt and filters["compose_override_yaml"] is compose_override_yaml


def _compose_cli():
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="needs the docker compose CLI (`docker compose version` fails)")
def test_docker_compose_merges_the_pair_the_way_the_override_says(tmp_path):
    result = platform()
    (tmp_path / "docker-compose.yml").write_text(PLATFORM)
    (tmp_path / "compose.yaml").write_text(compose_override_yaml(result["override"], "test"))
    (tmp_path / ".env").write_text(
        "MYSQL_ROOT_PASSWORD=a\nMINIO_ROOT_PASSWORD=b\nDATABASE_URL=c\nOPENAI_API_KEY=d\n"
        "DOCKER_VOLUME_DIRECTORY=/srv/astron\n"
    )
    proc = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "-f", "compose.yaml", "config", "--format", "json"],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    for name in ("backend", "frontend"):
        web = services[name]
        assert "container_name" not in web and "build" not in web
        assert [(p["host_ip"], p.get("published")) for p in web["ports"]] == [("127.0.0.1", None)]
        assert web["labels"]["io.opsbook.role"] == "web"
    assert services["backend"]["image"] == "registry.example.com/astron/backend:3f2a9c1"
    assert services["backend"]["ports"][0]["target"] == 7860
    assert services["backend"]["environment"]["DATABASE_URL"] == "c"
    assert services["mysql"]["container_name"] == "astron-mysql"
    assert services["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == "a"
    assert services["mysql"]["healthcheck"]["interval"] == "2s"  # compose_app_healthcheck_overrides
    assert [(p["host_ip"], p["published"]) for p in services["redis"]["ports"]] == [("127.0.0.1", "6379")]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert {p["host_ip"] for p in services["minio"]["ports"]} == {"127.0.0.1"}
    assert services["backend"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert services["minio"]["logging"] == LOGGING


class _Text(str):
    """Like Ansible's tagged and unsafe strings: a subclass the SafeDumper has no representer for."""


class _Number(int):
    """Like Ansible's tagged integers."""


def test_ansible_subclasses_of_plain_types_are_written_as_the_plain_types():
    doc = {"name": _Text("demo"), "services": {_Text("web"): {"image": _Text("reg/web:1.0"), "x": [_Number(3)]}}}
    assert compose_override_yaml(doc) == "name: demo\nservices:\n  web:\n    image: reg/web:1.0\n    x:\n      - 3\n"
