# -*- coding: utf-8 -*-
# Copyright: opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the Compose project of compose_app from inventory variables (the filter compose_project)."""

from __future__ import annotations

__metaclass__ = type

import copy
import re
from typing import NoReturn

from ansible.errors import AnsibleFilterError

SERVICE_KEYS = {
    "image",
    "tag",
    "preset",
    "port",
    "replicas",
    "command",
    "entrypoint",
    "environment",
    "secret_env",
    "env_files",
    "volumes",
    "depends_on",
    "healthcheck",
    "health_path",
    "mem_limit",
    "cpus",
    "stop_grace_period",
    "restart",
    "networks",
    "labels",
    "user",
    "ports",
    "stateful",
    "otlp",
    "sentry",
    "enabled",
}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _fail(service: object, msg: str) -> NoReturn:
    raise AnsibleFilterError("compose_app_services.%s: %s" % (service, msg))


def _escape(value):
    """Plain environment values are literal: '$' must not start a Compose interpolation."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("$", "$$")


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _healthcheck(name, spec, preset, settings):
    health = _merge(preset.get("healthcheck") or {}, spec.get("healthcheck") or {})
    if not health or health.get("disable"):
        return health or None
    health = _merge(health, settings.get("healthcheck_overrides") or {})
    port = spec.get("port", preset.get("port"))
    path = spec.get("health_path", preset.get("health_path", "/health"))
    test = health.get("test")
    if isinstance(test, list):
        health["test"] = [str(t).replace("{port}", str(port)).replace("{path}", str(path)) for t in test]
    elif isinstance(test, str):
        health["test"] = test.replace("{port}", str(port)).replace("{path}", str(path))
    else:
        _fail(name, "healthcheck needs a 'test' (a list like [CMD, ...] or a CMD-SHELL string)")
    return health


def _service(name, spec, presets, services, settings):
    unknown = set(spec) - SERVICE_KEYS
    if unknown:
        _fail(name, "unknown keys %s; known keys: %s" % (sorted(unknown), ", ".join(sorted(SERVICE_KEYS))))
    preset_name = spec.get("preset", "none")
    if preset_name not in presets:
        _fail(name, "preset '%s' is not one of %s" % (preset_name, ", ".join(sorted(presets))))
    preset = presets[preset_name] or {}
    if not spec.get("image"):
        _fail(name, "'image' is required (e.g. registry.example.com/backend)")
    if not spec.get("tag") and "@" not in spec["image"]:
        _fail(name, "'tag' is required: pin a version (e.g. tag: \"1.4.2\") instead of relying on latest")
    image = spec["image"] if "@" in spec["image"] else "%s:%s" % (spec["image"], spec["tag"])

    web = preset.get("web", False)
    stateful = spec.get("stateful", preset.get("stateful", False))
    svc = {"image": image, "restart": spec.get("restart", preset.get("restart", "unless-stopped"))}
    labels = {
        "io.opsbook.project": settings.get("project"),
        "io.opsbook.role": "web" if web else ("stateful" if stateful else "worker"),
    }
    for key in ("command", "entrypoint", "user", "mem_limit", "cpus"):
        if spec.get(key) is not None:
            svc[key] = spec[key]
    svc["stop_grace_period"] = spec.get("stop_grace_period", preset.get("stop_grace_period", "30s"))

    env = {}
    env.update({k: _escape(v) for k, v in (preset.get("environment") or {}).items()})
    if spec.get("otlp", preset.get("otlp", False)):
        env.update({k: _escape(v) for k, v in (settings.get("otlp") or {}).items()})
    env.update({k: _escape(v) for k, v in (spec.get("environment") or {}).items()})
    known_secrets = set(settings.get("secret_names") or [])
    secret_env = list(spec.get("secret_env") or [])
    if spec.get("sentry", preset.get("sentry", False)) and "SENTRY_DSN" in known_secrets:
        secret_env.append("SENTRY_DSN")
    for secret in secret_env:
        target, _sep, source = str(secret).partition("=")
        source = source or target
        if not ENV_NAME_RE.match(target) or not ENV_NAME_RE.match(source):
            _fail(name, "secret_env entry '%s' is not NAME or NAME=SECRET_NAME" % secret)
        if source not in known_secrets:
            _fail(name, "secret_env names '%s', which compose_app_secrets does not define" % source)
        # The value lives only in the 0600 .env file; compose.yaml holds the reference.
        env[target] = "${%s:?%s is missing from .env}" % (source, source)
    if env:
        svc["environment"] = dict(sorted(env.items()))
    if spec.get("env_files"):
        svc["env_file"] = list(spec["env_files"])

    if web:
        port = spec.get("port", preset.get("port"))
        if not port:
            _fail(name, "a web service needs 'port' (the container port Nginx proxies to)")
        # Each replica on loopback with an ephemeral host port; Nginx upstreams list the healthy ones.
        svc["ports"] = ["127.0.0.1::%s" % port]
        labels["io.opsbook.port"] = str(port)
        replicas = int(spec.get("replicas", 1))
        if replicas < 1:
            _fail(name, "replicas must be at least 1")
        svc["deploy"] = {"replicas": replicas}
    elif spec.get("replicas") not in (None, 1):
        _fail(name, "replicas > 1 only for stateless web services (preset: web)")
    if spec.get("ports"):
        bad = [p for p in spec["ports"] if not str(p).startswith("127.0.0.1:")]
        if bad:
            _fail(
                name,
                "ports %s would listen on every address; publish on 127.0.0.1 and let Nginx face the network" % bad,
            )
        svc.setdefault("ports", []).extend(spec["ports"])

    volumes = list(preset.get("volumes") or []) if not spec.get("volumes") else list(spec["volumes"])
    if volumes:
        svc["volumes"] = [v.replace("{service}", name) for v in volumes]

    health = _healthcheck(name, spec, preset, settings)
    if health:
        svc["healthcheck"] = health

    depends = {}
    for dep in spec.get("depends_on") or []:
        if dep not in services:
            _fail(name, "depends_on '%s', which is not a service of this project" % dep)
        dep_spec = services[dep]
        dep_preset = presets.get(dep_spec.get("preset", "none")) or {}
        healthy = bool(dep_spec.get("healthcheck") or dep_preset.get("healthcheck"))
        depends[dep] = {"condition": "service_healthy" if healthy else "service_started"}
    if depends:
        svc["depends_on"] = depends

    logging = settings.get("logging")
    if logging:
        svc["logging"] = copy.deepcopy(logging)
    if spec.get("networks"):
        svc["networks"] = list(spec["networks"])
    labels.update({str(k): str(v) for k, v in (spec.get("labels") or {}).items()})
    svc["labels"] = dict(sorted(labels.items()))
    return svc


def _named_volumes(services):
    names = set()
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = str(vol).split(":", 1)[0]
            if src and not src.startswith(("/", ".", "~", "$")):
                names.add(src)
    return sorted(names)


def compose_project(services, project, presets, settings=None):
    if not isinstance(services, dict) or not services:
        raise AnsibleFilterError("compose_app_services must be a non-empty mapping of service name to definition")
    if not NAME_RE.match(str(project)):
        raise AnsibleFilterError("compose_app_project '%s' must be lower case letters, digits, '-' or '_'" % project)
    settings = dict(settings or {}, project=project)
    enabled = {n: s or {} for n, s in services.items() if (s or {}).get("enabled", True)}
    for name in enabled:
        if not NAME_RE.match(name):
            raise AnsibleFilterError(
                "compose_app_services: service name '%s' must be lower case letters, digits, '-' or '_'" % name
            )
    rendered = {name: _service(name, spec, presets, enabled, settings) for name, spec in sorted(enabled.items())}
    doc = {"name": project, "services": rendered}
    volumes = _named_volumes(rendered)
    if volumes:
        doc["volumes"] = {v: {} for v in volumes}
    networks = sorted({n for svc in rendered.values() for n in svc.get("networks", [])})
    if networks:
        doc["networks"] = {n: {} for n in networks}
    return doc


def web_services(services, presets):
    """Names and container ports of the enabled stateless web services (what Nginx fronts)."""
    out = {}
    for name, given in (services or {}).items():
        spec = given or {}
        preset = presets.get(spec.get("preset", "none")) or {}
        if spec.get("enabled", True) and preset.get("web"):
            port = spec.get("port", preset.get("port"))
            if port is None:
                _fail(name, "a web service needs a port (neither the service nor its preset sets one)")
            out[name] = int(port)
    return out


class FilterModule:
    def filters(self):
        return {"compose_project": compose_project, "compose_web_services": web_services}
