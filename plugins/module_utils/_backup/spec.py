# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What to back up (one component) and the settings every job of a host shares, read from the job file.

Private to this collection: not a public API, it may change in any release.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_USAGE, BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import ENGINES, TYPES
from ansible_collections.opsbook.stack.plugins.module_utils._compose import NAME_RE
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DEFAULT_DOCKER_HOST

# The type of every setting a job file may hold: the file is JSON written by the role from YAML, where "3" (quoted)
# is a string; a wrong type is refused here with the setting's name, not met later as a traceback.
STR, INT, BOOL, NUMBER, STRLIST = "a string", "an integer", "true or false", "a number", "a list of strings"
MAPPING = "a mapping"
COMPONENT_TYPES = {
    "name": STR,
    "type": STR,
    "container": STR,
    "volume": STR,
    "path": STR,
    "databases": STRLIST,
    "user": STR,
    "password": STR,
    "zstd_level": INT,
    "zstd_threads": INT,
    "min_bytes": INT,
    "keep_last": INT,
    "keep_daily": INT,
    "keep_weekly": INT,
    "helper_image": STR,
    "stop_owners": BOOL,
    "api_port": INT,
    "source_counts": BOOL,
    "source_checksums": BOOL,
}
SETTINGS_TYPES = {
    "dest": STR,
    "metrics_dir": STR,
    "docker_host": STR,
    "space_margin": NUMBER,
    "min_free_bytes": INT,
    "drill_prefix": STR,
    "drill_timeout": NUMBER,
    "timeout": NUMBER,
    "zstd": STR,
    "age_recipients": STRLIST,
    "age_identity": STR,
    "age": STR,
    "shrink_ratio": NUMBER,
    "offsite": MAPPING,
}
NULLABLE = ("min_bytes", "stop_owners")


def _has_type(value: t.Any, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == MAPPING:
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _described(value: t.Any) -> str:
    if isinstance(value, str):
        return "the string %r" % value
    return "%s %r" % (type(value).__name__, value)


def check_types(owner: str, values: dict[str, t.Any], types: dict[str, str]) -> None:
    """Refuse a setting of the wrong type, naming it, what it needs and how to write it."""
    for key, kind in types.items():
        value = values.get(key)
        if value is None and key in NULLABLE:
            continue
        if _has_type(value, kind):
            continue
        hint = ""
        if kind in (INT, NUMBER, BOOL) and isinstance(value, str):
            hint = " (write %s: %s, without quotes)" % (key, value)
        elif kind == STRLIST and isinstance(value, str):
            hint = " (write %s: [%s], a list, even for one)" % (key, value)
        raise BackupError(EXIT_USAGE, "%s: %s must be %s, got %s%s" % (owner, key, kind, _described(value), hint))


@dataclass
class ComponentSpec:
    """What to back up, and how many copies to keep."""

    name: str
    type: str
    container: str = ""
    volume: str = ""
    path: str = ""  # type path: an absolute directory of the host (a bind mount)
    databases: list[str] = field(default_factory=list)
    user: str = ""
    password: str = ""
    zstd_level: int = 3
    zstd_threads: int = 1
    min_bytes: int | None = None
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    helper_image: str = ""
    stop_owners: bool | None = None  # volume, path: None = stop owners labelled opsbook.backup.stop=true
    api_port: int = 9090  # prometheus: the port of its HTTP API inside the container
    # Before the dump, the exact row count of every table goes into the manifest (the drill compares them);
    # CHECKSUM TABLE is a second full scan, so it is opt-in.
    source_counts: bool = True
    source_checksums: bool = False

    def __post_init__(self) -> None:
        check_types("component %s" % self.name, self.__dict__, COMPONENT_TYPES)
        if self.type not in TYPES:
            raise BackupError(
                EXIT_USAGE, "component %s: type %r is not one of %s" % (self.name, self.type, ", ".join(TYPES))
            )
        if not NAME_RE.match(self.name or ""):
            raise BackupError(EXIT_USAGE, "component name %r: use letters, digits, '.', '_' and '-'" % self.name)
        ENGINES[self.type].validate(self)
        if self.keep_last < 1:
            raise BackupError(EXIT_USAGE, "component %s: keep_last must be at least 1" % self.name)

    @classmethod
    def from_dict(cls, name: str, data: dict[str, t.Any]) -> ComponentSpec:
        if not isinstance(data, dict):
            raise BackupError(
                EXIT_USAGE, "component %s: must be a mapping of settings, got %s" % (name, _described(data))
            )
        known = set(cls.__dataclass_fields__)  # pylint: disable=no-member
        unknown = sorted(set(data) - known - {"name", "schedule"})
        if unknown:
            raise BackupError(EXIT_USAGE, "component %s: unknown settings %s" % (name, ", ".join(unknown)))
        values = {k: v for k, v in data.items() if k in known and k != "name"}
        return cls(name=name, **values)


@dataclass
class Settings:
    dest: str = "/var/backups/opsbook"
    metrics_dir: str = ""  # node_exporter's textfile directory; empty: no metrics
    docker_host: str = DEFAULT_DOCKER_HOST
    space_margin: float = 0.2  # the preflight wants last size * (1 + margin) free
    min_free_bytes: int = 16 * 1024 * 1024
    drill_prefix: str = "opsbook-drill-"
    drill_timeout: float = 120.0
    timeout: float = 3600.0  # per exec stream: no byte for this long is a hang
    zstd: str = "zstd"
    # Encrypt every artifact to these age public keys (age1...); empty: not encrypted.
    age_recipients: list[str] = field(default_factory=list)
    # An age identity file (private key) that restores and drills decrypt with; kept off the host when possible.
    age_identity: str = ""
    age: str = "age"
    # A dump below this fraction of the last good backup (uncompressed bytes, or total rows where the engine
    # counts them) is kept but flagged suspect, and retention keeps the last good one beside it; 0 turns it off.
    shrink_ratio: float = 0.5
    # The off-host repository every committed backup is copied to (borg over SSH; _backup/offsite.py reads and
    # checks the keys); empty: no off-host copies.
    offsite: dict[str, t.Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_types("settings", self.__dict__, SETTINGS_TYPES)


def load_config(path: str) -> tuple[Settings, dict[str, ComponentSpec]]:
    """The job file the role writes: settings at the top, the components under "components"."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BackupError(EXIT_USAGE, "cannot read config %s: %s" % (path, exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("components") or {}, dict):
        raise BackupError(EXIT_USAGE, "config %s: must be a JSON object whose components is an object" % path)
    known = set(Settings.__dataclass_fields__)  # pylint: disable=no-member
    settings = Settings(**{k: v for k, v in data.items() if k in known})
    components = {name: ComponentSpec.from_dict(name, spec) for name, spec in (data.get("components") or {}).items()}
    return settings, components


def component_from_config(path: str, component: str) -> tuple[Settings, ComponentSpec]:
    """One component of a job file; a name the file does not have is a usage error naming the ones it has."""
    settings, components = load_config(path)
    if component not in components:
        raise BackupError(
            EXIT_USAGE,
            "component %s is not in %s (have: %s)" % (component, path, ", ".join(sorted(components)) or "none"),
        )
    return settings, components[component]
