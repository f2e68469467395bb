"""Read each host's containers: one list call filtered by the managed-by label,
plus one name-filtered call only when a desired container is not among ours
(to see a name collision). Hosts are observed in parallel; an unreachable host
is reported and never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from desired_state.handrun import CONSUL_IMAGES, REGISTRATOR_IMAGES, FoundContainer, image_repository
from desired_state.spec import Endpoint
from reconciler import labels as L
from reconciler.actual import ObservedContainer, ObservedFleet, ObservedHost
from reconciler.docker_import import docker
from reconciler.engines import Connections, EngineError, describe_error, list_containers
from reconciler.mounted import RECORD, Edit, HostFileMissing, MountedConfigError, edits, parse_record
from reconciler.mounted_docker import host_files, read_folder

log = logging.getLogger("consul_reconciler.observe")

T = TypeVar("T")


class Concurrency:
    """How many hosts a pass observes at once, adapted pass after pass (a gradient limit, as TCP Vegas
    and Netflix's concurrency-limits adapt a window): the fastest typical host listing seen lately is
    the unloaded latency; while a pass's median listing takes at most ``tolerance`` times that, the
    limit grows by its square root; beyond, it shrinks in proportion, never under ``floor`` nor over
    ``ceiling``. Listing more engines at once than the controller's CPU (the Docker SDK's Python costs
    about a millisecond a call) or the network can take only queues them: each waits longer and the
    whole observation takes no less. Unreachable hosts say nothing of the load and are not counted."""

    def __init__(self, start: int = 16, floor: int = 4, ceiling: int = 64, tolerance: float = 2.0) -> None:
        self.limit = start
        self.floor = floor
        self.ceiling = ceiling
        self.tolerance = tolerance
        self.unloaded: float | None = None  # seconds: the lowest median listing seen (drifts up slowly)
        # Kept from pass to pass: starting a thread costs about 10 ms on a busy machine, and a pool made
        # per pass started dozens (measured at 1,000 simulated hosts: most of a 100-host pass's time).
        self._pool: ThreadPoolExecutor | None = None
        self._mutex = threading.Lock()

    def run(self, work: Callable[[str], T], items: Sequence[str]) -> list[T]:
        """``work`` on every item, ``limit`` at a time, on the kept threads; results in order."""
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.ceiling, thread_name_prefix="observe")
            pool = self._pool
        results: list[T | None] = [None] * len(items)
        queue = iter(enumerate(items))
        taking = threading.Lock()

        def worker() -> None:
            while True:
                with taking:
                    nxt = next(queue, None)
                if nxt is None:
                    return
                index, item = nxt
                results[index] = work(item)

        for future in [pool.submit(worker) for _ in range(min(self.limit, len(items)))]:
            future.result()
        return [r for r in results if r is not None]

    def close(self) -> None:
        with self._mutex:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def after(self, latencies: list[float]) -> None:
        """Adapt to one observation's per-host latencies (seconds, reachable hosts only)."""
        if not latencies:
            return
        median = sorted(latencies)[len(latencies) // 2]
        # forget an old low slowly (10% a pass), so a lasting change of the hosts is learnt
        self.unloaded = median if self.unloaded is None else min(self.unloaded * 1.1, median)
        gradient = min(1.0, self.tolerance * self.unloaded / median) if median > 0 else 1.0
        grown = gradient * self.limit + (self.limit**0.5 if gradient >= 1.0 else 0.0)
        self.limit = max(self.floor, min(self.ceiling, int(grown)))


def observe_fleet(
    connections: Connections,
    endpoints: Mapping[str, Endpoint],
    wanted_names: Mapping[str, Iterable[str]],
    *,
    max_workers: int = 32,
    adopted_ids: frozenset[str] = frozenset(),
    concurrency: Concurrency | None = None,
) -> ObservedFleet:
    """``adopted_ids``: containers started by hand and already adopted in place, which need no inspect.
    ``concurrency``: the adaptive limit of hosts observed at once (else ``max_workers``)."""
    names = sorted(endpoints)
    if not names:
        return ObservedFleet(())
    latencies: list[float] = []

    def observe(name: str) -> ObservedHost:
        began = time.monotonic()
        seen = observe_host(connections, name, endpoints[name], wanted_names.get(name, ()), adopted_ids)
        if seen.reachable:
            latencies.append(time.monotonic() - began)  # list.append is atomic
        return seen

    if concurrency is None:
        workers = min(max_workers, len(names))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="observe") as pool:
            hosts = list(pool.map(observe, names))
    else:
        hosts = concurrency.run(observe, names)
        concurrency.after(latencies)
    return ObservedFleet(tuple(hosts))


