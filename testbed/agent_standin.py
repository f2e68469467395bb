"""A stand-in for a ``consul agent`` process in tests. It is a MODEL of Consul, NOT Consul.

No Consul binary can be had on the test machines, so test images run this program instead. It takes
the ``consul agent`` flags the product renders, answers a small part of Consul's HTTP API with
Consul's documented JSON shapes, and runs a simple but causal cluster model between the stand-ins
over real HTTP: a killed agent stops answering, a restarted one keeps its data dir (identity, raft
configuration), a graceful leave shrinks the peer set. Standard library only (Python 3.11); it runs
in the image of testbed/agent_image.py and directly on the host (tests/unit/test_agent_standin.py).

    python3 agent_standin.py agent -server -bootstrap-expect=3 -node=host1 -datacenter=dc1 \\
        -retry-join=127.0.10.2 -retry-join=127.0.10.3 -client 127.0.10.1 -advertise 127.0.10.1 -ui

Flags (``-flag=value`` or ``-flag value``): -server, -bootstrap-expect, -node (hostname), -bind,
-client (127.0.0.1; first of a list), -advertise (-bind, else -client, else 127.0.0.1), -retry-join
(repeats; a ``:port`` is dropped), -datacenter (dc1), -ui, -data-dir (/consul/data), -config-dir
(/consul/config: ``*.json`` files may set datacenter, node_name, server, bootstrap_expect,
retry_join, encrypt; flags win; a file that is not JSON is exit 1, as in Consul; a missing folder
counts as empty). Other flags are printed as ignored. The arguments are printed once at start.
``agent_standin.py version`` prints the version. SIGTERM/SIGINT: exit 0 in well under a second; a
server just stops (Consul's server defaults leave_on_terminate=false, skip_leave_on_interrupt=true:
the others see it failed), a client leaves gracefully first (Consul's client defaults).

ACLs (a config-dir file with Consul's keys, e.g. ``{"acl": {"enabled": true, "default_policy":
"deny", "tokens": {"initial_management": "T"}}}``; ``master`` is the older name): with ACLs on and
the default policy deny, a request without the management token is refused as Consul refuses it
(the token from ``X-Consul-Token``, ``Authorization: Bearer`` or ``?token=``; agent/http.go
parseToken): /v1/agent/self needs agent:read, /v1/agent/leave agent:write, the operator endpoints
operator:read (transfer-leader operator:write): 403 ``Permission denied: token with AccessorID
'<anonymous>' lacks permission '<rule>' on "<node>"...`` (acl/errors.go); an unknown token is 403
``ACL not found``; /v1/agent/members is filtered by node:read, so anonymous sees ``[]`` (agent/
agent_endpoint.go AgentMembers, filterMembers); /v1/status/* need no token (as in Consul).

HTTP on ``<client>:8500`` (0.0.0.0: every address; peers then use the advertise address). The
"server RPC address" is ``<advertise>:8300``, a string only: nothing listens there.

* GET /v1/agent/self: {"Config": {Datacenter, PrimaryDatacenter, NodeName, NodeID, Revision, Server,
  Version}, "Member": <its members entry>, "Stats": {consul, raft, serf_lan}, "Meta"}.
* GET /v1/agent/members: [{Name, Addr, Port: 8301, Tags: {role: consul|node, dc, id, port: "8300"
  (servers), expect, vsn, build...}, Status: 1 alive|3 left|4 failed, Protocol*, Delegate*}].
* PUT /v1/agent/leave: synchronous, as Consul's (agent/agent_endpoint.go AgentLeave: Leave, then
  ShutdownAgent; agent/consul/server.go Server.Leave): a leaving leader with other voters removes
  itself from the raft configuration and steps down (a lone server keeps its configuration); the
  agent leaves the gossip (the others see it ``left``); a server then drains for STANDIN_LEAVE_DRAIN
  (Consul's leave_drain_time, 5 s) and, as a follower, waits (at most STANDIN_LEAVE_TIMEOUT,
  Consul's raftRemoveGracePeriod, 5 s) until the leader has removed it from the raft configuration.
  Only then the answer: 200, empty body; the process exits 0 (also if the caller gave up waiting).
  A client leaves the gossip without a drain (agent/consul/client.go Client.Leave).
* GET /v1/status/leader: "ip:8300" or "". GET /v1/status/peers: the addresses of every server in
  the raft configuration, non-voters included (as Consul's Status.Peers).
* GET /v1/operator/raft/configuration: {"Servers": [{ID, Node, Address, Leader, Voter,
  ProtocolVersion: "3"}], "Index"}; without a leader 500 "No cluster leader" (``?stale``: local).
* GET /v1/operator/autopilot/health: 200 healthy, 429 not, same body {Healthy, FailureTolerance,
  Servers: [{ID, Name, Address, SerfStatus, Version, Leader, LastContact, LastTerm, LastIndex,
  Healthy, Voter, StableSince}]}, FailureTolerance = max(0, healthy voters - quorum); without a
  leader 500 "No cluster leader".
* POST /v1/operator/raft/transfer-leader[?id=<node id>]: {"Success": true}; 500 if no such peer.
* GET /v1/snapshot: an archive in Consul's format (snapshot/snapshot.go New, snapshot/archive.go write):
  gzip of a tar holding meta.json (raft's SnapshotMeta, Index = the raft configuration's index),
  state.bin (here: the model's raft configuration as JSON, not Consul's state store) and SHA256SUMS;
  Content-Type application/x-gzip, X-Consul-Index the snapshot's index; answered by the leader
  (agent/consul/snapshot_endpoint.go: without ``?stale`` a follower forwards it), without a leader 500
  "No cluster leader"; with ACLs it needs acl:write (acl/authorizer.go SnapshotAllowed). No restore.
* A follower forwards raft/configuration, autopilot/health, transfer-leader and snapshot to the
  leader; a client forwards those and status/* to a server it knows. agent/* is local (clients
  gossip too).
* POST /v1/internal/standin/state: the model's push-pull gossip exchange (not Consul's).

The model. Every gossip interval each agent exchanges its view with every member it knows and with
its -retry-join addresses; a member not heard from directly for the failure timeout is failed.
* Identity: a node ID (uuid) in ``<data-dir>/node-id``; the raft configuration and term in
  ``<data-dir>/raft.json``. An agent restarted with its data dir keeps both.
* Bootstrap: a server without a configuration that sees bootstrap-expect servers alive (itself
  included), none of which has one, makes them all voters. It never re-bootstraps.
* Leader: only while a majority of the configuration's voters is heard from. Kept while it is alive,
  a voter, the same process (a restart means a new election) and heard from within the heartbeat
  timeout; otherwise, once the election timeout has run since the leader was last heard from, the
  alive voter with the smallest node ID, at term+1. Higher terms win in the gossip, so servers agree
  within a round or two. The election timeout is raft's: a follower without a leader's heartbeat for
  a random time in [HeartbeatTimeout, 2 x HeartbeatTimeout] starts an election (hashicorp/raft
  raft.go runFollower, randomTimeout), where HeartbeatTimeout is 1 s x STANDIN_RAFT_MULTIPLIER
  (Consul's performance.raft_multiplier, 5 by default; tests may lower it, never to 0). The first
  election after a bootstrap waits the same way. Without a leader, /v1/status/leader answers "".
* The leader adds a new alive server of its datacenter as a non-voter (dropping a dead entry at the
  same address: a replaced server), promotes it after STANDIN_STABILIZE seconds of being alive
  (autopilot's ServerStabilizationTime) and removes servers that left. A killed server stays, a
  failed voter. The configuration with the highest index wins in the gossip: followers copy it.
* Autopilot: a server is healthy when alive, a voter, alive for STANDIN_STABILIZE seconds and heard
  from within the failure timeout; the cluster when it has a leader and every server is healthy.
* Test knob: while ``<data-dir>/standin-refuse-healthy`` exists, that server is never promoted to
  voter and reports itself unhealthy, so a rollout gate that waits on it must wait or fail.
* Test knob: while ``<data-dir>/standin-refuse-leave`` exists, PUT /v1/agent/leave fails at once with
  500 and the agent stays a running member, as when Consul's Leave returns an error (AgentLeave
  answers it as a 500: agent/agent_endpoint.go).

Environment, in seconds: STANDIN_GOSSIP_INTERVAL (0.2), STANDIN_FAILURE_TIMEOUT (1.0),
STANDIN_STABILIZE (2.0), STANDIN_LEAVE_DRAIN (5.0, Consul's leave_drain_time), STANDIN_LEAVE_TIMEOUT
(5.0, Consul's raftRemoveGracePeriod), STANDIN_HTTP_TIMEOUT (0.3, to peers); STANDIN_RAFT_MULTIPLIER
(5, a factor > 0); STANDIN_VERSION (1.20.0-standin).

Not modelled: real raft (logs, votes, partitions), KV, catalog, sessions, ACL policies (one
management token), TLS, encryption,
WAN federation, dead-server cleanup, redundancy zones, DNS, Consul's error texts beyond these.
"""

