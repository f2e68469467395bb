"""TLS on real Consul agents (consul.tls): HTTPS only, verify_incoming on, the controller's every call to
the agents (the gates, the registrator's wait, the snapshot, each server's leave) over HTTPS with its
client certificate, and a clear error without it; an operator's config files (one copied, one mounted
from each host) read by the agents, and an edit on the hosts rolled out."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testbed.controller_harness import audit_rows, wait_for
from testbed.fleet import Engine
from testbed.tlsengine import ConsulCerts, write_consul_certs
from tests.integration.harness import Fleet

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def https_get(address: str, path: str, certs: ConsulCerts, client_cert: bool = True) -> Any:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(f"https://{address}:8501{path}", timeout=3) as response:
        return json.loads(response.read())


def healthy_voters(address: str, certs: ConsulCerts) -> int:
    try:
        health = https_get(address, "/v1/operator/autopilot/health", certs)
    except (OSError, ValueError):
        return 0
    return sum(1 for s in health["Servers"] or [] if s["Healthy"] and s["Voter"]) if health["Healthy"] else 0


def node_meta(address: str, certs: ConsulCerts) -> dict[str, str]:
    """The agent's node meta from the operator's files (Consul adds its own keys)."""
    meta = https_get(address, "/v1/agent/self", certs)["Meta"]
    return {key: value for key, value in meta.items() if key in ("rack", "zone")}


def cluster_report(fleet: Fleet, addresses: list[str], certs: ConsulCerts) -> str:
    """What each server says of the cluster, and the tail of its log: for a rollout that paused."""
    lines = []
    for address in addresses:
        for path in ("/v1/operator/autopilot/health", "/v1/operator/raft/configuration", "/v1/agent/members"):
            try:
                lines.append(f"{address}{path}: {json.dumps(https_get(address, path, certs))}")
            except (OSError, ValueError) as exc:
                lines.append(f"{address}{path}: {exc}")
    for engine in fleet.engines:
        client = engine.client()
        try:
            for container in client.containers.list(all=True, ignore_removed=True):
                log = container.logs(tail=60).decode(errors="replace")
                lines.append(f"--- {engine.name} {container.name} {container.status}\n{log}")
        finally:
            client.close()
    return "\n".join(["", "=== cluster report ===", *lines])


def test_agents_serve_https_only_and_the_controller_converges_and_replaces_a_server_over_it(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet, tmp_path, cluster="tls")
    fleet.use_real_consul()
    addresses = [e.address for e in clean_fleet]
    certs = write_consul_certs(tmp_path / "tls", addresses)
    fleet.doc["consul"]["tls"] = {
        "ca_file": str(certs.ca),
        "cert_file": str(certs.agent_cert),
        "key_file": str(certs.agent_key),
    }
    meta = tmp_path / "meta.json"  # an operator's config file, copied into every agent
    meta.write_text(json.dumps({"node_meta": {"rack": "r1"}}))
    zone = tmp_path / "consul.d" / "zone.json"  # and one on each host, mounted (the same path here)
    zone.parent.mkdir()
    zone.write_text(json.dumps({"node_meta": {"zone": "z1"}}))
    fleet.doc["consul"]["config_files"] = [{"file": str(meta)}, {"host_path": str(zone)}]
    for host in fleet.doc["hosts"]:
        host["role"] = "server"
    fleet.doc["rollout"] |= {"deadline": 60, "stabilization": 1}
    fleet.write()
    fleet.env |= {
        "CONSUL_CACERT": str(certs.ca),
        "CONSUL_CLIENT_CERT": str(certs.client_cert),
        "CONSUL_CLIENT_KEY": str(certs.client_key),
    }
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    first = addresses[0]
    wait_for(lambda: healthy_voters(first, certs) == 3, 60, "3 healthy voters, asked over HTTPS")
    # the registrators were created after their agents answered agent/self over HTTPS
    assert audit_rows(fleet.db, "SELECT count(*) FROM actions WHERE status='succeeded'") == [(6,)]

    # HTTPS only: no plain HTTP port; verify_incoming: no answer without a client certificate
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"http://{first}:8500/v1/status/leader", timeout=2)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https_get(first, "/v1/status/leader", certs, client_cert=False)
    assert https_get(first, "/v1/status/leader", certs).endswith(":8300")
    assert node_meta(first, certs) == {"rack": "r1", "zone": "z1"}  # both files read

    # the mounted file edited on the hosts (a new file renamed over it, as configuration tools write):
    # every agent is replaced, the field named, the content never shown; the three servers roll one
    # at a time, leader last, each with its leave and the gates over HTTPS (the same data folders:
    # the same node IDs)
    edited = zone.with_name("zone.json.new")
    edited.write_text(json.dumps({"node_meta": {"zone": "z2"}}))
    edited.replace(zone)
    planned = fleet.plan()
    assert planned.code == 2, planned.stdout + planned.stderr
    replaces = [a for a in planned.json()["actions"] if a["kind"] == "replace"]
    assert len(replaces) == 3 and all(r["reasons"][0]["field"] == "config_files" for r in replaces)
    assert "z2" not in planned.stdout  # the content is never shown, only its hash
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr + cluster_report(fleet, addresses, certs)
    replaced = audit_rows(fleet.db, "SELECT node, status FROM actions WHERE kind='replace'")
    assert sorted(replaced) == [(h["name"], "succeeded") for h in fleet.doc["hosts"]]
    wait_for(lambda: healthy_voters(first, certs) == 3, 60, "3 healthy voters after the rollout")
    assert node_meta(first, certs) == {"rack": "r1", "zone": "z2"}
    assert fleet.plan().code == 0, "the new agents recorded the file as they read it"

    # without the controller's client certificate, a clear error names the agent and what to give
    fleet.env.pop("CONSUL_CLIENT_CERT")
    fleet.env.pop("CONSUL_CLIENT_KEY")
    meta.write_text(json.dumps({"node_meta": {"rack": "r3"}}))
    fleet.doc["rollout"]["deadline"] = 5
    fleet.write()
    before = fleet.ids()
    run = fleet.apply()
    assert run.code != 0
    assert "TLS failed" in run.stdout + run.stderr and "CONSUL_CLIENT_CERT" in run.stdout + run.stderr
    assert fleet.ids() == before  # nothing stopped