def observe_host(
    connections: Connections,
    host: str,
    endpoint: Endpoint,
    wanted: Iterable[str],
    adopted_ids: frozenset[str] = frozenset(),
) -> ObservedHost:
    try:
        api = connections.get(host, endpoint).api
        listed = [_container(raw) for raw in list_containers(api, {"label": [L.MANAGED_BY]})]
        managed = [_with_config_edits(api, c) if c.mounted_config else c for c in listed]
        missing = sorted(set(wanted) - {c.name for c in managed})
        others: list[ObservedContainer] = []
        if missing:
            pattern = [f"^/{name}$" for name in missing]
            others = [
                c if c.id in adopted_ids else _inspected(api, host, c)
                for c in (_container(raw) for raw in list_containers(api, {"name": pattern}))
                if c.name in missing and c.managed_by is None
            ]
    except EngineError as exc:
        return ObservedHost(host, endpoint, reachable=False, error=str(exc).removeprefix(f"host {host}: "))
    except Exception as exc:  # the engine's failure is data for the plan, never a crash of the pass
        connections.drop(host)
        return ObservedHost(host, endpoint, reachable=False, error=describe_error(exc, endpoint.url))
    return ObservedHost(host, endpoint, True, None, tuple(managed), tuple(others))


def _with_config_edits(api: Any, container: ObservedContainer) -> ObservedContainer:
    """An agent with config files mounted from the host: which of them were edited since it read them
    (reconciler/mounted.py). A file gone from the host is an edit too: the replacement says so (Docker
    refuses the mount, naming the file) before the running agent is touched. When the files cannot be
    read for another reason (the agent gone meanwhile, its image removed), none is taken as edited:
    nothing is replaced on a guess, and the next pass looks again."""
    mounted = container.mounted_config
    try:
        files = host_files(api, container.name, container.image, mounted)
    except HostFileMissing as exc:
        log.warning("%s: a mounted config file is missing on the host: %s", container.name, exc)
        return replace(container, config_edits=tuple(Edit(path, None, None) for path in mounted))
    except (docker.errors.APIError, MountedConfigError) as exc:
        log.warning("%s: cannot read its mounted config files: %s", container.name, describe_error(exc))
        return container
    try:
        record = parse_record(read_folder(api, container.id, RECORD))
    except (docker.errors.APIError, MountedConfigError) as exc:
        log.warning("%s: cannot read what its agent read: %s", container.name, describe_error(exc))
        return container
    return replace(container, config_edits=edits(mounted, record, files))


def _inspected(api: Any, host: str, container: ObservedContainer) -> ObservedContainer:
    """A container started by hand under a desired name, with what adoption compares: its inspect and
    its image's environment (two calls, only for such a container). Gone meanwhile: as listed."""
    try:
        attrs = api.inspect_container(container.id)
        image_env = (api.inspect_image(attrs.get("Image", "")).get("Config") or {}).get("Env") or []
    except Exception:  # removed between the list and the inspect: the plan treats it as listed
        return container
    found = FoundContainer.from_inspect(host, attrs)
    return replace(container, found=found, image_env=tuple(str(e) for e in image_env))


def _container(raw: Mapping[str, Any]) -> ObservedContainer:
    names = raw.get("Names") or ["/"]
    return ObservedContainer(
        id=str(raw.get("Id", "")),
        name=str(names[0]).lstrip("/"),
        image=str(raw.get("Image", "")),
        state=str(raw.get("State", "unknown")),
        labels=dict(raw.get("Labels") or {}),
        command=str(raw.get("Command") or ""),
    )


def read_hand_run(connections: Connections, host: str, endpoint: Endpoint) -> list[FoundContainer]:
    """The containers on ``host`` that look like a Consul agent or a Registrator, for ``import``: one
    list, then an inspect of each candidate (its image or its command names Consul or Registrator).
    An unreachable engine raises EngineError naming the host."""
    api = connections.get(host, endpoint).api
    try:
        listed = api.containers(all=True)
        candidates = [raw for raw in listed if _looks_like_ours(raw)]
        return [FoundContainer.from_inspect(host, api.inspect_container(raw["Id"])) for raw in candidates]
    except EngineError:
        raise
    except Exception as exc:
        connections.drop(host)
        raise EngineError(host, describe_error(exc, endpoint.url)) from None


def _looks_like_ours(raw: Mapping[str, Any]) -> bool:
    """From a list entry alone: worth an inspect (the pure reading decides what it is)."""
    image = image_repository(str(raw.get("Image", "")))
    command = str(raw.get("Command") or "")
    return (
        image in CONSUL_IMAGES
        or image in REGISTRATOR_IMAGES
        or "consul://" in command
        or " agent" in f" {command}"
    )
