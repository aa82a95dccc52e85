"""Container images pushed to hosts as archives: what an archive holds, and an engine's view.

Air-gapped hosts get their images as the controller saved them (`docker save`, a docker-archive
tar, which docker and podman both load). The image ID is the sha256 of the image's config, the
same in the archive, in docker and in podman, so a loaded image is verified by it.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from typing import Any

ID_PATTERN = re.compile(r"^(?:sha256:)?(?P<hex>[0-9a-f]{64})$")

# run(argv) -> (rc, stdout, stderr)
Runner = Callable[[list[str]], tuple[int, str, str]]


class ImageError(Exception):
    """An archive or an engine did not give what was expected."""


def normal_id(value: str) -> str:
    """An image ID as docker (sha256:<hex>) or podman (<hex>) prints it, as sha256:<hex>."""
    match = ID_PATTERN.match(value.strip())
    if not match:
        raise ImageError(f"not an image ID: {value.strip()!r}")
    return f"sha256:{match.group('hex')}"


def archive_images(path: str) -> list[dict[str, Any]]:
    """The images of a docker-archive tar: each one's ID and tags (its manifest.json)."""
    try:
        with tarfile.open(path) as archive:
            member = archive.extractfile("manifest.json")
            if member is None:
                raise ImageError(f"{path}: manifest.json is not a file")
            manifest = json.load(member)
    except (OSError, KeyError, tarfile.TarError, ValueError) as error:
        raise ImageError(f"{path} is not an image archive of `docker save` ({error})") from error
    images = []
    for entry in manifest:
        # blobs/sha256/<hex> (OCI layout, docker 25+) or <hex>.json (older docker, podman).
        config = str(entry.get("Config", "")).rsplit("/", 1)[-1].removesuffix(".json")
        images.append({"id": normal_id(config), "tags": list(entry.get("RepoTags") or [])})
    return images


def archive_image_id(path: str, image: str) -> str:
    """The ID of the image tagged `image` in the archive at `path` (on this machine)."""
    images = archive_images(path)
    for found in images:
        if image in found["tags"]:
            return str(found["id"])
    tags = sorted(t for found in images for t in found["tags"])
    raise ImageError(f"{path} holds no image tagged {image} (its tags: {', '.join(tags) or 'none'})")


class Engine:
    """docker or podman on a host, through its client."""

    def __init__(self, client: str, run: Runner) -> None:
        self.client = client
        self.run = run

    def image_id(self, image: str) -> str | None:
        """The ID of the image the engine has under `image`, None where it has none."""
        rc, out, _err = self.run([self.client, "image", "inspect", "--format", "{{.Id}}", image])
        return normal_id(out) if rc == 0 and out.strip() else None

    def load(self, archive: str) -> None:
        rc, _out, err = self.run([self.client, "load", "--input", archive])
        if rc != 0:
            raise ImageError(f"{self.client} load --input {archive} failed: {err.strip()}")

    def ensure(self, image: str, wanted: str, archive: str) -> bool:
        """Load `archive` unless the engine has `image` with ID `wanted`; whether it loaded."""
        wanted = normal_id(wanted)
        if self.image_id(image) == wanted:
            return False
        self.load(archive)
        got = self.image_id(image)
        if got != wanted:
            raise ImageError(
                f"after loading {archive}, {image} is {got or 'absent'}, not {wanted} (the ID the "
                "controller read in the archive): the archive changed or was damaged on the way"
            )
        return True
