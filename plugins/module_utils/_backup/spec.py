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


@dataclass
class ComponentSpec:
    """What to back up, and how many copies to keep."""

    name: str
    type: str
    container: str = ""
    volume: str = ""
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
    stop_owners: bool | None = None  # volume: None = stop owners labelled opsbook.backup.stop=true
    api_port: int = 9090  # prometheus: the port of its HTTP API inside the container
    # Before the dump, the exact row count of every table goes into the manifest (the drill compares them);
    # CHECKSUM TABLE is a second full scan, so it is opt-in.
    source_counts: bool = True
    source_checksums: bool = False

    def __post_init__(self) -> None:
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


def load_config(path: str) -> tuple[Settings, dict[str, ComponentSpec]]:
    """The job file the role writes: settings at the top, the components under "components"."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BackupError(EXIT_USAGE, "cannot read config %s: %s" % (path, exc)) from exc
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
