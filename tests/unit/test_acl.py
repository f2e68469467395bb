"""ACLs on the agents (consul.acl): settings rendered as a config file, tokens by reference (no Docker)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import TopologyError, load_topology
from desired_state.model import Topology
from desired_state.render import render
from desired_state.secrets import check_secrets
from desired_state.spec import ContainerSpec
from reconciler.containers import ActionError, ContainerOps, ExecOptions
from reconciler.formatting import docker_run_line
from reconciler.plan import field_changes

TOKEN = "3f0a9c2e-6b1d-4e57-9a80-c1d2e3f4a5b6"
DEFAULT = "0b7c6d5e-4f3a-4b2c-8d1e-0f9a8b7c6d5e"


def topology(acl: dict[str, Any] | None, servers: int = 3, clients: int = 1) -> Topology:
    hosts = [
        {"name": f"s{i}", "docker": f"ssh://admin@127.0.0.{i}", "advertise": f"127.0.0.{i}", "role": "server"}
        for i in range(1, servers + 1)
    ]
    hosts += [
        {"name": f"c{i}", "docker": f"ssh://admin@127.0.1.{i}", "advertise": f"127.0.1.{i}", "role": "client"}
        for i in range(1, clients + 1)
    ]
    consul: dict[str, Any] = {} if acl is None else {"acl": acl}
    return load_topology(json.dumps({"cluster": "prod", "consul": consul, "hosts": hosts}).encode()).topology


FULL = {
    "agent_token": {"env": "AGENT_TOKEN"},
    "default_token": {"file": "/etc/consul-reconciler/default.token"},
    "initial_management_token": {"env": "MGMT_TOKEN"},
}


def agents(t: Topology) -> dict[str, ContainerSpec]:
    return {h.name: h.specs[0] for h in render(t).hosts}


def test_settings_are_a_config_file_and_each_token_a_secret_file_of_its_own() -> None:
    specs = agents(topology(FULL))
    server, client = specs["s1"], specs["c1"]
    assert [(c.path, json.loads(c.content)) for c in server.config_files] == [
        (
            "/consul/config/acl.json",
            {
                "acl": {
                    "enabled": True,
                    "default_policy": "deny",
                    "down_policy": "extend-cache",
                    "enable_token_persistence": False,
                }
            },
        )
    ]
    assert [s.record() for s in server.secret_files] == [
        "/consul/config/acl-agent-token.json:acl.tokens.agent=<env:AGENT_TOKEN>",
        "/consul/config/acl-default-token.json:acl.tokens.default=<file:/etc/consul-reconciler/default.token>",
        "/consul/config/acl-initial-management.json:acl.tokens.initial_management=<env:MGMT_TOKEN>",
    ]
    # a client never bootstraps ACLs: no initial management token on it
    assert [s.key for s in client.secret_files] == ["acl.tokens.agent", "acl.tokens.default"]
    assert client.config_files == server.config_files
    # nothing of it on the command line or in the environment
    assert not any("acl" in arg or "token" in arg for arg in server.command)
    assert server.env == ()


def test_a_fleet_without_acl_keeps_the_hash_it_had() -> None:
    """``config_files`` enters the hashed record only when there are some: upgrading the controller
    replaces no running agent."""
    spec = agents(topology(None))["s1"]
    assert "config_files" not in spec.record()
    assert spec.config_files == ()


def test_a_changed_acl_setting_replaces_the_agents_and_says_which_field() -> None:
    before = agents(topology({"default_policy": "allow"}))["s1"]
    after = agents(topology({"default_policy": "deny"}))["s1"]
    assert before.spec_hash() != after.spec_hash()
    assert [c.field for c in field_changes(before.record(), after.record())] == ["config_files"]
    # a token that moves to another reference also replaces (the value itself is never known)
    moved = agents(topology({"default_policy": "deny", "agent_token": {"env": "OTHER"}}))["s1"]
    assert [c.field for c in field_changes(after.record(), moved.record())] == ["secret_files"]


def test_the_docker_run_line_shows_where_each_token_goes_never_a_value() -> None:
    line = docker_run_line(agents(topology(FULL))["s1"])
    assert '/consul/config/acl-agent-token.json = {"acl": {"tokens": {"agent": "(redacted)"}}}' in line
    assert "(value from env:AGENT_TOKEN" in line
    assert '"default_policy": "deny"' in line


def test_the_files_written_into_the_agent_hold_the_tokens_nested_as_consul_reads_them() -> None:
    ops = ContainerOps("prod", ExecOptions(environ={"AGENT_TOKEN": TOKEN, "MGMT_TOKEN": TOKEN}))
    spec = agents(
        topology({"agent_token": {"env": "AGENT_TOKEN"}, "initial_management_token": {"env": "MGMT_TOKEN"}})
    )["s2"]
    archive = ops.config_archive(spec)
    assert archive is not None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers()}  # type: ignore[arg-type]
    assert files["consul/config/acl-agent-token.json"] == {"acl": {"tokens": {"agent": TOKEN}}}
    assert files["consul/config/acl-initial-management.json"] == {
        "acl": {"tokens": {"initial_management": TOKEN}}
    }
    assert files["consul/config/acl.json"]["acl"]["enabled"] is True


def test_a_token_that_does_not_resolve_stops_the_create_naming_its_reference() -> None:
    ops = ContainerOps("prod", ExecOptions(environ={}))
    with pytest.raises(
        ActionError, match="host s1: secret env:AGENT_TOKEN: environment variable AGENT_TOKEN"
    ):
        ops.config_archive(agents(topology({"agent_token": {"env": "AGENT_TOKEN"}}))["s1"])


def test_every_token_reference_is_checked_before_a_pass_and_no_value_is_shown(tmp_path: Path) -> None:
    default = tmp_path / "default.token"
    default.write_text(f"{DEFAULT} trailing words\n")
    t = topology({**FULL, "default_token": {"file": str(default)}})
    issues = check_secrets(t, {"AGENT_TOKEN": TOKEN})
    assert [(i.path, i.message) for i in issues] == [
        (
            "consul.acl.default_token",
            f"file:{default}: the token contains whitespace or a control character",
        ),
        (
            "consul.acl.initial_management_token",
            "env:MGMT_TOKEN: environment variable MGMT_TOKEN is not set or empty",
        ),
    ]
    assert DEFAULT not in str(issues) and TOKEN not in str(issues)
    assert check_secrets(t, {"AGENT_TOKEN": TOKEN, "MGMT_TOKEN": TOKEN}, lambda _: DEFAULT) == []


@pytest.mark.parametrize("field", ["agent_token", "default_token", "initial_management_token"])
def test_a_token_written_inline_is_refused_without_echoing_it(field: str) -> None:
    for value in (TOKEN, {"env": TOKEN}, {"value": TOKEN}):
        with pytest.raises(TopologyError) as caught:
            topology({field: value})
        assert caught.value.issues[0].path.startswith(f"consul.acl.{field}")
        assert TOKEN not in str(caught.value) and TOKEN[:8] not in str(caught.value)


def test_acl_settings_are_checked_where_they_are_declared() -> None:
    with pytest.raises(TopologyError) as caught:
        topology({"default_policy": "closed"})
    issue = caught.value.issues[0]
    assert issue.path == "consul.acl.default_policy" and "'allow' or 'deny'" in issue.message
    with pytest.raises(TopologyError) as caught:
        topology({"tokens": {"agent": "x"}})
    assert caught.value.issues[0].path == "consul.acl.tokens"
    assert caught.value.issues[0].message.startswith("unknown field")