from __future__ import annotations

import signal
import threading

# SIGTERM/SIGINT are caught before anything else is imported or parsed: as a container's PID 1 the
# process would otherwise ignore a SIGTERM sent while it starts (the kernel drops signals PID 1 has no
# handler for), and `docker stop` would wait its whole timeout. Consul's Go runtime also handles
# signals from its first milliseconds.
_STOP = threading.Event()


def _on_signal(signum: int, _frame: object) -> None:
    _STOP.set()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

import datetime  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

HTTP_PORT = 8500
RPC_PORT = 8300
SERF_PORT = 8301
REFUSE_MARKER = "standin-refuse-healthy"
REFUSE_LEAVE_MARKER = "standin-refuse-leave"
STATE_PATH = "/v1/internal/standin/state"
FORWARDED = "X-Standin-Forwarded"
STATUS_CODES = {"alive": 1, "leaving": 2, "left": 3, "failed": 4}
VALUE_FLAGS = {
    "bootstrap-expect",
    "node",
    "bind",
    "client",
    "advertise",
    "retry-join",
    "datacenter",
    "data-dir",
    "config-dir",
}
BOOL_FLAGS = {"server", "ui"}
ANONYMOUS_TOKEN = "00000000-0000-0000-0000-000000000002"  # Consul's anonymous token's AccessorID
ACL_RULES = {  # what Consul requires of each endpoint here (agent/agent_endpoint.go, operator_endpoint.go)
    "/v1/agent/self": "agent:read",
    "/v1/agent/leave": "agent:write",
    "/v1/operator/raft/configuration": "operator:read",
    "/v1/operator/autopilot/health": "operator:read",
    "/v1/operator/raft/transfer-leader": "operator:write",
    "/v1/snapshot": "acl:write",
}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"agent_standin: [{time.monotonic() - _STARTED:7.3f}] {message}", flush=True)


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


