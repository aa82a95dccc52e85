"""Images pushed as archives (module_utils/container_images.py).

tests/fixtures/docker-save-fixture.tar is what Debian's docker 20.10.24 wrote for
`docker save localhost/vllm-fleet/fixture:1`, an image imported from a one-file rootfs. The
engine itself is replaced by a recorder here; podman loads real archives in the container
Molecule scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils.container_images import (
    Engine,
    ImageError,
    archive_image_id,
    archive_images,
    normal_id,
)

ARCHIVE = str(Path(__file__).resolve().parents[1] / "fixtures" / "docker-save-fixture.tar")
FIXTURE_ID = "sha256:9cf79259d8a837a7934dce9ec4d5a432bbc610711a7209cc452572c4434a97bb"


def test_the_archive_names_the_id_docker_gave_the_image():
    assert archive_images(ARCHIVE) == [{"id": FIXTURE_ID, "tags": ["localhost/vllm-fleet/fixture:1"]}]
    assert archive_image_id(ARCHIVE, "localhost/vllm-fleet/fixture:1") == FIXTURE_ID
    with pytest.raises(ImageError, match=r"holds no image tagged localhost/other:1 .*fixture:1"):
        archive_image_id(ARCHIVE, "localhost/other:1")


def test_what_is_no_archive_says_so(tmp_path: Path):
    bad = tmp_path / "image.tar"
    bad.write_text("not a tar")
    with pytest.raises(ImageError, match="is not an image archive of `docker save`"):
        archive_images(str(bad))


def test_ids_as_docker_and_podman_print_them():
    assert normal_id(FIXTURE_ID.removeprefix("sha256:") + "\n") == FIXTURE_ID
    assert normal_id(FIXTURE_ID) == FIXTURE_ID
    with pytest.raises(ImageError):
        normal_id("latest")


class Recorder:
    """An engine's client: `image inspect` answers from `images`, `load` adds `loads_as`."""

    def __init__(self, images: dict[str, str], loads_as: dict[str, str]) -> None:
        self.images, self.loads_as, self.calls = images, loads_as, []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv[1])
        if argv[1:3] == ["image", "inspect"]:
            found = self.images.get(argv[-1])
            return (0, found + "\n", "") if found else (125, "", "no such image")
        self.images.update(self.loads_as)
        return 0, "Loaded image", ""


def test_an_image_with_the_id_is_not_loaded_again_and_a_missing_one_is():
    have = Recorder({"img:1": FIXTURE_ID.removeprefix("sha256:")}, {})
    assert Engine("/usr/bin/podman", have).ensure("img:1", FIXTURE_ID, ARCHIVE) is False
    assert have.calls == ["image"]
    missing = Recorder({}, {"img:1": FIXTURE_ID})
    assert Engine("/usr/bin/docker", missing).ensure("img:1", FIXTURE_ID, ARCHIVE) is True
    assert missing.calls == ["image", "load", "image"]


def test_a_load_that_gives_another_image_fails():
    other = "sha256:" + "0" * 64
    wrong = Recorder({}, {"img:1": other})
    with pytest.raises(ImageError, match=f"img:1 is {other}, not {FIXTURE_ID}"):
        Engine("/usr/bin/podman", wrong).ensure("img:1", FIXTURE_ID, ARCHIVE)
