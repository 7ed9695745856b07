# -*- coding: utf-8 -*-
# Copyright: opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the Compose project of compose_app from inventory variables (the filter compose_project), or the override
file that adopts an operator's own docker-compose.yml (the filters compose_adopt and compose_override_yaml)."""

from __future__ import annotations

__metaclass__ = type

import copy
import re
from typing import NoReturn

import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import split_image, target_image

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


def _secret_ref(name):
    """The reference to a secret of the 0600 .env file: Compose stops with this message if the file lacks it."""
    return "${%s:?%s is missing from .env}" % (name, name)


def _merge(base, override, append=()):
    """base with override deep-merged over it: mappings merge, anything else from override wins, except lists under
    a key in `append` (Compose's files: ports and volumes of a later file add to the earlier ones)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, append)
        elif key in append and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + copy.deepcopy(value)
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
        env[target] = _secret_ref(source)
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


def _check_project(project):
    if not NAME_RE.match(str(project)):
        raise AnsibleFilterError("compose_app_project '%s' must be lower case letters, digits, '-' or '_'" % project)


def compose_project(services, project, presets, settings=None):
    if not isinstance(services, dict) or not services:
        raise AnsibleFilterError("compose_app_services must be a non-empty mapping of service name to definition")
    _check_project(project)
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


# --------------------------------------------------------------------------------------------------------
# Adopting an operator's own compose file: the override compose.yaml that runs beside it (compose_adopt), and its
# text (compose_override_yaml). Docker Compose runs `-f <their files> -f compose.yaml`.
# --------------------------------------------------------------------------------------------------------

ADOPT_HINT_KEYS = {"preset", "role", "port", "health_path", "healthcheck", "image", "tag", "replicas", "labels"}
ADOPT_ROLES = ("web", "stateful", "worker")
# Basename of an image's repository (after the last '/', before ':') -> the preset of a stateful service.
STATEFUL_IMAGES = {
    "mysql": "mysql",
    "mysql-server": "mysql",
    "mariadb": "mariadb",
    "postgres": "postgres",
    "postgresql": "postgres",
    "postgis": "postgres",
    "redis": "redis",
    "redis-stack": "redis",
    "redis-stack-server": "redis",
    "valkey": "redis",
    "keydb": "redis",
}
# Basenames of infrastructure that is neither a web service nor one of the presets' databases: a worker.
INFRA_IMAGES = frozenset(
    "minio elasticsearch opensearch rabbitmq kafka cp-kafka zookeeper cp-zookeeper etcd milvus qdrant weaviate nacos "
    "nacos-server".split()
)
# Environment names that hold a secret (upper-cased): containing one of `contains`, or ending in one of `ends`,
# unless they end in one of `not_ends` (a file, a length, an id: about a secret, not one).
SECRET_ENV_NAMES = {
    "contains": ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "ACCESS_KEY", "PRIVATE_KEY"),
    "ends": ("_KEY",),
    "not_ends": tuple(
        "_FILE _PATH _DIR _ID _NAME _USER _USERNAME _URL _URI _ENDPOINT _HOST _PORT _LENGTH _LEN _TTL _EXPIRE _EXPIRES "
        "_EXPIRY _TIMEOUT _SECONDS _MINUTES _HOURS _DAYS _ENABLED _ENABLE _HEADER _TYPE _ALGORITHM _POLICY _TOKENS "
        "_LIMIT _SIZE _COUNT".split()
    ),
}
# Values of a secret-looking name that are switches, not secrets (MYSQL_ALLOW_EMPTY_PASSWORD: "yes").
NOT_SECRET_VALUES = {"", "yes", "no", "true", "false", "on", "off", "0", "1"}
# scheme://user:password@ with a password.
URL_CREDENTIALS_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:[^\s/@]+@")
# The marker of a YAML tag in the override document (compose_tag); compose_override_yaml writes it as the tag.
COMPOSE_TAG = "__compose_tag__"
COMPOSE_TAGS = ("!reset", "!override")
_VAR_NAME_RE = re.compile(ENV_NAME_RE.pattern.lstrip("^").rstrip("$"))
_VAR_OPS = (":-", ":?", ":+", "-", "?", "+")
_WILDCARD_IPS = ("", "0.0.0.0", "::")
_PORT_RE = re.compile(r"^[0-9]+(-[0-9]+)?$")


def compose_tag(tag, value=None):
    """A value the override writes with a Compose merge tag: `!reset null` (drop the base's key) or `!override`
    (replace the base's list or mapping instead of merging with it)."""
    if tag not in COMPOSE_TAGS:
        raise AnsibleFilterError("compose tag %r is not one of %s" % (tag, ", ".join(COMPOSE_TAGS)))
    return {COMPOSE_TAG: tag, "value": value}


# -- reading the operator's files ---------------------------------------------------------------------------


def _core_schema_resolvers():
    """SafeLoader's implicit resolvers with YAML 1.2 core bool, int and float instead of YAML 1.1's."""
    core = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    resolvers = {
        first: [(tag, regexp) for tag, regexp in given if tag not in core]
        for first, given in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, regexp, firsts in (
        (core[0], r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        (core[1], r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (
            core[2],
            r"^(?:[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+0123456789.",
        ),
    ):
        for first in firsts:
            resolvers.setdefault(first, []).append((tag, re.compile(regexp)))
    return resolvers


class _AdoptLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """YAML as Compose reads it: the 1.2 core schema (`6379:6379` is a string, not a base-60 number; `yes` is a
    string, not a bool). compose_adopt gives tags it does not know (`!reset`, `!override`) their plain value."""

    yaml_implicit_resolvers = _core_schema_resolvers()


def _plain_tags(loader, node, seen):
    """Local tags (`!reset null`, `!override [...]`, another tool's) -> the tag the value has without them."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if str(node.tag).startswith("!"):
        if isinstance(node, yaml.ScalarNode):
            node.tag = loader.resolve(yaml.ScalarNode, node.value, (not node.style, False))
        elif isinstance(node, yaml.SequenceNode):
            node.tag = "tag:yaml.org,2002:seq"
        else:
            node.tag = "tag:yaml.org,2002:map"
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _plain_tags(loader, item, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _plain_tags(loader, key, seen)
            _plain_tags(loader, value, seen)


def _load_base(base):
    """(file name, root node, data) of one of the operator's files; the node keeps the line numbers."""
    if not isinstance(base, dict) or "name" not in base or not isinstance(base.get("text"), str):
        raise AnsibleFilterError("compose_adopt: each base is {name: <file name>, text: <the file's content>}")
    name = str(base["name"])
    loader = _AdoptLoader(base["text"])
    try:
        node = loader.get_single_node()
        data = None
        if node is not None:
            _plain_tags(loader, node, set())
            data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        # The problem and the line only: the exception's own text quotes the file, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        raise AnsibleFilterError(
            "%s%s is not valid YAML: %s"
            % (name, " line %d" % (mark.line + 1) if mark else "", getattr(exc, "problem", None) or type(exc).__name__)
        ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise AnsibleFilterError(
            "%s is not a Compose file: it needs a top-level mapping with a `services:` mapping" % name
        )
    return name, node, data


def _find(node, path):
    """(line, depth) of the deepest node along path: mapping keys, sequence indexes, or in a sequence the item
    that is the string or starts with it and '=' (`- KEY=value`). The last of equal keys wins, as when loading."""
    line, depth = node.start_mark.line + 1, 0
    for key in path:
        found = None
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                if isinstance(knode, yaml.ScalarNode) and knode.value == str(key):
                    found = (knode, vnode)
        elif isinstance(node, yaml.SequenceNode):
            if isinstance(key, int):
                found = (node.value[key], node.value[key]) if key < len(node.value) else None
            else:
                for item in node.value:
                    if isinstance(item, yaml.ScalarNode) and (item.value == key or item.value.startswith(key + "=")):
                        found = (item, item)
        if found is None:
            break
        line, depth, node = found[0].start_mark.line + 1, depth + 1, found[1]
    return line, depth


def _normalized(service):
    """A service as Compose merges it: environment and labels as mappings, depends_on with conditions."""
    out = dict(service or {})
    for key in ("environment", "labels"):
        if isinstance(out.get(key), list):
            mapping = {}
            for item in out[key]:
                name, sep, value = str(item).partition("=")
                mapping[name] = value if sep else None
            out[key] = mapping
    if isinstance(out.get("depends_on"), list):
        out["depends_on"] = {str(dep): {"condition": "service_started"} for dep in out["depends_on"]}
    return out


# -- interpolation, for the analysis only (the override never writes a resolved value back) ----------------


def _parse_refs(text):
    """Compose interpolation: a list of ("lit", text) and ("var", name, op, parsed argument, raw)."""
    parts: list[tuple] = []
    literal: list[str] = []

    def flush():
        if literal:
            parts.append(("lit", "".join(literal)))
            literal.clear()

    index, size = 0, len(text)
    while index < size:
        char = text[index]
        following = text[index + 1] if index + 1 < size else ""
        if char != "$" or not following:
            literal.append(char)
            index += 1
        elif following == "$":
            literal.append("$")
            index += 2
        elif following == "{":
            depth, end = 1, index + 2
            while end < size and depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            body = text[index + 2 : end - 1]
            match = _VAR_NAME_RE.match(body)
            rest = body[match.end() :] if match else ""
            op = next((o for o in _VAR_OPS if rest.startswith(o)), "")
            if depth or not match or (rest and not op):
                literal.append(text[index:end])  # not an interpolation Compose understands: read it as text
            else:
                flush()
                arg = _parse_refs(rest[len(op) :]) if op else []
                parts.append(("var", match.group(0), op, arg, text[index:end]))
            index = end
        else:
            match = _VAR_NAME_RE.match(text, index + 1)
            if match:
                flush()
                parts.append(("var", match.group(0), "", [], "$" + match.group(0)))
                index = match.end()
            else:
                literal.append(char)
                index += 1
    flush()
    return parts


class _Vars:
    """The interpolation variables: compose_app_env (values known), compose_app_secrets (set, values unknown)."""

    def __init__(self, env, secrets):
        self.env = {str(k): ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in env.items()}
        self.secrets = set(secrets)

    def known(self, name):
        return name in self.env or name in self.secrets

    def resolve(self, value):
        """The value Compose would read, a secret's value as ''; non-strings as they are."""
        if not isinstance(value, str):
            return value
        return self._resolve(_parse_refs(value))

    def _resolve(self, parts):
        out = []
        for part in parts:
            if part[0] == "lit":
                out.append(part[1])
                continue
            name, op, arg = part[1], part[2], part[3]
            is_set = self.known(name)
            value = self.env.get(name, "")
            non_empty = name in self.secrets or value != ""
            if op == ":-":
                out.append(value if non_empty else self._resolve(arg))
            elif op == "-":
                out.append(value if is_set else self._resolve(arg))
            elif op == ":+":
                out.append(self._resolve(arg) if non_empty else "")
            elif op == "+":
                out.append(self._resolve(arg) if is_set else "")
            else:
                out.append(value)
        return "".join(out)

    def literal(self, parts):
        """The text the file itself gives (a default included), without what a secret's reference brings."""
        out = []
        for part in parts:
            if part[0] == "lit":
                out.append(part[1])
            elif part[1] not in self.secrets and part[2] in (":-", "-", ":+", "+"):
                out.append(self.literal(part[3]))
        return "".join(out)


def _strings(value, path=()):
    """(path, string) of every string in a service definition, keys of mappings excluded."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, path + (index,))


def _looks_secret(name):
    upper = str(name).upper()
    if upper.endswith(SECRET_ENV_NAMES["not_ends"]):
        return False
    return any(m in upper for m in SECRET_ENV_NAMES["contains"]) or upper.endswith(SECRET_ENV_NAMES["ends"])


# -- ports ---------------------------------------------------------------------------------------------------


def _split_port(text):
    """'${P:-80}:80' -> ['${P:-80}', '80']: split on ':' outside ${...} and [...] (an IPv6 address)."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        if char == ":" and not depth:
            tokens.append("".join(current))
            current = []
        else:
            current.append(char)
    tokens.append("".join(current))
    return tokens


def _port(entry, variables):
    """A published port, short or long syntax: {ip, host, container, protocol, range, raw_host, raw_container}
    with the resolved values (raw_*: as written, for the rewrite onto 127.0.0.1). ValueError when unreadable."""
    if isinstance(entry, dict):
        if entry.get("target") is None:
            raise ValueError("a long-syntax port needs `target`")
        raw_host = "" if entry.get("published") is None else str(entry["published"])
        raw_container = str(entry["target"])
        ip = str(variables.resolve(entry.get("host_ip") or ""))
        protocol = str(entry.get("protocol") or "")
    else:
        tokens = _split_port(str(entry))
        raw_container = tokens[-1]
        raw_host = tokens[-2] if len(tokens) >= 2 else ""
        ip = variables.resolve(":".join(tokens[:-2])) if len(tokens) >= 3 else ""
        raw_container, sep, protocol = raw_container.partition("/")
        if sep and not protocol:
            raise ValueError("no protocol after '/'")
    host, container = str(variables.resolve(raw_host)), str(variables.resolve(raw_container))
    if not _PORT_RE.match(container) or (host and not _PORT_RE.match(host)):
        raise ValueError("expected [[IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]")
    return {
        "ip": ip.strip("[]"),
        "host": host,
        "container": container,
        "protocol": protocol,
        "range": "-" in host or "-" in container,
        "raw_host": raw_host,
        "raw_container": raw_container,
    }


def _item(entry, index):
    """How _find names a ports entry: short syntax by its text (the index differs once files merge)."""
    return index if isinstance(entry, dict) else str(entry)


def _published_on(port):
    ip = port["ip"] or "0.0.0.0"
    ip = "[%s]" % ip if ":" in ip else ip
    return "%s:%s" % (ip, port["host"]) if port["host"] else "%s with an ephemeral host port" % ip


def _loopback(entry, port):
    """The same host and container ports, published on 127.0.0.1 only (as written: variables stay variables)."""
    if isinstance(entry, dict):
        return dict(entry, host_ip="127.0.0.1")
    protocol = "/" + port["protocol"] if port["protocol"] else ""
    return "127.0.0.1:%s:%s%s" % (port["raw_host"], port["raw_container"], protocol)


# -- the analysis ----------------------------------------------------------------------------------------------


def _describe_test(test):
    if isinstance(test, list):
        words = [str(w) for w in test if str(w) not in ("CMD", "CMD-SHELL")]
        text = " ".join(words)
    else:
        text = str(test)
    return text if len(text) <= 80 else text[:77] + "..."


def _health_disabled(health):
    if not isinstance(health, dict):
        return False
    test = health.get("test")
    return bool(health.get("disable")) or test == "NONE" or (isinstance(test, list) and test[:1] == ["NONE"])


def _image_family(image):
    """('stateful', preset) / ('worker', '') for the images the collection knows by name, else None."""
    if not image:
        return None
    basename = str(image).split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0].lower()
    if basename in STATEFUL_IMAGES:
        return "stateful", STATEFUL_IMAGES[basename]
    if basename in INFRA_IMAGES:
        return "worker", ""
    return None


def _check_hints(hints, presets, names, files):
    if hints is None:
        return {}
    if not isinstance(hints, dict):
        raise AnsibleFilterError("compose_app_services must be a mapping of service name to hints")
    out = {}
    for svc, given in hints.items():
        if not isinstance(given or {}, dict):
            _fail(svc, "hints must be a mapping (known keys: %s)" % ", ".join(sorted(ADOPT_HINT_KEYS)))
        hint = dict(given or {})
        unknown = set(hint) - ADOPT_HINT_KEYS
        if unknown:
            _fail(svc, "unknown keys %s; known keys: %s" % (sorted(unknown), ", ".join(sorted(ADOPT_HINT_KEYS))))
        if svc not in names:
            _fail(svc, "no service %s in %s (its services: %s)" % (svc, files, ", ".join(sorted(names))))
        if "preset" in hint and hint["preset"] not in presets:
            _fail(svc, "preset '%s' is not one of %s" % (hint["preset"], ", ".join(sorted(presets))))
        if "role" in hint and hint["role"] not in ADOPT_ROLES:
            _fail(svc, "role '%s' is not one of %s" % (hint["role"], ", ".join(ADOPT_ROLES)))
        for key, low, high in (("port", 1, 65535), ("replicas", 1, 1000)):
            if key in hint:
                value = hint[key]
                if isinstance(value, bool) or not str(value).isdigit() or not low <= int(value) <= high:
                    _fail(svc, "%s must be a number from %d to %d, not %r" % (key, low, high, value))
                hint[key] = int(value)
        for key, kind in (("healthcheck", dict), ("labels", dict), ("image", str), ("tag", str), ("health_path", str)):
            if key in hint and not isinstance(hint[key], kind):
                _fail(svc, "%s must be a %s" % (key, "mapping" if kind is dict else "string"))
        out[svc] = hint
    return out


class _Adoption:
    """One compose_adopt call: the merged services of the files, the settings, the report and the refusals."""

    def __init__(self, bases, project, presets, settings):
        if not isinstance(bases, list) or not bases:
            raise AnsibleFilterError("compose_adopt: give the operator's compose files, a list of {name, text}")
        _check_project(project)
        self.files = [_load_base(base) for base in bases]
        merged: dict = {}
        for _name, _node, data in self.files:
            services = {str(k): _normalized(v) for k, v in data["services"].items()}
            merged = _merge(merged, services, append=("ports", "volumes"))
        self.services = merged
        self.project = str(project)
        self.presets = presets or {}
        self.settings = dict(settings or {})
        secret_names = list(self.settings.get("secret_names") or [])
        env = dict(self.settings.get("env") or {})
        for name in list(env) + secret_names:
            if not ENV_NAME_RE.match(str(name)):
                raise AnsibleFilterError("compose_app_env/compose_app_secrets: '%s' is not a variable name" % name)
        self.vars = _Vars(env, secret_names)
        self.builds = dict(self.settings.get("builds") or {})
        for svc, image in self.builds.items():
            if svc not in merged:
                raise AnsibleFilterError("compose_app_build.%s: no service %s in %s" % (svc, svc, self.file_names()))
            if not isinstance(image, str) or not image:
                raise AnsibleFilterError("compose_app_build.%s: the image it was built as is missing" % svc)
        self.hints = _check_hints(self.settings.get("services"), self.presets, merged, self.file_names())
        self.report: list[str] = []
        self.refused: list[str] = []
        self.healthy: dict[str, bool] = {}

    def file_names(self):
        return ", ".join(name for name, _node, _data in self.files)

    def where(self, *path):
        """'docker-compose.yml line 14': the last file that defines path (else the one that gets closest)."""
        best = None
        for name, node, _data in self.files:
            line, depth = _find(node, path)
            if best is None or depth >= best[2]:
                best = (name, line, depth)
        return "%s line %d" % best[:2] if best else "?"

    # -- one service ------------------------------------------------------------------------------------------

    def service(self, name):
        svc = self.services[name]
        hint = self.hints.get(name, {})
        out: dict = {}

        def say(line):
            self.report.append("%s: %s" % (name, line))

        if not NAME_RE.match(name):
            self.refused.append(
                "%s (%s): a service name must be lower case letters, digits, '-' or '_' (compose_app names labels, "
                "upstreams and the journal after it)" % (name, self.where("services", name))
            )
        image = self.image(name, svc, hint, out, say)
        role, preset_name = self.role(svc, hint, image)
        labels = {"io.opsbook.project": self.project, "io.opsbook.role": role}
        port = None
        if role == "web":
            port = self.web(name, svc, hint, out, say)
            if port is not None:
                labels["io.opsbook.port"] = str(port)
        else:
            self.not_web(name, svc, hint, role, out, say)
        health = self.health(name, svc, role, hint, preset_name, port, say)
        if health is not None:
            out["healthcheck"] = health
        self.secrets(name, svc, out, say)
        self.logging(svc, out, say)
        labels.update({str(k): str(v) for k, v in (hint.get("labels") or {}).items()})
        out["labels"] = dict(sorted(labels.items()))
        ordered = {"image": out.pop("image")} if "image" in out else {}
        ordered.update(sorted(out.items()))
        return ordered, role, preset_name, port

    def image(self, name, svc, hint, out, say):
        raw = svc.get("image")
        has_build = svc.get("build") is not None
        built = self.builds.get(name)
        ref = ""
        if hint.get("image"):
            ref = hint["image"]
        elif built:
            ref = built
        elif raw:
            missing = sorted(
                {p[1] for p in _parse_refs(str(raw)) if p[0] == "var" and not p[2] and not self.vars.known(p[1])}
            )
            if missing:
                self.refused.append(
                    "%s: image %s (%s) needs %s, which neither compose_app_env nor compose_app_secrets sets"
                    % (name, raw, self.where("services", name, "image"), ", ".join("${%s}" % m for m in missing))
                )
            ref = str(self.vars.resolve(str(raw)))
        if hint.get("tag"):
            if not ref:
                _fail(name, "tag needs an image to apply to: the file gives none; give image as well")
            try:
                ref = target_image(ref, hint["tag"])
            except ValueError as exc:
                _fail(name, "tag: %s" % exc)
        if has_build:
            where = self.where("services", name, "build")
            if hint.get("image") or built:
                out["build"] = compose_tag("!reset")
                if hint.get("image"):
                    say(
                        "runs %s (compose_app_services.%s.image) instead of building it; `build:` (%s) reset"
                        % (ref, name, where)
                    )
                else:
                    say("built from compose_app_build.%s, tagged %s; `build:` (%s) reset" % (name, ref, where))
            else:
                self.refused.append(
                    "%s has `build:` (%s): set compose_app_build.%s to {source: git, repo: ..., ref: ...} or "
                    "{source: dir, src: ...} to build it on the host, or {source: image, image: registry/name:tag} "
                    "to run an image you pushed" % (name, where, name)
                )
        elif built:
            say("runs %s (compose_app_build.%s)" % (ref, name))
        elif (hint.get("image") or hint.get("tag")) and raw and ref != self.vars.resolve(str(raw)):
            say("runs %s (compose_app_services.%s), not the file's %s" % (ref, name, raw))
        if not ref:
            if not has_build:
                self.refused.append(
                    "%s has neither `image:` nor `build:` (%s); give compose_app_services.%s.image"
                    % (name, self.where("services", name), name)
                )
            return ""
        out["image"] = ref
        if "@" not in ref:
            if ":" not in ref.rsplit("/", 1)[-1]:
                say("image %s has no tag (latest); pin one" % ref)
            elif split_image(ref)[1] == "latest":
                say("image %s is tagged latest; pin a version" % ref)
        return ref

    def role(self, svc, hint, image):
        family = _image_family(hint.get("image") or self.vars.resolve(svc.get("image")) or image)
        preset = self.presets.get(hint.get("preset")) or {} if hint.get("preset") else {}
        if hint.get("role"):
            role = hint["role"]
        elif preset.get("web"):
            role = "web"
        elif preset.get("stateful"):
            role = "stateful"
        elif family:
            role = family[0]
        elif svc.get("ports") or svc.get("build") is not None:
            role = "web"
        else:
            role = "worker"
        if hint.get("preset"):
            preset_name = hint["preset"]
        elif role == "web":
            preset_name = "web"
        elif role == "stateful" and family and family[1] in self.presets:
            preset_name = family[1]
        else:
            preset_name = ""
        return role, preset_name

    def ports(self, name, svc):
        """[(entry, parsed or None)] of the service's published ports; unreadable ones refused."""
        out = []
        for index, entry in enumerate(svc.get("ports") or []):
            try:
                out.append((entry, _port(entry, self.vars)))
            except ValueError as exc:
                out.append((entry, None))
                self.refused.append(
                    "%s: ports entry %s (%s) is not a port Compose publishes: %s"
                    % (name, entry, self.where("services", name, "ports", _item(entry, index)), exc)
                )
        return out

    def web(self, name, svc, hint, out, say):
        network_mode = svc.get("network_mode")
        if network_mode == "host":
            self.refused.append(
                "%s: network_mode: host (%s) binds the host's ports directly, so two replicas cannot run and Nginx "
                "cannot route to loopback ports; remove it, or mark it compose_app_services.%s.role: worker"
                % (name, self.where("services", name, "network_mode"), name)
            )
            return None
        if network_mode and network_mode not in ("bridge", "default"):
            self.refused.append(
                "%s: network_mode: %s (%s) leaves it no ports of its own for Nginx to route to; remove it, or mark "
                "it compose_app_services.%s.role: worker" % (name, network_mode, self.where("services", name), name)
            )
            return None
        if svc.get("container_name"):
            out["container_name"] = compose_tag("!reset")
            say("container_name %s removed so two replicas can run during an upgrade" % svc["container_name"])
        ports = self.ports(name, svc)
        tcp = [(entry, p) for entry, p in ports if p and p["protocol"] in ("", "tcp")]
        port = hint.get("port")
        chosen = None
        if port is None:
            if not tcp:
                if all(parsed is not None for entry, parsed in ports):  # an unreadable one is refused already
                    self.refused.append(
                        "%s: a web service needs the container port Nginx proxies to and the file publishes no TCP "
                        "port; give compose_app_services.%s.port" % (name, name)
                    )
                return None
            chosen = tcp[0][1]
            if chosen["range"]:
                self.refused.append(
                    "%s: its first port %s (%s) is a range; a web service is proxied on one port: give "
                    "compose_app_services.%s.port"
                    % (name, tcp[0][0], self.where("services", name, "ports", _item(tcp[0][0], 0)), name)
                )
                return None
            port = int(chosen["container"])
        else:
            chosen = next((p for entry, p in tcp if p["container"] == str(port)), None)
        out["ports"] = compose_tag("!override", ["127.0.0.1::%s" % port])
        was = "was published on %s" % _published_on(chosen) if chosen else "was not published"
        say("port %s (%s) now on 127.0.0.1 with an ephemeral host port; Nginx routes to it" % (port, was))
        for entry, parsed in ports:
            if parsed is not None and parsed is not chosen:
                say("port %s (published on %s) is no longer published" % (entry, _published_on(parsed)))
        if hint.get("replicas") is not None:
            out["deploy"] = {"replicas": hint["replicas"]}
        return port

    def not_web(self, name, svc, hint, role, out, say):
        if hint.get("replicas", 1) != 1:
            self.refused.append(
                "%s: compose_app_services.%s.replicas > 1 only for stateless web services (this one is %s)"
                % (name, name, role)
            )
        if svc.get("network_mode") == "host":
            say(
                "network_mode: host (%s): it listens on the host's own addresses, ports untouched"
                % self.where("services", name, "network_mode")
            )
            return
        ports = self.ports(name, svc)
        if not any(p and p["ip"] in _WILDCARD_IPS for entry, p in ports):
            return
        rewritten = []
        for entry, parsed in ports:
            if parsed is None or parsed["ip"] not in _WILDCARD_IPS:
                rewritten.append(entry)
                continue
            if _loopback(entry, parsed) in rewritten:
                continue  # "6379:6379" and "[::]:6379:6379" (both stacks): one loopback port
            rewritten.append(_loopback(entry, parsed))
            if not parsed["host"]:
                now = "now on 127.0.0.1 with an ephemeral host port"
            else:
                now = "now on 127.0.0.1:%s only" % parsed["host"]
            what = "port %s" % parsed["container"]
            if parsed["host"] and parsed["host"] != parsed["container"]:
                what += " (host port %s)" % parsed["host"]
            say("%s was published on every address; %s" % (what, now))
        out["ports"] = compose_tag("!override", rewritten)

    def health(self, name, svc, role, hint, preset_name, port, say):
        """The healthcheck the override writes (None: the file's stays); records whether the service has one."""
        base = svc.get("healthcheck")
        disabled = _health_disabled(base)
        preset = (self.presets.get(preset_name) or {}) if preset_name else {}
        spec = {k: hint[k] for k in ("healthcheck", "health_path") if k in hint}
        if port is not None or hint.get("port") is not None:
            spec["port"] = port if port is not None else hint["port"]
        path = spec.get("health_path", preset.get("health_path", "/health"))
        self.healthy[name] = False
        if hint.get("healthcheck"):
            health = _healthcheck(name, spec, preset, self.settings)
            if _health_disabled(health):
                if role == "web":
                    self.refused.append(
                        "%s is a web service without any way to check health: compose_app_services.%s.healthcheck "
                        "disables it; give it a test" % (name, name)
                    )
                return compose_tag("!override", health) if base else health
            self.healthy[name] = True
            say(
                "health check from compose_app_services.%s.healthcheck (%s)%s"
                % (name, _describe_test(health["test"]), ", instead of the file's own" if base else "")
            )
            return compose_tag("!override", health) if base else health
        if isinstance(base, dict) and not disabled:
            self.healthy[name] = True
            overrides = dict(self.settings.get("healthcheck_overrides") or {})
            if overrides:
                # compose_app_healthcheck_overrides applies to every health check, the file's own too (merged by
                # Compose over the file's keys; the sandbox's short intervals).
                say(
                    "health check: the file's own, with %s from compose_app_healthcheck_overrides"
                    % ", ".join("%s %s" % (k, v) for k, v in sorted(overrides.items()))
                )
                return overrides
            interval = base.get("interval")
            say(
                "health check: the file's own (%s)"
                % ("every %s" % interval if interval else "no interval: Docker checks every 30s")
            )
            return None
        if disabled:
            where = self.where("services", name, "healthcheck", "disable" if base.get("disable") else "test")
            if role == "web":
                self.refused.append(
                    "%s is a web service without any way to check health: %s disables it; remove `disable` or give "
                    "compose_app_services.%s.healthcheck" % (name, where, name)
                )
            else:
                say("health check disabled (%s): compose_app only waits for it to start" % where)
            return None
        test = (preset.get("healthcheck") or {}).get("test")
        if not test:
            say(
                "no health check (%s): compose_app only waits for it to start; give compose_app_services.%s."
                "healthcheck to wait for it to be ready"
                % ("no preset gives one" if not preset_name else "preset %s has none" % preset_name, name)
            )
            return None
        health = _healthcheck(name, spec, preset, self.settings)
        self.healthy[name] = True
        if "{path}" in str(test):
            what = "GET %s on %s" % (path, spec.get("port", preset.get("port")))
        else:
            what = _describe_test(health["test"])
        say("health check added from preset %s (%s)" % (preset_name, what))
        return health

    def secrets(self, name, svc, out, say):
        env = svc.get("environment") or {}
        moved = set()
        overrides = {}
        for key, value in env.items():
            if value is None or isinstance(value, (bool, dict, list)):
                continue
            literal = self.vars.literal(_parse_refs(str(value)))
            by_name = _looks_secret(key)
            by_url = bool(URL_CREDENTIALS_RE.search(literal))
            declared = key in self.vars.secrets
            if not literal or not (by_name or by_url or declared):
                continue
            if literal.strip().lower() in NOT_SECRET_VALUES and not (by_url or declared):
                continue
            where = self.where("services", name, "environment", key)
            if declared:
                overrides[key] = _secret_ref(key)
                moved.add(key)
                say("%s moved to the 0600 .env (the inline value in %s is no longer used)" % (key, where))
            else:
                what = "is written inline" if by_name else "holds a password in a URL written inline"
                self.refused.append(
                    "%s: environment %s %s in %s; set compose_app_secrets.%s (compose_app moves it into the 0600 "
                    ".env) or write ${%s} in the file" % (name, key, what, where, key, key)
                )
        if overrides:
            out["environment"] = dict(sorted(overrides.items()))
        unset = set()
        for path, text in _strings(svc):
            if path[:1] == ("environment",) and path[1:2] and path[1] in moved:
                continue
            for part in _parse_refs(text):
                if part[0] != "var" or self.vars.known(part[1]):
                    continue
                if part[2] in (":?", "?"):
                    self.refused.append(
                        "%s: %s (%s) needs %s, which neither compose_app_secrets nor compose_app_env sets, so Compose "
                        "would stop" % (name, part[4], self.where("services", name, *path), part[1])
                    )
                elif not part[2] and part[1] not in unset:
                    unset.add(part[1])
                    say(
                        "uses ${%s}, which neither compose_app_secrets nor compose_app_env sets (%s: Compose reads "
                        "it as empty)" % (part[1], self.where("services", name, *path))
                    )

    def logging(self, svc, out, say):
        wanted = self.settings.get("logging")
        if not wanted:
            return
        base = svc.get("logging")
        if isinstance(base, dict) and base.get("driver", "json-file") == "json-file":
            size = (base.get("options") or {}).get("max-size")
            if size:
                say("logging: the file's own json-file rotation (max-size %s)" % size)
                return
        out["logging"] = compose_tag("!override", copy.deepcopy(wanted)) if base else copy.deepcopy(wanted)
        options = wanted.get("options") or {}
        if wanted.get("driver", "json-file") == "json-file":
            line = "json-file log rotation %s x %s" % (options.get("max-size", "?"), options.get("max-file", 1))
        else:
            line = "logging driver %s" % wanted.get("driver")
        if isinstance(base, dict) and base.get("driver") not in (None, "json-file"):
            line += " (instead of the file's %s)" % base["driver"]
        say(line)

    def depends_on(self):
        for name in sorted(self.services):
            for dep, spec in sorted((self.services[name].get("depends_on") or {}).items()):
                where = self.where("services", name, "depends_on", dep)
                if dep not in self.services:
                    self.refused.append(
                        "%s: depends_on %s (%s), which is not a service of the files" % (name, dep, where)
                    )
                elif (spec or {}).get("condition") == "service_healthy" and not self.healthy.get(dep):
                    self.refused.append(
                        "%s waits for %s to be healthy (depends_on, %s) and %s has no health check; give "
                        "compose_app_services.%s.healthcheck" % (name, dep, where, dep, dep)
                    )


def compose_adopt(bases, project, presets, settings=None):
    """The override compose.yaml that runs an operator's own compose files the collection's way, and what it does.

    Returns {override, web: {svc: port}, roles: {svc: role}, presets: {svc: preset or ""}, report, refused}.
    Refusals are collected, not raised; errors in the hints raise AnsibleFilterError.
    """
    adoption = _Adoption(bases, project, presets, settings)
    services, roles, preset_names, web = {}, {}, {}, {}
    for name in sorted(adoption.services):
        services[name], roles[name], preset_names[name], port = adoption.service(name)
        if port is not None:
            web[name] = port
    adoption.depends_on()
    return {
        "override": {"name": adoption.project, "services": services},
        "web": web,
        "roles": roles,
        "presets": preset_names,
        "report": adoption.report,
        "refused": adoption.refused,
    }


class _OverrideDumper(yaml.SafeDumper):
    """Block style, lists indented under their key, the Compose merge tags of compose_tag."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)

    def choose_scalar_style(self):
        # `!reset null`, not `!reset 'null'`: a tagged scalar is otherwise quoted.
        if self.event.tag in COMPOSE_TAGS and self.event.value == "null":
            return ""
        return super().choose_scalar_style()


def _represent_dict(dumper, data):
    if COMPOSE_TAG in data:
        tag, value = data[COMPOSE_TAG], data.get("value")
        if value is None:
            return dumper.represent_scalar(tag, "null")
        if isinstance(value, list):
            return dumper.represent_sequence(tag, value)
        if isinstance(value, dict):
            return dumper.represent_mapping(tag, value)
        return dumper.represent_scalar(tag, str(value))
    return dumper.represent_dict(data)


_OverrideDumper.add_representer(dict, _represent_dict)


def compose_override_yaml(doc, header=""):
    """The override document as block-style YAML with the merge tags; header lines become '# ' comments."""
    if not isinstance(doc, dict):
        raise AnsibleFilterError("compose_override_yaml: expected the override document (compose_adopt's override)")
    text = yaml.dump(
        _plain(doc),
        Dumper=_OverrideDumper,
        default_flow_style=False,
        sort_keys=False,
        width=200,
        indent=2,
        allow_unicode=True,
    )
    comments = "".join(("# %s" % line).rstrip() + "\n" for line in str(header or "").splitlines())
    return comments + text


def _plain(value):
    """Ansible's subclasses of str, int, dict, ... (tagged or unsafe values) as the plain types the dumper
    represents."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


class FilterModule:
    def filters(self):
        return {
            "compose_project": compose_project,
            "compose_web_services": web_services,
            "compose_adopt": compose_adopt,
            "compose_override_yaml": compose_override_yaml,
        }
