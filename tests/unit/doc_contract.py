# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A module's documented options (its own plus its opsbook.stack doc fragments) against its argument spec.

ansible-test validate-modules checks more; this runs with plain pytest, so a drift shows in the edit-test loop.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import importlib
import typing as t
from pathlib import Path

import pytest
import yaml

PREFIX = "opsbook.stack."
REPO_ROOT = Path(__file__).resolve().parents[2]


def documented(module: t.Any) -> dict[str, t.Any]:
    """DOCUMENTATION with the options and attributes of the collection's own fragments merged in."""
    doc = yaml.safe_load(module.DOCUMENTATION)
    for name in doc.get("extends_documentation_fragment", []):
        assert name.startswith(PREFIX), "only the collection's fragments are merged here: %s" % name
        fragment_module = importlib.import_module(
            "ansible_collections.opsbook.stack.plugins.doc_fragments.%s" % name[len(PREFIX) :]
        )
        fragment = yaml.safe_load(fragment_module.ModuleDocFragment.DOCUMENTATION)
        for section in ("options", "attributes"):
            for key, value in (fragment.get(section) or {}).items():
                assert key not in doc.get(section, {}) or section == "attributes", "%s %s twice" % (section, key)
                merged = dict(value, **doc.get(section, {}).get(key, {}))
                doc.setdefault(section, {})[key] = merged
    return doc


def captured_spec(module: t.Any) -> dict[str, t.Any]:
    """The argument_spec and keywords main() gives AnsibleModule (captured, not duplicated)."""
    captured: dict[str, t.Any] = {}

    class Capture(Exception):
        pass

    def fake_module(argument_spec, **kwargs):
        captured.update(argument_spec=argument_spec, kwargs=kwargs)
        raise Capture()

    original = module.AnsibleModule
    module.AnsibleModule = fake_module
    try:
        with pytest.raises(Capture):
            module.main()
    finally:
        module.AnsibleModule = original
    return captured


def compare_options(doc_options: dict, spec: dict, where: str = "options") -> None:
    assert set(doc_options) == set(spec), where
    for name, spec_option in spec.items():
        doc_option = doc_options[name]
        assert doc_option.get("type", "str") == spec_option.get("type", "str"), "%s.%s type" % (where, name)
        assert doc_option.get("elements") == spec_option.get("elements"), "%s.%s elements" % (where, name)
        assert doc_option.get("default") == spec_option.get("default"), "%s.%s default" % (where, name)
        assert bool(doc_option.get("required")) == bool(spec_option.get("required")), "%s.%s required" % (where, name)
        assert doc_option.get("choices") == spec_option.get("choices"), "%s.%s choices" % (where, name)
        if "options" in spec_option:
            compare_options(doc_option["suboptions"], spec_option["options"], "%s.%s" % (where, name))


def check_documentation(module: t.Any) -> dict[str, t.Any]:
    """Documented options equal the spec, check mode and the action group are documented; returns the doc."""
    doc = documented(module)
    captured = captured_spec(module)
    compare_options(doc["options"], captured["argument_spec"])
    supports_check_mode = captured["kwargs"].get("supports_check_mode", False)
    assert (doc["attributes"]["check_mode"]["support"] != "none") == supports_check_mode
    group = doc["attributes"]["action_group"]
    assert group["support"] == "full" and group["membership"] == ["opsbook.stack.stack"], group
    assert group["description"], "the attributes fragment describes action_group"
    runtime = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())
    assert doc["module"] in runtime["action_groups"]["stack"], "meta/runtime.yml lists %s" % doc["module"]
    return doc


__all__ = ["captured_spec", "check_documentation", "compare_options", "documented"]
