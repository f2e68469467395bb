"""TLS on the agents (consul.tls): what is rendered, and how the controller speaks HTTPS to an agent
(a real HTTPS server on loopback, with client-certificate verification; no Docker)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import TopologyError, load_topology
from desired_state.model import Topology
from desired_state.render import render
from desired_state.spec import ContainerSpec
from reconciler.consul_api import ConsulAgent, ConsulError, ConsulUnreachable
from reconciler.consul_settings import TLSClient
from testbed.tlsengine import ConsulCerts, write_consul_certs

TLS = {
    "ca_file": "/etc/consul.d/tls/ca.pem",
    "cert_file": "/etc/consul.d/tls/agent.pem",
    "key_file": "/etc/consul.d/tls/agent-key.pem",
}


def topology(tls: dict[str, Any] | None, **consul: Any) -> Topology:
    hosts = [
        {"name": "s1", "docker": "ssh://admin@127.0.0.1", "advertise": "127.0.0.1", "role": "server"},
        {"name": "c1", "docker": "ssh://admin@127.0.0.2", "advertise": "127.0.0.2", "role": "client"},
    ]
    if tls is not None:
        consul["tls"] = tls
    return load_topology(json.dumps({"cluster": "prod", "consul": consul, "hosts": hosts}).encode()).topology


def specs(t: Topology) -> dict[tuple[str, str], ContainerSpec]:
    return {(h.name, s.role): s for h in render(t).hosts for s in h.specs}


def test_the_agents_get_the_hosts_files_read_only_and_consuls_tls_settings() -> None:
    agent = specs(topology(TLS, client_address="127.0.0.9"))[("s1", "server")]
    assert [m.record() for m in agent.mounts][1:] == [
        "/etc/consul.d/tls/ca.pem:/consul/tls/ca.pem:ro",
        "/etc/consul.d/tls/agent.pem:/consul/tls/agent.pem:ro",
        "/etc/consul.d/tls/agent-key.pem:/consul/tls/agent-key.pem:ro",
    ]
    (config,) = agent.config_files
    assert config.path == "/consul/config/tls.json"
    assert json.loads(config.content) == {
        "tls": {
            "defaults": {
                "ca_file": "/consul/tls/ca.pem",
                "cert_file": "/consul/tls/agent.pem",
                "key_file": "/consul/tls/agent-key.pem",
                "verify_incoming": True,
                "verify_outgoing": True,
            },
            "internal_rpc": {"verify_server_hostname": True},
        },
        "ports": {"https": 8501, "http": -1},
    }
    # the gates, the leave and the registrator's wait go to the HTTPS port
    assert agent.agent_http == "https://127.0.0.9:8501"


def test_registrator_speaks_consul_tls_with_the_same_files() -> None:
    registrator = specs(topology({**TLS, "https_port": 8543}))[("c1", "registrator")]
    assert registrator.command[-1] == "consul-tls://127.0.0.2:8543"
    assert dict(registrator.env) == {
        "CONSUL_CACERT": "/consul/tls/ca.pem",
        "CONSUL_TLSCERT": "/consul/tls/agent.pem",
        "CONSUL_TLSKEY": "/consul/tls/agent-key.pem",
    }
    assert all(m.read_only for m in registrator.mounts if m.target.startswith("/consul/tls/"))


def test_plain_http_kept_open_when_asked_and_a_fleet_without_tls_unchanged() -> None:
    agent = specs(topology({**TLS, "http": True, "verify_incoming": False}))[("s1", "server")]
    settings = json.loads(agent.config_files[0].content)
    assert settings["ports"] == {"https": 8501, "http": 8500}
    assert settings["tls"]["defaults"]["verify_incoming"] is False
    plain = specs(topology(None))[("s1", "server")]
    assert plain.agent_http == "127.0.0.1:8500" and plain.config_files == () and len(plain.mounts) == 1
    assert "config_files" not in plain.record()


@pytest.mark.parametrize(
    ("tls", "path", "message"),
    [
        ({**TLS, "key_file": "agent-key.pem"}, "consul.tls.key_file", "is not an absolute path"),
        ({"ca_file": "/ca.pem", "cert_file": "/c.pem"}, "consul.tls.key_file", "required field is missing"),
        ({**TLS, "https_port": 0}, "consul.tls.https_port", "greater than or equal to 1"),
        ({**TLS, "verify": True}, "consul.tls.verify", "unknown field"),
    ],
)
def test_tls_settings_are_checked_where_declared(tls: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        topology(tls)
    assert caught.value.issues[0].path == path
    assert message in caught.value.issues[0].message


# --- the controller's side: TLSClient from flags and the environment -----------------------------------


def test_the_environment_is_read_as_consuls_cli_reads_it() -> None:
    env = {
        "CONSUL_CACERT": "/ca.pem",
        "CONSUL_CLIENT_CERT": "/c.pem",
        "CONSUL_CLIENT_KEY": "/k.pem",
        "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
    }
    assert TLSClient.resolve(None, env) == TLSClient("/ca.pem", "/c.pem", "/k.pem", "server.dc1.consul")
    assert TLSClient.resolve("/flag-ca.pem", env).ca == "/flag-ca.pem"  # the flag wins
    assert TLSClient.resolve(None, {}) == TLSClient() and TLSClient().verify is True
    with pytest.raises(ConsulError, match=r"\$CONSUL_CLIENT_CERT and \$CONSUL_CLIENT_KEY go together"):
        TLSClient.resolve(None, {"CONSUL_CLIENT_CERT": "/c.pem"})


# --- a real HTTPS agent API with verify_incoming ---------------------------------------------------------


class _Self(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"Config": {"NodeName": "s1"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(certs: ConsulCerts) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.agent_cert, certs.agent_key)
    context.load_verify_locations(certs.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # Consul's verify_incoming
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Self)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def certs(tmp_path: Path) -> ConsulCerts:
    return write_consul_certs(tmp_path, ["127.0.0.1"])


@pytest.fixture
def agent_https(certs: ConsulCerts) -> Iterator[str]:
    yield from _serve(certs)


def test_an_agent_with_verify_incoming_answers_the_controllers_client_certificate(
    certs: ConsulCerts, agent_https: str
) -> None:
    tls = TLSClient(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    assert ConsulAgent(agent_https, tls=tls).self_info()["Config"]["NodeName"] == "s1"


def test_without_the_client_certificate_or_the_ca_the_agent_is_not_reached(
    certs: ConsulCerts, agent_https: str
) -> None:
    with pytest.raises(ConsulError) as caught:
        ConsulAgent(agent_https, tls=TLSClient(str(certs.ca)), timeout=2).self_info()
    assert not isinstance(caught.value, ConsulUnreachable)  # a setting to fix, not an agent gone
    # (Consul, in Go, sends "certificate required"; this Python server closes the connection)
    assert str(caught.value).startswith(f"agent {agent_https}: TLS failed (agent/self): ")
    assert "$CONSUL_CLIENT_CERT and $CONSUL_CLIENT_KEY" in str(caught.value)
    with pytest.raises(ConsulError) as caught:  # the system CAs do not know the cluster's CA
        ConsulAgent(
            agent_https, tls=TLSClient(None, str(certs.client_cert), str(certs.client_key))
        ).self_info()
    assert "TLS failed (agent/self): certificate verify failed: " in str(caught.value)
    assert "--consul-ca or $CONSUL_CACERT" in str(caught.value)


def test_the_environment_gives_an_agent_its_tls_when_none_is_passed(
    certs: ConsulCerts, agent_https: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_CACERT", str(certs.ca))
    monkeypatch.setenv("CONSUL_CLIENT_CERT", str(certs.client_cert))
    monkeypatch.setenv("CONSUL_CLIENT_KEY", str(certs.client_key))
    assert ConsulAgent(agent_https).self_info()["Config"]["NodeName"] == "s1"


def test_a_certificate_without_the_address_is_checked_against_the_server_name(tmp_path: Path) -> None:
    """``consul tls cert create -server`` names server.<dc>.consul and localhost, not the address: with
    ``CONSUL_TLS_SERVER_NAME`` the controller checks that name, as Consul's CLI does."""
    certs = write_consul_certs(tmp_path, ["127.0.0.1"], ip_sans=False)
    client = (str(certs.ca), str(certs.client_cert), str(certs.client_key))
    for url in _serve(certs):
        with pytest.raises(ConsulError, match=r"not valid for '127\.0\.0\.1'"):  # not in the certificate
            ConsulAgent(url, tls=TLSClient(*client)).self_info()
        named = TLSClient(*client, server_name="server.dc1.consul")
        assert ConsulAgent(url, tls=named).self_info()["Config"]["NodeName"] == "s1"
        wrong = TLSClient(*client, server_name="server.dc2.consul")
        with pytest.raises(ConsulError, match=r"certificate does not name server\.dc2\.consul"):
            ConsulAgent(url, tls=wrong).self_info()
