"""The Docker work on one container, as the executor does it: create it under a temporary name (the
image pulled if missing, the secret files written in before it starts), rename it into place, start it
and wait until it runs, stop and remove it. Each failure is an ActionError naming the host and the
container; nothing here decides what to do, only how."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from desired_state.secrets import SecretError, resolve
from desired_state.spec import ContainerSpec
from reconciler import labels as L
from reconciler.docker_import import Container, docker
from reconciler.engines import describe_error
from reconciler.mounted import MountedConfigError, loaded_record, record_archive
from reconciler.mounted_docker import read_folder
from reconciler.plan import Action

log = logging.getLogger("consul_reconciler.execute")


class ActionError(Exception):
    """An action could not be carried out; the message names host, container and cause."""


class Fenced(ActionError):
    """The controller lost the right to act (stopping, or no longer the leader) in the middle of an
    action: it stopped before the next disruptive step. The next pass (here or on the new leader)
    finds what was done and goes on from there."""


@dataclass
class ExecOptions:
    pull: bool = True
    stop_timeout: int = 30
    start_timeout: float = 30.0
    max_workers: int = 32
    max_parallel: int = 32  # client/registrator changes in flight at once (hosts in parallel)
    pull_timeout: float = 600.0  # an image pull that takes longer is abandoned
    environ: Mapping[str, str] | None = None  # where secret references resolve (default os.environ)


class ContainerOps:
    """How each step on a container is done, with the executor's options; ``leadership_lost`` fences a
    pull (a long pull stops when the controller no longer leads)."""

    def __init__(
        self, cluster: str, options: ExecOptions, leadership_lost: Callable[[], str | None] = lambda: None
    ) -> None:
        self.cluster = cluster
        self.options = options
        self.leadership_lost = leadership_lost

    def rename(self, container: Container, name: str, action: Action) -> None:
        try:
            container.rename(name)
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise ActionError(
                f"host {action.host}: cannot name the new container {name}: {describe_error(exc)}"
            ) from None

    def create(self, client: docker.DockerClient, spec: ContainerSpec, name: str) -> Container:
        self.ensure_image(client, spec)
        files = self.config_archive(spec)  # resolve before creating anything
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            command=list(spec.command),
            name=name,
            labels=L.labels_for(self.cluster, spec),
            detach=True,
            network_mode=spec.network_mode,
            restart_policy={"Name": spec.restart_policy},
            volumes={
                m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts
            },
            environment=[f"{k}={v}" for k, v in spec.env],
        )
        if spec.ports:
            kwargs["ports"] = port_bindings(spec)
        if spec.mounted_config:  # "mounts", not "volumes": a missing file is an error, never a new folder
            kwargs["mounts"] = [
                docker.types.Mount(m.target, m.source, type="bind", read_only=True)
                for m in spec.mounted_config
            ]
        try:
            container = client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise ActionError(f"host {spec.host}: image {spec.image} is not present on this host") from None
        except docker.errors.APIError as exc:
            raise ActionError(
                f"host {spec.host}: cannot create container {name}: {describe_error(exc)}"
            ) from None
        if files is not None:
            try:
                container.put_archive("/", files)
            except docker.errors.APIError as exc:
                container.remove(force=True)
                raise ActionError(
                    f"host {spec.host}: cannot write the secret files into {name}: {describe_error(exc)}"
                ) from None
        if spec.mounted_config:
            self.record_mounted(container, spec, name)
        return container

    @staticmethod
    def record_mounted(container: Container, spec: ContainerSpec, name: str) -> None:
        """Read the config files mounted from the host through the new (not yet started) container,
        check them as Consul will, and record their hashes in it (reconciler/mounted.py)."""
        try:
            files = read_folder(container.client.api, container.id)
            container.put_archive(
                "/", record_archive(loaded_record((m.target for m in spec.mounted_config), files))
            )
        except (docker.errors.APIError, MountedConfigError) as exc:
            container.remove(force=True)
            why = str(exc) if isinstance(exc, MountedConfigError) else describe_error(exc)
            raise ActionError(f"host {spec.host}: config file mounted into {name}: {why}") from None

    def ensure_image(self, client: docker.DockerClient, spec: ContainerSpec) -> None:
        try:
            client.images.get(spec.image)
            return
        except docker.errors.ImageNotFound:
            pass
        if not self.options.pull:
            raise ActionError(
                f"host {spec.host}: image {spec.image} is not present and pulling is off (--no-pull)"
            )
        log.info("pulling %s on %s", spec.image, spec.host)
        repository, tag = split_image(spec.image)
        deadline = time.monotonic() + self.options.pull_timeout
        try:
            for progress in client.api.pull(repository, tag=tag, stream=True, decode=True):
                if progress.get("error"):
                    why = progress["error"]
                    raise ActionError(f"host {spec.host}: cannot pull image {spec.image}: {why}")
                lost = self.leadership_lost()
                if lost is not None:
                    raise Fenced(f"host {spec.host}: pulling {spec.image} abandoned: {lost}")
                if time.monotonic() > deadline:
                    raise ActionError(
                        f"host {spec.host}: pulling {spec.image} took more than "
                        f"{self.options.pull_timeout:.0f}s; abandoned"
                    )
        except docker.errors.APIError as exc:
            raise ActionError(
                f"host {spec.host}: cannot pull image {spec.image}: {describe_error(exc)}"
            ) from None

    def config_archive(self, spec: ContainerSpec) -> bytes | None:
        """The files written into the container before it starts: its config files, and its secret
        files with their references resolved (the only place their values are read)."""
        if not spec.secret_files and not spec.config_files:
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for config in spec.config_files:
                _add_file(tar, config.path, config.content.encode())
            for secret in spec.secret_files:
                try:
                    value = resolve(secret.ref, self.options.environ)
                except SecretError as exc:
                    raise ActionError(f"host {spec.host}: secret {secret.ref.describe()}: {exc}") from None
                _add_file(tar, secret.path, json.dumps(secret.document(value)).encode())
        return buffer.getvalue()

    @staticmethod
    def restore_restart_policy(container: Container, action: Action) -> None:
        """A server whose leave was begun by a controller that died since exits with the restart policy
        set to "no" (so Docker would not bring it back mid-leave). Started again, it gets the spec's
        policy back, or Docker would leave it down the next time it dies."""
        if action.desired is None:
            return
        current = (container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no"
        if current != action.desired.restart_policy:
            container.update(restart_policy={"Name": action.desired.restart_policy})
            log.info(
                "%s/%s: restart policy %r restored to %r", action.host, action.name, current,
                action.desired.restart_policy,
            )  # fmt: skip

    def start_and_wait(self, container: Container, action: Action) -> None:
        container.start()
        deadline = time.monotonic() + self.options.start_timeout
        while True:
            container.reload()
            state = container.attrs.get("State", {})
            if state.get("Running"):
                return
            if state.get("Status") in ("exited", "dead"):
                tail = container.logs(tail=5).decode("utf-8", "replace").strip().replace("\n", " | ")
                raise ActionError(
                    f"host {action.host}: container {action.name} exited with code {state.get('ExitCode')} "
                    f"right after start" + (f"; last output: {tail[-400:]}" if tail else "")
                )
            if time.monotonic() > deadline:
                raise ActionError(
                    f"host {action.host}: container {action.name} not running after "
                    f"{self.options.start_timeout:.0f}s (state {state.get('Status')})"
                )
            time.sleep(0.05)

    def stop_and_remove(self, client: docker.DockerClient, container_id: str, action: Action) -> None:
        try:
            container = client.containers.get(container_id)
        except docker.errors.NotFound:
            return  # already gone: the goal of this step
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=self.options.stop_timeout)
        try:
            container.remove(v=False)
        except docker.errors.NotFound:
            return

    def remove_if_present(self, client: docker.DockerClient, name: str) -> None:
        try:
            stale = client.containers.get(name)
        except docker.errors.NotFound:
            return
        if stale.labels.get(L.MANAGED_BY) != self.cluster:
            raise ActionError(f"name {name} is held by a container that is not ours; not touching it")
        stale.remove(force=True)


def temporary_name(spec: ContainerSpec) -> str:
    return f"{spec.name}-next-{spec.spec_hash()[:8]}"


def split_image(image: str) -> tuple[str, str]:
    """``repo[:tag]`` or ``repo@digest`` -> (repository, tag or digest) for the pull API."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def port_bindings(spec: ContainerSpec) -> dict[str, Any]:
    bindings: dict[str, Any] = {}
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        bindings[key] = (port.host_ip, port.host_port) if port.host_ip else port.host_port
    return bindings


def _add_file(tar: tarfile.TarFile, path: str, data: bytes) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))
