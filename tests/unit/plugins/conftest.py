# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fixtures the plugin tests share: the database servers (one set for the whole session)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.tests.unit.db_containers import dbs  # noqa: F401  pylint: disable=unused-import
