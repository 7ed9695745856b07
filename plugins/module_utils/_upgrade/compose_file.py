# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one edit a rolling upgrade makes to the rendered compose.yaml: a service's ``image:`` line.

Private to this collection: not a public API, it may change in any release.

Compose stays the source of truth (docs/architecture.md, "Contracts"): the new image goes into compose.yaml, so
``docker compose config`` says what runs. The edited text is checked with ``docker compose config`` on a
candidate file beside the real one before it replaces it (module_utils/_files.py writes it atomically): the
candidate must give the service the new image and every other service the image it had. ``check_all`` makes
every edit of a run on a scratch copy before the first service moves, so a file whose shape the edit does not
support (a flow mapping, an image from an anchor or a ``<<:`` merge) stops the run with nothing moved.
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
_IMAGE_LINE_RE = re.compile(r"^(\s*image:\s*)(['\"]?)([^'\"#\s&*!{\[]*)(['\"]?)(\s*(#.*)?)$")
# `key:` optionally followed by an anchor and a comment: the start of a block mapping.
_BLOCK_KEY_RE = re.compile(r"^(['\"]?)([^'\"#:]+)\1:(\s+&\S+)?\s*(#.*)?$")
_UNSUPPORTED = (
    "the edit supports a block mapping under `services:` with `image: <ref>` as a line of its own in the service "
    "(no flow mapping `{...}`, no image from an anchor, an alias or a `<<:` merge)"
)


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


def _block_key(stripped: str) -> str | None:
    """The key of a line that opens a block mapping (`svc:`, `"svc":  # comment`, `svc: &anchor`), else None."""
    match = _BLOCK_KEY_RE.match(stripped)
    return match.group(2).strip() if match else None


def set_service_image(text: str, service: str, image: str) -> str:
    """compose.yaml with the image of one service replaced, everything else byte for byte the same.

    Works on block-style YAML as compose_app renders it (and as people write it): the service's key under the
    top-level `services:`, then the `image:` key at the first indentation level of that service's block. Any
    other shape raises ValueError that says which one it supports.
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
            if in_services and service_indent is not None:
                break
            in_services = stripped.split(":", 1)[0] == "services"
            if in_services and _block_key(stripped) is None:
                raise ValueError("`services:` is not a block mapping; " + _UNSUPPORTED)
            service_indent = child_indent = None
            continue
        if not in_services:
            continue
        if service_indent is None:
            if stripped.split(":", 1)[0].strip("'\"") == service:
                if _block_key(stripped) != service:
                    raise ValueError("service %s is not a block mapping; %s" % (service, _UNSUPPORTED))
                service_indent = indent
            continue
        if indent <= service_indent:
            break  # the next service: ours has no image line
        if child_indent is None:
            child_indent = indent
        if indent != child_indent:
            continue
        if stripped.startswith("image:"):
            match = _IMAGE_LINE_RE.match(line.rstrip("\r\n"))
            if not match or not match.group(3):
                raise ValueError("the `image:` of service %s is not a plain reference; %s" % (service, _UNSUPPORTED))
            ending = line[len(line.rstrip("\r\n")) :]
            lines[index] = "".join(
                (match.group(1), match.group(2), image, match.group(4), match.group(5) or "", ending)
            )
            return "".join(lines)
    raise ValueError("cannot find the `image:` line of service %s under `services:`; %s" % (service, _UNSUPPORTED))


class ComposeFile:
    """The project's rendered compose.yaml: set one service's image (checked first), put the old text back."""

    def __init__(self, path: str, read_config: t.Callable[[str], dict[str, ComposeService]]):
        # read_config(candidate path): the services as `docker compose config` reads that file.
        self.path = path
        self.read_config = read_config
        # The texts check_all proved (each step of a run's edits, in order): writing one needs no second check.
        self._proved: set[str] = set()

    def read(self) -> str:
        with open(self.path, encoding="utf-8") as handle:
            return handle.read()

    def _mode(self) -> int:
        return os.stat(self.path).st_mode & 0o777

    def edited(self, text: str, service: str, image: str) -> str:
        """text with the service's image set; UpgradeError naming the service and the file when it cannot be."""
        try:
            return set_service_image(text, service, image)
        except ValueError as exc:
            raise UpgradeError(
                "cannot set the image of service %s in %s: %s; nothing was moved" % (service, self.path, exc)
            ) from exc

    def set_image(self, service: str, image: str) -> str:
        """Set the service's image (checked by `docker compose config` first); returns the text before."""
        before = self.read()
        after = self.edited(before, service, image)
        if after == before:
            return before
        if after not in self._proved:
            self._check({service: image}, after)
        write_atomic(self.path, after, self._mode())
        return before

    def check_all(self, images: dict[str, str], before: dict[str, ComposeService] | None = None) -> None:
        """Every edit of a run (service -> image), in order, on a scratch copy checked by Compose; the file is
        not touched. before: the services as Compose reads the file now, when the caller has them."""
        text = self.read()
        steps = []
        for service, image in images.items():
            text = self.edited(text, service, image)
            steps.append(text)
        self._check(images, text, before)
        # The steps between differ from the checked text only by images that are still the valid ones of now.
        self._proved = set(steps)

    def restore(self, text: str) -> None:
        if self.read() != text:
            write_atomic(self.path, text, self._mode())

    def _check(self, images: dict[str, str], text: str, before: dict[str, ComposeService] | None = None) -> None:
        """`docker compose config` on the candidate, beside the real file so relative paths resolve the same: the
        edited services have their new image, every other one the image it had."""
        if before is None:
            before = self.read_config(self.path)
        fd, candidate = tempfile.mkstemp(prefix=".compose.", suffix=".yaml", dir=os.path.dirname(self.path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            config = self.read_config(candidate)
        finally:
            unlink_quiet(candidate)
        for service, image in images.items():
            if config.get(service) is None or config[service].image != image:
                raise UpgradeError(
                    "the edited %s does not give service %s the image %s; nothing was moved"
                    % (self.path, service, image)
                )
        others = sorted(
            name for name, svc in before.items() if name not in images and (config.get(name) or svc).image != svc.image
        )
        if others:
            raise UpgradeError(
                "editing the image of %s in %s would change the image of %s too (an anchor or a merge shares it); %s"
                % (", ".join(sorted(images)), self.path, ", ".join(others), _UNSUPPORTED)
            )


__all__ = ["ComposeFile", "set_service_image", "split_image", "target_image"]
