"""The Docker calls for the config files mounted from the host (reconciler/mounted.py says why):
reading a container's config folder, and the view container that reads the host's files as they are
now."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from desired_state.render import CONSUL_CONFIG
from reconciler.docker_import import docker
from reconciler.engines import describe_error
from reconciler.mounted import MAX_ARCHIVE_BYTES, HostFileMissing, MountedConfigError, folder_files

VIEW_SUFFIX = "-config-view"  # the never-started container that reads the host's files
VIEW_LABEL = "io.consul-reconciler.config-view-of"


def read_folder(api: Any, container_id: str, path: str = CONSUL_CONFIG) -> dict[str, bytes]:
    """The files under ``path`` in a container (made, running or stopped), through its engine."""
    stream, _stat = api.get_archive(container_id, path)
    data = bytearray()
    for chunk in stream:
        data += chunk
        if len(data) > MAX_ARCHIVE_BYTES:
            raise MountedConfigError(f"{path} holds more than {MAX_ARCHIVE_BYTES >> 20} MiB")
    return folder_files(bytes(data), path)


def host_files(api: Any, agent: str, image: str, mounted: Mapping[str, str]) -> dict[str, bytes]:
    """The mounted files as they are on the host now, read through a view container that is never
    started (one left by a controller that died is removed first)."""
    name = f"{agent}{VIEW_SUFFIX}"
    mounts = [
        docker.types.Mount(target, source, type="bind", read_only=True) for target, source in mounted.items()
    ]
    config = {"image": image, "command": ["true"], "name": name, "labels": {VIEW_LABEL: agent}}
    try:
        try:
            made = api.create_container(**config, host_config=api.create_host_config(mounts=mounts))
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            api.remove_container(name, force=True)  # left by a controller that died
            made = api.create_container(**config, host_config=api.create_host_config(mounts=mounts))
    except docker.errors.APIError as exc:
        if exc.status_code == 400:  # Docker's "bind source path does not exist"
            raise HostFileMissing(describe_error(exc)) from None
        raise
    try:
        return read_folder(api, made["Id"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(made["Id"], force=True)
