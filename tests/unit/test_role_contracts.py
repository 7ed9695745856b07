"""Each role's defaults, argument spec and README describe the same variables, and its internals look internal.

CONTRIBUTING.md, "Add a role variable": a test fails when the three drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "defaults/main.yml").is_file())
ROLES_WITH_VARS = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "vars/main.yml").is_file())


def load(path: Path):
    return yaml.safe_load(path.read_text()) or {}


def test_there_are_roles():
    assert "docker_engine" in ROLES


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_prefixed_with_the_role_name(role):
    defaults = load(ROOT / "roles" / role / "defaults/main.yml")
    assert defaults, f"{role}: defaults/main.yml is empty"
    bad = [k for k in defaults if not k.startswith(f"{role}_")]
    assert not bad, f"{role}: variables without the '{role}_' prefix: {bad}"


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_matches_defaults(role):
    defaults = load(ROOT / "roles" / role / "defaults/main.yml")
    spec = load(ROOT / "roles" / role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) - set(spec) == set(), f"{role}: in defaults but not in meta/argument_specs.yml"
    assert {k for k, v in spec.items() if not v.get("required")} - set(defaults) == set(), (
        f"{role}: optional in meta/argument_specs.yml but without a default"
    )
    for name, value in defaults.items():
        if spec[name].get("type", "str") != "str" and isinstance(value, str) and "{{" in value:
            # A list, dict or bool computed by a template: the docsite schema (antsibull-docs) cannot hold the
            # template as its default, so the description gives it, word for word (no C() markup: a template may
            # hold a parenthesis).
            assert "default" not in spec[name] and value in str(spec[name].get("description")), (
                f"{role}: {name} is a templated {spec[name].get('type')}: no default in the spec, and the"
                " description gives the template"
            )
            continue
        assert spec[name].get("default") == value, (
            f"{role}: {name} default differs: {value!r} vs {spec[name].get('default')!r}"
        )
        assert spec[name].get("description"), f"{role}: {name} has no description"


@pytest.mark.parametrize("role", ROLES)
def test_every_default_has_a_comment(role):
    lines = (ROOT / "roles" / role / "defaults/main.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{role}_\w+:", line):
            assert i > 0 and lines[i - 1].startswith("#"), f"{role}: {line.split(':')[0]} has no comment above it"


@pytest.mark.parametrize("role", ROLES)
def test_readme_documents_every_variable(role):
    readme = ROOT / "roles" / role / "README.md"
    assert readme.is_file(), f"{role}: no README.md"
    text = readme.read_text()
    missing = [k for k in load(ROOT / "roles" / role / "defaults/main.yml") if f"`{k}`" not in text]
    assert not missing, f"{role}: README.md variables table lacks {missing}"


@pytest.mark.parametrize("role", ROLES_WITH_VARS)
def test_internals_carry_a_double_underscore_prefix(role):
    """vars/main.yml holds what the role computes, not settings: `__<role>_` says so to whoever reads a play."""
    internals = load(ROOT / "roles" / role / "vars/main.yml")
    bad = sorted(k for k in internals if not k.startswith(f"__{role}_"))
    assert not bad, f"{role}: vars/main.yml names without the '__{role}_' prefix: {bad}"
    defaults = load(ROOT / "roles" / role / "defaults/main.yml")
    assert not set(internals) & set(defaults), f"{role}: names both in vars/main.yml and defaults/main.yml"
