"""A real OpenSSH server (Debian's openssh-server) on loopback in front of the test engines, so that the
product reaches them over ``ssh://`` as it would reach a remote Docker host.

One ``sshd`` listens on ``<fleet net>.7`` (127.0.10.7 unless CR_FLEET_NET says otherwise), one port
per engine; a ``Match LocalPort`` block sets that engine's ``DOCKER_HOST`` for the session, so the
``docker system dial-stdio`` that docker-py runs over SSH reaches that engine's unix socket, as it
would reach ``/var/run/docker.sock`` on a real remote host.

Everything is made by the test under ``<fleet root>/sshd`` every time the server starts: the server's
host key, a client key (in the authorized keys), and a client home (``HOME``) whose ``.ssh`` holds
the client key as ``id_ed25519`` and a ``known_hosts`` with the server's real host key, which is where
the product (docker-py, paramiko) looks for both. Host key checking stays on: paramiko refuses a host
whose key is missing from ``known_hosts`` or differs from it.

The server runs in the foreground as a child of the test process and dies with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed.controller_harness import die_with_parent, stop_child
from testbed.fleet import Engine, FleetError, fleet_net, fleet_root

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
ADDRESS_OCTET = 7  # in the fleet's /24: engines 1-5, Prometheus 6, the image test 8, the TLS engine 9


def gateway_address() -> str:
    return f"{fleet_net()}.{ADDRESS_OCTET}"


@dataclass
class SshGateway:
    root: Path
    address: str
    user: str
    ports: dict[str, int]  # engine name -> the port whose sessions reach that engine
    host_public_key: str  # "ssh-ed25519 AAAA..." of the server's host key
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        """A HOME for the product: .ssh/id_ed25519 (the client key) and .ssh/known_hosts."""
        return self.root / "home"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    def url(self, engine: Engine) -> str:
        return f"ssh://{self.user}@{self.address}:{self.ports[engine.name]}"

    def known_hosts_line(self, engine: Engine, public_key: str | None = None) -> str:
        """The known_hosts line for the engine's port (OpenSSH writes ``[addr]:port`` for a port other
        than 22), with the server's key or ``public_key``."""
        return f"[{self.address}]:{self.ports[engine.name]} {public_key or self.host_public_key}\n"

    def trust(self, engines: Sequence[Engine], public_key: str | None = None) -> None:
        """Write known_hosts for ``engines``: the server's key, or ``public_key`` (a wrong one)."""
        self.known_hosts.write_text("".join(self.known_hosts_line(e, public_key) for e in engines))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _keygen(path: Path, comment: str) -> str:
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    done = subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FleetError(f"ssh-keygen failed for {path}: {done.stderr.strip()}")
    kind, key = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {key}"


def another_host_key(root: Path) -> str:
    """A freshly made host key that is not the server's (for the wrong-host-key case)."""
    return _keygen(root / "other_host_key", "another host")


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def _config(root: Path, address: str, ports: dict[str, int], engines: Sequence[Engine]) -> str:
    by_name = {e.name: e for e in engines}
    lines = [f"ListenAddress {address}:{port}" for port in ports.values()]
    lines += [
        f"HostKey {root / 'host_key'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        # the test's folders under /tmp are not the user's home: OpenSSH's ownership checks do not apply
        "StrictModes no",
        "LogLevel VERBOSE",
        # docker-py opens a session (docker system dial-stdio) per connection of its pool
        "MaxSessions 64",
        "MaxStartups 64",
    ]
    for name, port in ports.items():
        lines += [f"Match LocalPort {port}", f"  SetEnv DOCKER_HOST={by_name[name].url}"]
    return "\n".join(lines) + "\n"


def start_ssh_gateway(engines: Sequence[Engine], root: Path | None = None) -> SshGateway:
    """An sshd in front of ``engines``, with new keys; raises FleetError when it cannot start."""
    if not os.access(SSHD, os.X_OK):
        raise FleetError(f"{SSHD} is missing: install openssh-server (scripts/bootstrap.sh does)")
    if shutil.which("docker") is None:
        raise FleetError("the docker command is missing: sshd sessions run `docker system dial-stdio`")
    root = root or fleet_root() / "sshd"
    shutil.rmtree(root, ignore_errors=True)
    (root / "home" / ".ssh").mkdir(parents=True)
    address = gateway_address()
    host_key = _keygen(root / "host_key", "consul-reconciler test sshd")
    client_key = _keygen(root / "home" / ".ssh" / "id_ed25519", "consul-reconciler tests")
    (root / "authorized_keys").write_text(client_key + "\n")
    ports = {engine.name: _free_port(address) for engine in engines}
    config = root / "sshd_config"
    config.write_text(_config(root, address, ports, engines))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation, as root only
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise FleetError(f"sshd refused its configuration {config}: {check.stderr.strip()}")
    gateway = SshGateway(root, address, getpass.getuser(), ports, host_key)
    with open(gateway.log_path, "ab") as log:
        gateway.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
    gateway.trust(engines)
    _wait_listening(gateway)
    return gateway


def _wait_listening(gateway: SshGateway, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(gateway.ports.values())
    while pending:
        if not gateway.running():
            raise FleetError(
                f"sshd exited at start; see {gateway.log_path}: {gateway.log_path.read_text()[-500:]}"
            )
        for port in list(pending):
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((gateway.address, port)) == 0:
                    pending.discard(port)
        if pending and time.monotonic() > deadline:
            raise FleetError(
                f"sshd did not listen on {gateway.address} ports {sorted(pending)} within {timeout:g}s"
            )
        if pending:
            time.sleep(0.05)


def stop_ssh_gateway(gateway: SshGateway) -> None:
    stop_child(gateway.process)
