# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one edit a rolling upgrade makes to the rendered compose.yaml: a service's ``image:`` line.

Private to this collection: not a public API, it may change in any release.

Compose stays the source of truth (docs/architecture.md, "Contracts"): the new image goes into compose.yaml, so
``docker compose config`` says what runs. The edited text is checked with ``docker compose config`` on a
candidate file beside the real one before it replaces it (module_utils/_files.py writes it atomically).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import re
import tempfile
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._files import unlink_quiet, write_atomic
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import ComposeService, UpgradeError

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_LINE_RE = re.compile(r"^(\s*image:\s*)(['\"]?)([^'\"#\s]*)(['\"]?)(\s*(#.*)?)$")


def split_image(ref: str) -> tuple[str, str]:
    """'registry:5000/app:1.0' -> ('registry:5000/app', '1.0'); no tag -> (ref, 'latest'); digests kept whole."""
    if "@" in ref:
        return ref.split("@", 1)[0], ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def target_image(current: str, tag: str) -> str:
    """The service's repository with the new tag (a full reference with '/' or ':' is taken as it is)."""
    if not tag or not isinstance(tag, str):
        raise ValueError("empty tag")
    if "/" in tag or "@" in tag:
        return tag
    if not _TAG_RE.match(tag):
        raise ValueError("%r is not a valid image tag" % tag)
    return "%s:%s" % (split_image(current)[0], tag)


def set_service_image(text: str, service: str, image: str) -> str:
    """compose.yaml with the image of one service replaced, everything else byte for byte the same.

    Works on block-style YAML as compose_app renders it (and as people write it): the service's key under the
    top-level `services:`, then the `image:` key at the first indentation level of that service's block.
    """
    lines = text.splitlines(keepends=True)
    in_services = False
    service_indent: int | None = None
    child_indent: int | None = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_services = stripped.startswith("services:")
            service_indent = child_indent = None
            continue
        if not in_services:
            continue
        if service_indent is None:
            key = stripped.split(":", 1)[0].strip("'\"")
            if key == service and stripped.endswith(":"):
                service_indent = indent
            continue
        if indent <= service_indent:
            break  # the next service: ours has no image line
        if child_indent is None:
            child_indent = indent
        if indent != child_indent:
            continue
        match = _IMAGE_LINE_RE.match(line.rstrip("\r\n"))
        if match:
            ending = line[len(line.rstrip("\r\n")) :]
            lines[index] = "".join(
                (match.group(1), match.group(2), image, match.group(4), match.group(5) or "", ending)
            )
            return "".join(lines)
    raise ValueError("cannot find the `image:` line of service %s under `services:` in the compose file" % service)


class ComposeFile:
    """The project's rendered compose.yaml: set one service's image (checked first), put the old text back."""

    def __init__(self, path: str, read_config: t.Callable[[str], dict[str, ComposeService]]):
        # read_config(candidate path): the services as `docker compose config` reads that file.
        self.path = path
        self.read_config = read_config

    def read(self) -> str:
        with open(self.path, encoding="utf-8") as handle:
            return handle.read()

    def _mode(self) -> int:
        return os.stat(self.path).st_mode & 0o777

    def set_image(self, service: str, image: str) -> str:
        """Set the service's image (checked by `docker compose config` first); returns the text before."""
        before = self.read()
        after = set_service_image(before, service, image)
        if after == before:
            return before
        self._check(service, image, after)
        write_atomic(self.path, after, self._mode())
        return before

    def restore(self, text: str) -> None:
        if self.read() != text:
            write_atomic(self.path, text, self._mode())

    def _check(self, service: str, image: str, text: str) -> None:
        """`docker compose config` on the candidate, beside the real file so relative paths resolve the same."""
        fd, candidate = tempfile.mkstemp(prefix=".compose.", suffix=".yaml", dir=os.path.dirname(self.path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            config = self.read_config(candidate)
        finally:
            unlink_quiet(candidate)
        if config.get(service) is None or config[service].image != image:
            raise UpgradeError("the edited compose file does not give service %s the image %s" % (service, image))


__all__ = ["ComposeFile", "set_service_image", "split_image", "target_image"]
