"""Filters over container image archives; the logic lives in module_utils/container_images.py."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.vllm_fleet.serving.plugins.module_utils.container_images import (
    ImageError,
    archive_image_id,
)


def image_archive_id(archive: str, image: str) -> str:
    """The ID of `image` in a `docker save` archive on the controller (sha256:<hex>)."""
    try:
        return archive_image_id(archive, image)
    except ImageError as error:
        raise AnsibleFilterError(f"vllm_server_container_images: {error}") from error


class FilterModule:
    """vllm_fleet.serving container image filters."""

    def filters(self) -> dict[str, Any]:
        return {"image_archive_id": image_archive_id}
