# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup engines by component type: adding an engine is one file (a subclass of base.Engine) and one line here.

Private to this collection: not a public API, it may change in any release.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_mariadb import MariaDBEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_path import PathEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_postgres import PostgresEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_prometheus import PrometheusEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_redis import RedisEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_volume import VolumeEngine

ENGINES: dict[str, type[Engine]] = {
    "mariadb": MariaDBEngine,
    "mysql": MariaDBEngine,
    "postgres": PostgresEngine,
    "redis": RedisEngine,
    "prometheus": PrometheusEngine,
    "volume": VolumeEngine,
    "path": PathEngine,
}
# The component types, in the order the documentation and error messages list them.
TYPES = tuple(ENGINES)
DRILLABLE = tuple(name for name, engine in ENGINES.items() if engine.drillable)


def engine_for(spec: t.Any, settings: t.Any, client: t.Any = None) -> Engine:
    """The engine of spec.type for one component (spec: ComponentSpec, settings: Settings)."""
    return ENGINES[spec.type](spec, settings, client)
