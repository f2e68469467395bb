"""The list call of every pass (reconciler.engines.list_containers) on a real engine: what docker-py's
``containers()`` answers, and its failures read as docker-py's."""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker
import pytest

from desired_state.spec import Endpoint
from reconciler.engines import Connections, describe_error, list_containers
from testbed.fleet import AGENT_IMAGE_1, Engine


def test_the_list_call_answers_as_docker_py_and_fails_as_it(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    engine = clean_fleet[0]
    connections = Connections()
    try:
        api = connections.get(engine.name, Endpoint(url=engine.url)).api
        assert type(api._custom_adapter).__name__ == "UnixHTTPAdapter"  # the direct path is taken
        with contextlib.closing(engine.client()) as client:
            for name, labels in (("listed-a", {"x.test": "1"}), ("listed-b", {"x.test": "2"}), ("other", {})):
                client.containers.create(AGENT_IMAGE_1, name=name, labels=labels)
        for filters in ({"label": ["x.test"]}, {"label": ["x.test=2"]}, {"name": ["^/other$"]}, {}):
            ours = list_containers(api, filters)
            theirs = api.containers(all=True, filters=filters)
            assert ours == theirs, filters
        assert {c["Names"][0] for c in list_containers(api, {"label": ["x.test"]})} == {
            "/listed-a",
            "/listed-b",
        }

        with pytest.raises(docker.errors.APIError) as refused:  # Docker's 400: an unknown filter
            list_containers(api, {"no-such-filter": ["1"]})
        with pytest.raises(docker.errors.APIError) as theirs_refused:
            api.containers(all=True, filters={"no-such-filter": ["1"]})
        assert describe_error(refused.value) == describe_error(theirs_refused.value)
        assert "no-such-filter" in describe_error(refused.value)

        gone = f"unix://{tmp_path}/no-engine.sock"
        away = connections.get("away", Endpoint(url=gone)).api
        with pytest.raises(Exception) as ours_down:
            list_containers(away, {"label": ["x.test"]})
        with pytest.raises(Exception) as theirs_down:
            away.containers(all=True, filters={"label": ["x.test"]})
        assert type(ours_down.value) is type(theirs_down.value)
        assert describe_error(ours_down.value, gone) == describe_error(theirs_down.value, gone)
        assert describe_error(ours_down.value, gone).endswith("No such file or directory")
    finally:
        connections.close()


def test_every_call_to_a_unix_engine_shares_one_connection_pool(clean_fleet: list[Engine]) -> None:
    """docker-py makes a pool per request URL; here every call (list, create, inspect, start, remove,
    from several threads at once) goes through one pool, whose sockets are reused: the engine's open
    connections from this process stay at the most calls ever in flight at once, not one per URL."""
    import threading

    engine = clean_fleet[0]
    connections = Connections()
    try:
        api = connections.get(engine.name, Endpoint(url=engine.url)).api
        names = [f"pooled-{n}" for n in range(6)]
        for name in names:  # a URL each: create, inspect, start, stop, remove
            created = api.create_container(AGENT_IMAGE_1, name=name, labels={"x.pool": "1"})
            assert api.inspect_container(created["Id"])["Name"] == f"/{name}"
        errors: list[BaseException] = []

        def look() -> None:
            try:
                for _ in range(5):
                    assert len(list_containers(api, {"label": ["x.pool"]})) == len(names)
                    api.inspect_container(names[0])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=look) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for name in names:
            api.remove_container(name, force=True)
        pools = api._custom_adapter.pools
        assert len(pools) == 1  # not one per container URL
        [pool] = [pools[key] for key in pools.keys()]  # noqa: SIM118 (it does not iterate)
        assert pool.num_connections <= 3  # the most calls at once (three threads), each socket reused
        assert pool.num_requests >= 6 * 2 + 3 * 5 * 2 + 6
    finally:
        connections.close()