@dataclass(frozen=True)
class Timings:
    gossip: float = 0.2
    failure: float = 1.0
    stabilize: float = 2.0
    leave: float = 5.0  # Consul's raftRemoveGracePeriod (agent/consul/server.go)
    http: float = 0.3
    drain: float = 5.0  # Consul's leave_drain_time default
    raft_multiplier: float = 5.0  # Consul's performance.raft_multiplier default

    def __post_init__(self) -> None:
        if self.raft_multiplier <= 0:
            raise ValueError("STANDIN_RAFT_MULTIPLIER must be above 0 (elections take time in Consul)")

    @property
    def heartbeat(self) -> float:
        """raft's HeartbeatTimeout as Consul sets it: 1000 ms x raft_multiplier."""
        return 1.0 * self.raft_multiplier

    @classmethod
    def from_env(cls) -> Timings:
        return cls(
            _env("STANDIN_GOSSIP_INTERVAL", 0.2),
            _env("STANDIN_FAILURE_TIMEOUT", 1.0),
            _env("STANDIN_STABILIZE", 2.0),
            _env("STANDIN_LEAVE_TIMEOUT", 5.0),
            _env("STANDIN_HTTP_TIMEOUT", 0.3),
            _env("STANDIN_LEAVE_DRAIN", 5.0),
            _env("STANDIN_RAFT_MULTIPLIER", 5.0),
        )


@dataclass
class Options:
    server: bool = False
    ui: bool = False
    bootstrap_expect: int = 0
    node: str = field(default_factory=socket.gethostname)
    bind: str = "0.0.0.0"
    client: str = "127.0.0.1"
    advertise: str = ""
    retry_join: list[str] = field(default_factory=list)
    datacenter: str = "dc1"
    data_dir: str = "/consul/data"
    config_dir: str = "/consul/config"
    encrypt: bool = False
    acl_deny: bool = False  # ACLs enabled with default_policy deny
    management_token: str = ""
    ignored: list[str] = field(default_factory=list)


def _truthy(text: str) -> bool:
    return text.lower() in ("1", "t", "true")


def parse_flags(args: list[str]) -> Options:
    """``consul agent`` flags (after ``agent``) -> Options; unknown flags are collected as ignored."""
    values: dict[str, list[str]] = {}
    bools: dict[str, bool] = {}
    ignored: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            ignored.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in BOOL_FLAGS:
            bools[name] = not eq or _truthy(value)
        elif name in VALUE_FLAGS:
            if not eq:
                if i >= len(args):
                    raise ValueError(f"flag needs an argument: -{name}")
                value, i = args[i], i + 1
            values.setdefault(name, []).append(value)
        else:  # unknown: a following word that is not a flag is its value (agent takes no arguments)
            if not eq and i < len(args) and not args[i].startswith("-"):
                value, eq, i = args[i], "=", i + 1
            ignored.append(f"-{name}{eq}{value}")
    opts = Options(server=bools.get("server", False), ui=bools.get("ui", False), ignored=ignored)
    config = _load_config_dir((values.get("config-dir") or [opts.config_dir])[-1])
    opts.server = bools.get("server", bool(config.get("server", False)))
    last = {name: vals[-1] for name, vals in values.items()}
    opts.bootstrap_expect = int(last.get("bootstrap-expect", config.get("bootstrap_expect", 0)))
    opts.node = last.get("node", str(config.get("node_name") or opts.node))
    opts.datacenter = last.get("datacenter", str(config.get("datacenter") or opts.datacenter))
    opts.bind = last.get("bind", opts.bind)
    opts.client = (last.get("client", opts.client).split() or [opts.client])[0]
    opts.data_dir = last.get("data-dir", opts.data_dir)
    opts.config_dir = last.get("config-dir", opts.config_dir)
    opts.retry_join = [str(a) for a in config.get("retry_join", [])] + values.get("retry-join", [])
    opts.encrypt = bool(config.get("encrypt"))
    acl: dict[str, Any] = config["acl"] if isinstance(config.get("acl"), dict) else {}
    tokens: dict[str, Any] = acl["tokens"] if isinstance(acl.get("tokens"), dict) else {}
    opts.acl_deny = _truthy(str(acl.get("enabled", False))) and acl.get("default_policy", "allow") == "deny"
    opts.management_token = str(tokens.get("initial_management") or tokens.get("master") or "")
    unspecified = ("0.0.0.0", "::", "[::]")
    fallback = next((a for a in (opts.bind, opts.client) if a not in unspecified), "127.0.0.1")
    opts.advertise = last.get("advertise", fallback)
    return opts


def _load_config_dir(folder: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    path = Path(folder)
    for file in sorted(path.glob("*.json")) if path.is_dir() else []:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"Error loading config file {file}: {error}") from None
        if isinstance(data, dict):
            merged.update({k: v for k, v in data.items() if k != "retry_join"})
            merged["retry_join"] = merged.get("retry_join", []) + list(data.get("retry_join", []))
    return merged


