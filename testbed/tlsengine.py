"""One extra Docker engine that also listens on ``tcp://127.0.0.1:<port>`` with mutual TLS.

The engine is a separate ``dockerd`` (see ``testbed/fleet.py``) with its own state folder
(``/tmp/crtls/e1`` unless ``CR_TLS_ROOT`` says otherwise) and two listeners:

* its unix socket ``$ROOT/e1/docker.sock``, for the tests' own inspection and for loading images;
* ``tcp://127.0.0.1:<free port>`` with ``--tlsverify``: only clients with a certificate signed by
  the test CA get in, and the server certificate is valid for 127.0.0.1 and localhost.

Certificates are generated with ``cryptography`` into ``$ROOT/certs`` every time the engine is
started: a CA, a server certificate, a client certificate, and a second, unrelated CA with a
client certificate of its own (for the wrong-CA and wrong-client cases). A running engine is
always stopped and started again, so its certificates and port are the ones returned.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.fleet import AGENT_IMAGE_1, STANDIN_IMAGES, Engine, FleetError, fleet_net

DEFAULT_ROOT = "/tmp/crtls"
ROOT_ENV = "CR_TLS_ROOT"
ADDRESS = f"{fleet_net()}.9"  # 127.0.10.9 unless CR_FLEET_NET says otherwise
LISTEN_HOST = "127.0.0.1"


def tls_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


# --------------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class CertFiles:
    """PEM files written by ``write_certs``."""

    ca: Path  # the CA the engine trusts
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by ``ca``
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_client_cert: Path  # signed by ``other_ca``: the engine rejects it
    other_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier],
    san: Sequence[x509.GeneralName] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    usages = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
    ca_cert, ca_key = ca
    key = _key()
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def write_certs(directory: Path) -> CertFiles:
    """Generate the CAs and certificates and write them as PEM files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("consul-reconciler test CA")
    other = _ca("unrelated test CA")
    server = _leaf(
        "127.0.0.1",
        ca,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address(LISTEN_HOST)), x509.DNSName("localhost")],
    )
    client = _leaf("consul-reconciler client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_client = _leaf("unrelated client", other, ExtendedKeyUsageOID.CLIENT_AUTH)
    return CertFiles(
        ca=_write_cert(directory / "ca.pem", ca[0]),
        server_cert=_write_cert(directory / "server-cert.pem", server[0]),
        server_key=_write_key(directory / "server-key.pem", server[1]),
        client_cert=_write_cert(directory / "cert.pem", client[0]),
        client_key=_write_key(directory / "key.pem", client[1]),
        other_ca=_write_cert(directory / "other-ca.pem", other[0]),
        other_client_cert=_write_cert(directory / "other-cert.pem", other_client[0]),
        other_client_key=_write_key(directory / "other-key.pem", other_client[1]),
    )


@dataclass(frozen=True)
class ConsulCerts:
    """PEM files for Consul agents with TLS (``write_consul_certs``): one CA, the agents' certificate
    and key, and a client certificate for the controller."""

    ca: Path
    agent_cert: Path
    agent_key: Path
    client_cert: Path
    client_key: Path


def write_consul_certs(
    directory: Path, addresses: Sequence[str], datacenter: str = "dc1", *, ip_sans: bool = True
) -> ConsulCerts:
    """Certificates as ``consul tls cert create -server`` makes them: SAN ``server.<dc>.consul`` and
    ``localhost`` (and, unless ``ip_sans`` is False, the agents' addresses), good for both server and
    client authentication (an agent presents the same certificate when it calls another). The test
    engines share one machine, so the hosts' "same path" is one file: one certificate names every
    agent's address. The key is readable by the agent's user (0644: the test image runs Consul as
    root, the official one as ``consul``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("consul-reconciler test Consul CA")
    san: list[x509.GeneralName] = [x509.DNSName(f"server.{datacenter}.consul"), x509.DNSName("localhost")]
    if ip_sans:
        san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    agent = _leaf(f"server.{datacenter}.consul", ca, both, san)
    client = _leaf("consul-reconciler controller", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    certs = ConsulCerts(
        ca=_write_cert(directory / "ca.pem", ca[0]),
        agent_cert=_write_cert(directory / "agent.pem", agent[0]),
        agent_key=_write_key(directory / "agent-key.pem", agent[1]),
        client_cert=_write_cert(directory / "controller.pem", client[0]),
        client_key=_write_key(directory / "controller-key.pem", client[1]),
    )
    certs.agent_key.chmod(0o644)
    return certs


# --------------------------------------------------------------------------------------------------
# The engine


def free_port(host: str = LISTEN_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TLSEngine(Engine):
    """A fleet-style engine that also serves the API on ``tcp://127.0.0.1:port`` with mutual TLS."""

    port: int = 0
    certs: CertFiles | None = None

    @property
    def tcp_url(self) -> str:
        return f"tcp://{LISTEN_HOST}:{self.port}"

    def command(self) -> list[str]:
        assert self.certs is not None
        return [
            *super().command(),
            "-H",
            self.tcp_url,
            "--tlsverify",
            "--tlscacert",
            str(self.certs.ca),
            "--tlscert",
            str(self.certs.server_cert),
            "--tlskey",
            str(self.certs.server_key),
        ]

    def wait_tcp(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((LISTEN_HOST, self.port), 1.0):
                return
            time.sleep(0.1)
        raise FleetError(
            f"{self.name}: nothing listens on {self.tcp_url}; tail of {self.log_path}:\n{self.log_tail()}"
        )


def _engine(state_dir: Path, port: int = 0, certs: CertFiles | None = None) -> TLSEngine:
    socket_path = state_dir / "docker.sock"
    return TLSEngine(
        index=9,
        name="tlshost",
        state_dir=state_dir,
        socket_path=socket_path,
        url=f"unix://{socket_path}",
        address=ADDRESS,
        port=port,
        certs=certs,
    )


def start_tls_engine(
    source: Engine, root: Path | None = None, tags: Sequence[str] = (*STANDIN_IMAGES, AGENT_IMAGE_1)
) -> TLSEngine:
    """(Re)start the TLS engine with fresh certificates and a free port; copy ``tags`` from ``source``."""
    base = root or tls_root()
    state_dir = base / "e1"
    if len(str(state_dir) + "/exec/containerd/containerd.sock.ttrpc") >= 100:
        raise FleetError(f"{state_dir} is too long for unix socket paths; set {ROOT_ENV} to a shorter folder")
    _engine(state_dir).stop()  # a leftover from an earlier session (certs and port unknown)
    certs_dir = base / "certs"
    shutil.rmtree(certs_dir, ignore_errors=True)
    engine = _engine(state_dir, free_port(), write_certs(certs_dir))
    engine.start()
    engine.wait_tcp()
    load_images(source, engine, tags)
    return engine


def load_images(source: Engine, target: Engine, tags: Sequence[str]) -> None:
    """``docker save`` each tag on ``source`` and ``docker load`` it into ``target`` (unix sockets)."""
    with contextlib.closing(source.client()) as src, contextlib.closing(target.client()) as dst:
        present = {tag: image.id for image in dst.images.list() for tag in image.tags}
        for tag in tags:
            image = src.images.get(tag)
            if present.get(tag) != image.id:  # missing, or an older build of the tag
                dst.images.load(b"".join(image.save(named=True)))
        missing = set(tags) - {tag for image in dst.images.list() for tag in image.tags}
        if missing:
            raise FleetError(f"loading {sorted(missing)} into {target.name} did not tag them")


def stop_tls_engine(engine: TLSEngine) -> None:
    """Remove every container of the TLS engine, then stop it."""
    if engine.is_running():
        with contextlib.closing(engine.client()) as client:
            for container in client.containers.list(all=True, ignore_removed=True):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)
    engine.stop()