@dataclass
class Member:
    """One agent as some agent sees it (the wire form is exchanged in the gossip)."""

    name: str
    node_id: str
    addr: str
    http: str
    server: bool
    dc: str
    inc: float  # incarnation: the wall-clock start time of the process, newer wins
    status: str = "alive"
    refuse: bool = False
    expect: int = 0
    version: str = ""
    has_raft: bool = False
    last_heard: float = 0.0  # local monotonic time of the last direct contact
    alive_since: float | None = None  # local monotonic time it became (directly confirmed) alive

    def wire(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "ID": self.node_id,
            "Addr": self.addr,
            "HTTP": self.http,
            "Server": self.server,
            "DC": self.dc,
            "Inc": self.inc,
            "Status": self.status,
            "Refuse": self.refuse,
            "Expect": self.expect,
            "Version": self.version,
            "HasRaft": self.has_raft,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Member:
        return cls(
            str(d["Name"]),
            str(d["ID"]),
            str(d["Addr"]),
            str(d["HTTP"]),
            bool(d["Server"]),
            str(d["DC"]),
            float(d["Inc"]),
            str(d["Status"]),
            bool(d.get("Refuse")),
            int(d.get("Expect", 0)),
            str(d.get("Version", "")),
            bool(d.get("HasRaft")),
        )

    def serf(self) -> dict[str, Any]:
        """The /v1/agent/members entry."""
        tags = {
            "role": "consul" if self.server else "node",
            "dc": self.dc,
            "id": self.node_id,
            "vsn": "2",
            "vsn_min": "2",
            "vsn_max": "3",
            "build": f"{self.version}:standin",
        }
        if self.server:
            tags.update({"port": str(RPC_PORT), "raft_vsn": "3", "wan_join_port": "8302"})
            if self.expect:
                tags["expect"] = str(self.expect)
        else:
            tags["segment"] = ""
        return {
            "Name": self.name,
            "Addr": self.addr,
            "Port": SERF_PORT,
            "Tags": tags,
            "Status": STATUS_CODES.get(self.status, 0),
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }


def _key(raft: dict[str, Any] | None) -> tuple[int, list[tuple[str, bool]]]:
    if raft is None:
        return (0, [])
    return (int(raft["Index"]), sorted((str(s["ID"]), bool(s["Voter"])) for s in raft["Servers"]))


def _rfc3339(monotonic_at: float) -> str:
    wall = time.time() - (time.monotonic() - monotonic_at)
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _go_duration(seconds: float) -> str:
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def http_call(
    method: str, url: str, body: bytes | None, timeout: float, headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    """(status, body, content type); raises OSError when the peer does not answer."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read(), error.headers.get("Content-Type", "")


def snapshot_archive(index: int, term: int, state: bytes) -> bytes:
    """gzip(tar(meta.json, state.bin, SHA256SUMS)), as Consul's snapshot.New writes a snapshot."""
    meta = {"Version": 1, "ID": f"{term}-{index}-{int(time.time() * 1000)}", "Index": index, "Term": term}
    meta_bytes = json.dumps({**meta, "Size": len(state)}).encode() + b"\n"
    members = [("meta.json", meta_bytes), ("state.bin", state)]
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in members).encode()
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in [*members, ("SHA256SUMS", sums)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(tarred.getvalue())


class Agent:
    def __init__(self, opts: Options, timings: Timings) -> None:
        self.opts, self.t = opts, timings
        self.data = Path(opts.data_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        id_file = self.data / "node-id"
        node_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not node_id:
            node_id = str(uuid.uuid4())
            id_file.write_text(node_id)
        unspecified = opts.client in ("0.0.0.0", "::", "[::]")
        self.me = Member(
            opts.node,
            node_id,
            opts.advertise,
            opts.advertise if unspecified else opts.client,
            opts.server,
            opts.datacenter,
            time.time(),
            expect=opts.bootstrap_expect,
            version=os.environ.get("STANDIN_VERSION") or "1.20.0-standin",
            alive_since=time.monotonic(),
        )
        self.lock = threading.RLock()
        self.members: dict[str, Member] = {}
        self.raft: dict[str, Any] | None = None
        self.term = 0
        self.claim: tuple[str, float] | None = None  # (leader node id, its incarnation)
        self.leader: str | None = None
        self.leaving = False
        self.election_due: float | None = None  # when this server starts an election (no leader)
        self.done = threading.Event()
        self.wake = threading.Event()
        saved = self.data / "raft.json"
        if opts.server and saved.is_file():
            stored = json.loads(saved.read_text())
            if stored.get("Index"):
                self.raft = {"Index": stored["Index"], "Servers": stored["Servers"]}
            self.term = int(stored.get("Term", 0))

    # -- helpers (call with the lock held) ----------------------------------------------------------
    @property
    def rpc_addr(self) -> str:
        return f"{self.me.addr}:{RPC_PORT}"

    def _save(self) -> None:
        data = {**(self.raft or {"Index": 0, "Servers": []}), "Term": self.term}
        tmp = self.data / "raft.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.data / "raft.json")

    def servers(self) -> list[dict[str, Any]]:
        return list(self.raft["Servers"]) if self.raft else []

    def _stable(self, m: Member, now: float) -> bool:
        return m.status == "alive" and m.alive_since is not None and now - m.alive_since >= self.t.stabilize

    def _by_id(self) -> dict[str, Member]:
        found = {m.node_id: m for m in self.members.values()}
        found[self.me.node_id] = self.me
        return found

    def _heard(self, node_id: str, now: float) -> bool:
        """Still taking part in raft (heard from recently; a leaving member still counts)."""
        if node_id == self.me.node_id:
            return True
        m = self._by_id().get(node_id)
        return m is not None and m.status != "failed" and now - m.last_heard <= self.t.failure

    def _candidate(self, node_id: str, now: float) -> bool:
        m = self._by_id().get(node_id)
        return m is not None and m.status == "alive" and self._heard(node_id, now)

    def state(self) -> dict[str, Any]:
        self.me.refuse = (self.data / REFUSE_MARKER).exists()
        self.me.has_raft = self.raft is not None
        return {
            "Self": self.me.wire(),
            "Members": [m.wire() for m in self.members.values()],
            "Raft": self.raft,
            "Term": self.term,
            "Claim": list(self.claim) if self.claim else None,
        }

    # -- gossip ---------------------------------------------------------------------------------------
    def gossip_loop(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            self.gossip_round()
            self.wake.wait(max(0.0, self.t.gossip - (time.monotonic() - started)))
            self.wake.clear()

    def gossip_round(self) -> None:
        with self.lock:
            payload = json.dumps(self.state()).encode()
            hosts = {h if h.count(":") != 1 else h.split(":")[0] for h in self.opts.retry_join}
            hosts |= {m.http for m in self.members.values() if m.status != "left"}
            hosts.discard(self.me.http)
        answers: list[dict[str, Any]] = []

        def poll(host: str) -> None:
            try:
                status, body, _ = http_call(
                    "POST",
                    f"http://{host}:{HTTP_PORT}{STATE_PATH}",
                    payload,
                    self.t.http,
                    {"Content-Type": "application/json"},
                )
                if status == 200:
                    answers.append(json.loads(body))
            except (OSError, ValueError):
                pass

        threads = [threading.Thread(target=poll, args=(h,), daemon=True) for h in sorted(hosts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.t.http + 0.2)
        with self.lock:
            for answer in list(answers):
                self.merge(answer)
            self.tick()

    def merge(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        peer = Member.from_wire(state["Self"])
        if peer.name == self.me.name or peer.dc != self.me.dc:
            return
        m = self.members.get(peer.name)
        if m is None or peer.inc >= m.inc:  # direct contact: the peer speaks for itself
            peer.last_heard = now
            if peer.status == "alive":
                same = m is not None and m.inc == peer.inc and m.status == "alive"
                peer.alive_since = m.alive_since if same and m is not None and m.alive_since else now
            if m is not None and m.status != peer.status:
                log(f"member {peer.name} is {peer.status}")
            self.members[peer.name] = peer
        for entry in state.get("Members", []):
            self._rumor(Member.from_wire(entry), now)
        if not (peer.server and self.opts.server):
            return
        raft = state.get("Raft")
        if raft is not None and _key(raft) > _key(self.raft):
            self.raft = raft
            self._save()
        claim = tuple(state["Claim"]) if state.get("Claim") else None
        term = int(state.get("Term", 0))
        newer = term > self.term
        same = term == self.term and claim is not None and (self.claim is None or claim[0] < self.claim[0])
        if newer or same:
            self.term, self.claim = term, (str(claim[0]), float(claim[1])) if claim else None
            self._save()

    def _rumor(self, r: Member, now: float) -> None:
        """Second-hand news about a member: never refreshes its liveness, except a new incarnation."""
        if r.name == self.me.name or r.dc != self.me.dc:
            return
        m = self.members.get(r.name)
        if m is None or r.inc > m.inc:
            r.alive_since = None  # confirmed by our own contact only
            r.last_heard = now if r.status == "alive" else 0.0
            self.members[r.name] = r
        elif r.inc == m.inc and r.status == "left" and m.status != "left":
            m.status, m.alive_since = "left", None
            log(f"member {m.name} is left")

    # -- the model's clock ----------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        for m in self.members.values():
            if m.status == "alive" and now - m.last_heard > self.t.failure:
                m.status, m.alive_since = "failed", None
                log(f"member {m.name} is failed")
        if not self.opts.server:
            return
        if self.raft is None:
            self._bootstrap()
        if self.raft is None:
            self.leader = None
            return
        self._elect(now)
        if self.leader == self.me.node_id and not self.leaving:
            self._lead(now)

    def _bootstrap(self) -> None:
        alive = [self.me] + [
            m for m in self.members.values() if m.server and m.status == "alive" and m.alive_since is not None
        ]
        if self.opts.bootstrap_expect <= 0 or len(alive) < self.opts.bootstrap_expect:
            return
        if any(m.has_raft for m in alive[1:]):
            return  # somebody has a configuration: join it instead (it arrives in the gossip)
        servers = [self._entry(m, voter=True) for m in sorted(alive, key=lambda m: m.node_id)]
        self.raft = {"Index": 1, "Servers": servers}
        self._save()
        log(f"bootstrapped a raft configuration of {len(servers)} voters")

    def _entry(self, m: Member, voter: bool) -> dict[str, Any]:
        return {"ID": m.node_id, "Node": m.name, "Address": f"{m.addr}:{RPC_PORT}", "Voter": voter}

    def _elect(self, now: float) -> None:
        assert self.raft is not None
        voters = [str(s["ID"]) for s in self.raft["Servers"] if s["Voter"]]
        if not voters or sum(self._heard(v, now) for v in voters) < len(voters) // 2 + 1:
            if self.leader is not None:
                log("no cluster leader: quorum lost")
            self.claim = self.leader = None
            self.election_due = None
            return
        by_id = self._by_id()
        if self.claim is not None and (
            self.claim[0] in voters
            and self._candidate(self.claim[0], now)
            and by_id[self.claim[0]].inc == self.claim[1]
        ):
            self.election_due = None
        else:
            # No leader: raft elects once a follower's election timeout has run without a heartbeat,
            # a random time in [HeartbeatTimeout, 2 x HeartbeatTimeout] (hashicorp/raft randomTimeout).
            if self.leader is not None:
                log("no cluster leader: the leader is gone; an election follows its timeout")
            self.leader = None
            if self.election_due is None:
                lost = by_id.get(self.claim[0]) if self.claim is not None else None
                since = now if lost is None or lost is self.me else min(now, lost.last_heard or now)
                self.election_due = since + random.uniform(self.t.heartbeat, 2 * self.t.heartbeat)
            if now < self.election_due:
                return
            candidates = sorted(v for v in voters if self._candidate(v, now))
            if not candidates:
                self.claim = None
                return
            self.election_due = None
            self.term += 1
            self.claim = (candidates[0], by_id[candidates[0]].inc)
            self._save()
        if self.leader != self.claim[0]:
            log(f"leader is {by_id[self.claim[0]].name} (term {self.term})")
        self.leader = self.claim[0]

    def _lead(self, now: float) -> None:
        """The leader's duties: drop servers that left, add joiners, promote stable ones."""
        assert self.raft is not None
        by_id = self._by_id()
        servers = self.servers()
        kept = [dict(s) for s in servers if not (s["ID"] in by_id and by_id[s["ID"]].status == "left")]
        known = {s["ID"] for s in kept}
        for m in sorted(self.members.values(), key=lambda m: m.node_id):
            if m.server and m.status == "alive" and m.alive_since is not None and m.node_id not in known:
                address = f"{m.addr}:{RPC_PORT}"
                kept = [s for s in kept if s["Address"] != address or self._heard(s["ID"], now)]
                kept.append(self._entry(m, voter=False))
                log(f"added {m.name} to the raft configuration as a non-voter")
        for s in kept:
            joiner = by_id.get(s["ID"])
            if not s["Voter"] and joiner is not None and self._stable(joiner, now) and not joiner.refuse:
                s["Voter"] = True
                log(f"promoted {joiner.name} to voter")
        if kept != servers:
            self.raft = {"Index": int(self.raft["Index"]) + 1, "Servers": kept}
            self._save()

    # -- views ----------------------------------------------------------------------------------------
    def leader_addr(self) -> str:
        for s in self.servers():
            if s["ID"] == self.leader:
                return str(s["Address"])
        return ""

    def raft_view(self) -> dict[str, Any]:
        servers = [
            {
                "ID": s["ID"],
                "Node": s["Node"],
                "Address": s["Address"],
                "Leader": s["ID"] == self.leader,
                "Voter": s["Voter"],
                "ProtocolVersion": "3",
            }
            for s in self.servers()
        ]
        return {"Servers": servers, "Index": (self.raft or {}).get("Index", 0)}

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        by_id = self._by_id()
        servers, voters, healthy_voters = [], 0, 0
        for s in self.servers():
            m = by_id.get(s["ID"])
            status = "failed" if m is None else m.status
            me = s["ID"] == self.me.node_id
            last = 0.0 if me or m is None else now - m.last_heard
            since = m.alive_since if m is not None else None
            stable = status == "alive" and since is not None and now - since >= self.t.stabilize
            refuse = m is not None and m.refuse
            healthy = stable and bool(s["Voter"]) and last <= self.t.failure and not refuse
            voters += bool(s["Voter"])
            healthy_voters += bool(s["Voter"]) and healthy
            servers.append(
                {
                    "ID": s["ID"],
                    "Name": s["Node"],
                    "Address": s["Address"],
                    "SerfStatus": status,
                    "Version": m.version if m else "",
                    "Leader": s["ID"] == self.leader,
                    "LastContact": _go_duration(last) if m else "-1ns",
                    "LastTerm": self.term,
                    "LastIndex": self.raft["Index"] if self.raft else 0,
                    "Healthy": healthy,
                    "Voter": bool(s["Voter"]),
                    "StableSince": _rfc3339(since if since is not None else now),
                }
            )
        tolerance = max(0, healthy_voters - (voters // 2 + 1))
        ok = self.leader is not None and all(s["Healthy"] for s in servers)
        return {"Healthy": ok, "FailureTolerance": tolerance, "Servers": servers}

    def self_view(self) -> dict[str, Any]:
        self.state()  # refreshes refuse/has_raft
        me = Member(**{**self.me.__dict__, "status": "left" if self.leaving else "alive"})
        consul = {"server": str(self.opts.server).lower(), "known_datacenters": "1"}
        stats: dict[str, Any] = {
            "consul": consul,
            "serf_lan": {"members": str(len(self.members) + 1), "encrypted": str(self.opts.encrypt).lower()},
        }
        if self.opts.server:
            is_leader = self.leader == self.me.node_id
            consul.update(
                {"leader": str(is_leader).lower(), "leader_addr": self.leader_addr(), "bootstrap": "false"}
            )
            stats["raft"] = {
                "state": "Leader" if is_leader else "Follower",
                "term": str(self.term),
                "last_log_index": str((self.raft or {}).get("Index", 0)),
                "num_peers": str(max(0, len(self.servers()) - 1)),
            }
        else:
            alive = [m for m in self.members.values() if m.server and m.status == "alive"]
            consul["known_servers"] = str(len(alive))
        config = {
            "Datacenter": self.me.dc,
            "PrimaryDatacenter": self.me.dc,
            "NodeName": self.me.name,
            "NodeID": self.me.node_id,
            "Revision": "standin",
            "Server": self.opts.server,
            "Version": self.me.version,
        }
        meta = {"consul-network-segment": "", "consul-version": self.me.version}
        return {"Config": config, "Member": me.serf(), "Stats": stats, "Meta": meta}

    def members_view(self) -> list[dict[str, Any]]:
        me = Member(**{**self.me.__dict__, "status": "left" if self.leaving else "alive"})
        return [m.serf() for m in sorted([me, *self.members.values()], key=lambda m: m.name)]

    # -- actions --------------------------------------------------------------------------------------
    def transfer_leader(self, target: str | None) -> str | None:
        """Move leadership (on the leader); an error text, or None when done."""
        now = time.monotonic()
        voters = [s["ID"] for s in self.servers() if s["Voter"]]
        candidates = sorted(v for v in voters if v != self.me.node_id and self._candidate(v, now))
        if target is not None and target not in candidates:
            return f"cannot find peer {target} among the alive voters"
        if not candidates:
            return "cannot find a peer to transfer leadership to"
        chosen = target or candidates[0]
        self.term += 1
        self.claim = (chosen, self._by_id()[chosen].inc)
        self.leader = chosen
        self._save()
        log(f"leadership transferred to {self._by_id()[chosen].name} (term {self.term})")
        self.wake.set()
        return None

    def leave(self) -> None:
        """Graceful leave, in Consul's order (agent/consul/server.go Server.Leave): a leader removes
        itself from the raft configuration and steps down; the agent leaves the gossip; a server drains
        for leave_drain_time and, as a follower, waits to be removed from the raft configuration (at
        most raftRemoveGracePeriod). The caller (PUT /v1/agent/leave) answers after this, then the
        agent shuts down."""
        with self.lock:
            if self.leaving:
                return
            self.leaving = True
            self.me.status = "left"
            was_leader = self.raft is not None and self.leader == self.me.node_id
            voters = sum(1 for s in self.servers() if s["Voter"])
            if was_leader and self.raft is not None and voters > 1:  # Consul: isLeader && numPeers > 1
                servers = [s for s in self.raft["Servers"] if s["ID"] != self.me.node_id]
                self.raft = {"Index": int(self.raft["Index"]) + 1, "Servers": servers}
                self.claim = self.leader = None
                self._save()
                log("left the raft configuration and stepped down")
        log("leaving the cluster")
        self.gossip_round()
        if self.opts.server:
            log(f"waiting to drain RPC traffic for {self.t.drain:g}s")
            time.sleep(self.t.drain)
        deadline = time.monotonic() + self.t.leave
        while self.opts.server and not was_leader and time.monotonic() < deadline:
            with self.lock:
                ids = {s["ID"] for s in self.servers()}
            if self.me.node_id not in ids:
                break
            time.sleep(self.t.gossip / 4)
        if self.opts.server:
            self.gossip_round()  # let the others see the final state

    def shut_down(self) -> None:
        self.done.set()
        self.wake.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(self.command)

    do_PUT = do_POST = do_DELETE = do_GET

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if body or ctype != "application/json":
            self.send_header("Content-Type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode())

    def _text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _serve(self, method: str) -> None:
        agent = self.server.agent
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        routes = {
            "/v1/agent/self": "GET",
            "/v1/agent/members": "GET",
            "/v1/agent/leave": "PUT",
            "/v1/status/leader": "GET",
            "/v1/status/peers": "GET",
            "/v1/operator/raft/configuration": "GET",
            "/v1/operator/autopilot/health": "GET",
            "/v1/operator/raft/transfer-leader": "POST",
            "/v1/snapshot": "GET",
            STATE_PATH: "POST",
        }
        if url.path not in routes:
            return self._text(404, "404 page not found\n")
        if method != routes[url.path]:
            return self._text(405, f"method {method} not allowed")
        try:
            self._route(agent, url.path, query, body)
        except Exception as error:  # a bad request or a bug: say it, keep serving
            log(f"{method} {self.path} failed: {error!r}")
            self._text(500, f"agent_standin error: {error!r}")

    def _token(self, query: dict[str, list[str]]) -> str:
        """The request's ACL token, where Consul looks for it (agent/http.go parseToken)."""
        token = self.headers.get("X-Consul-Token") or ""
        authorization = self.headers.get("Authorization") or ""
        if not token and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        return token or query.get("token", [""])[0]

    def _allowed(self, agent: Agent, path: str, query: dict[str, list[str]]) -> bool:
        """ACLs with default_policy deny: only the management token passes; else answer as Consul does."""
        if not agent.opts.acl_deny or path == STATE_PATH or path.startswith("/v1/status/"):
            return True
        token = self._token(query)
        if token and token == agent.opts.management_token:
            return True
        if token:
            self._text(403, "ACL not found")
        elif path == "/v1/agent/members":
            self._json([])  # filtered by node:read: the anonymous token sees no member
        else:
            rule = ACL_RULES[path]
            on = f' on "{agent.me.name}"' if rule.startswith("agent:") else ""
            self._text(
                403,
                f"Permission denied: token with AccessorID '{ANONYMOUS_TOKEN}' lacks permission "
                f"'{rule}'{on}. The anonymous token is used implicitly when a request does not specify "
                "a token.",
            )
        return False

    def _route(self, agent: Agent, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if not self._allowed(agent, path, query):
            return None
        if path == STATE_PATH:
            with agent.lock:
                agent.merge(json.loads(body))
                agent.tick()
                return self._json(agent.state())
        if path == "/v1/agent/self":
            with agent.lock:
                return self._json(agent.self_view())
        if path == "/v1/agent/members":
            with agent.lock:
                return self._json(agent.members_view())
        if path == "/v1/agent/leave":
            if (agent.data / REFUSE_LEAVE_MARKER).exists():
                return self._text(500, "leave failed: the test knob standin-refuse-leave is set")
            agent.leave()  # synchronous: the answer comes once the agent has left
            try:
                self._send(200, b"")
            finally:
                agent.shut_down()  # even if the caller gave up meanwhile (Go's handler goes on too)
            return None
        local = self.headers.get(FORWARDED) is not None  # sent on by a server: answer here
        if not agent.opts.server:
            with agent.lock:
                hosts = sorted(m.http for m in agent.members.values() if m.server and m.status == "alive")
            return self._forward(agent, hosts, "No known Consul servers", mark=False)
        with agent.lock:
            if path == "/v1/status/leader":
                return self._json(agent.leader_addr())
            if path == "/v1/status/peers":
                return self._json([s["Address"] for s in agent.servers()])
            mine = agent.leader is not None and agent.leader == agent.me.node_id
            readable = "stale" in query or (agent.leader is not None and (local or mine))
            if path.endswith("configuration") and agent.raft is not None and readable:
                return self._json(agent.raft_view())
            if path.endswith("health") and agent.leader is not None and (local or mine):
                health = agent.health()
                return self._json(health, 200 if health["Healthy"] else 429)
            if path == "/v1/snapshot" and agent.leader is not None and (local or mine or "stale" in query):
                index = int((agent.raft or {}).get("Index") or 1)
                archive = snapshot_archive(index, agent.term, json.dumps(agent.raft_view()).encode())
                return self._send(200, archive, "application/x-gzip", {"X-Consul-Index": str(index)})
            if path.endswith("transfer-leader") and mine:
                error = agent.transfer_leader(query.get("id", [""])[0] or None)
                return self._text(500, error) if error else self._json({"Success": True})
            leader = None if local or mine else agent._by_id().get(agent.leader or "")
        if leader is None:
            return self._text(500, "No cluster leader")
        return self._forward(agent, [leader.http], "No cluster leader", mark=True)

    def _forward(self, agent: Agent, hosts: list[str], none: str, mark: bool) -> None:
        """Ask another agent (a server, the leader) and relay its answer."""
        headers = {FORWARDED: "1"} if mark else {}
        for name in ("X-Consul-Token", "Authorization"):
            if self.headers.get(name):
                headers[name] = str(self.headers.get(name))
        for host in hosts:
            try:
                status, body, ctype = http_call(
                    self.command,
                    f"http://{host}:{HTTP_PORT}{self.path}",
                    None,
                    max(1.0, agent.t.http),
                    headers,
                )
            except OSError:
                continue
            return self._send(status, body, ctype or "application/json")
        return self._text(500, f"rpc error making call: {none}" if hosts else none)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(" ".join(args), flush=True)
    if args[:1] == ["version"]:
        print(f"Consul v{os.environ.get('STANDIN_VERSION') or '1.20.0-standin'} (agent_standin, a model)")
        return 0
    if args[:1] != ["agent"]:
        print("usage: agent_standin.py agent [consul agent flags] | version", file=sys.stderr)
        return 1
    try:
        opts = parse_flags(args[1:])
        timings = Timings.from_env()
    except ValueError as error:
        print(f"==> {error}", file=sys.stderr)
        return 1
    for flag in opts.ignored:
        log(f"ignored {flag}")
    agent = Agent(opts, timings)
    host = "0.0.0.0" if opts.client in ("0.0.0.0", "::", "[::]") else opts.client
    try:
        httpd = _Server((host, HTTP_PORT), agent)
    except OSError as error:
        print(f"==> cannot listen on {host}:{HTTP_PORT}: {error}", file=sys.stderr)
        return 1
    stop = _STOP
    signal.signal(signal.SIGTERM, _on_signal)  # also when main() is called from an importer
    signal.signal(signal.SIGINT, _on_signal)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    threading.Thread(target=agent.gossip_loop, daemon=True).start()
    role = "server" if opts.server else "client"
    log(
        f"{role} {opts.node} ({agent.me.node_id}) dc={opts.datacenter} http={host}:{HTTP_PORT} "
        f"rpc={agent.rpc_addr} data={opts.data_dir} version={agent.me.version}"
    )
    while not stop.is_set() and not agent.done.is_set():
        stop.wait(0.05)
    if stop.is_set() and not opts.server and not agent.leaving:
        agent.leave()  # clients leave on SIGTERM/SIGINT (Consul's defaults); one quick round
    agent.done.set()
    agent.wake.set()
    httpd.shutdown()
    httpd.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
