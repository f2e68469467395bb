"""The product's Consul client (reconciler/consul_api.py), leader lock and KV watcher, over real HTTP:
against the Consul double (testbed/consul_double.py) for KV and sessions, and against agent stand-in
processes (testbed/agent_standin.py) for the agent endpoints, with ACLs on (default deny)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.consul_api import (
    Consul,
    ConsulAddress,
    ConsulAgent,
    ConsulError,
    ConsulUnreachable,
)
from reconciler.consul_settings import resolve_token
from reconciler.leader import LeaderLock, lock_timing_problem
from reconciler.sources import KVWatcher
from testbed.agentprobe import DRAIN, TOKEN, Standin, eventually, leader_of, start_cluster
from testbed.consul_double import ConsulDouble

KEY = "infra/topology.leader"


# --- the ACL token -----------------------------------------------------------------------------------


def test_token_precedence_is_consuls_explicit_then_env_then_env_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert resolve_token("explicit", env) == "explicit"
    assert resolve_token(None, env) == "from-env"
    assert resolve_token(None, {"CONSUL_HTTP_TOKEN_FILE": str(token_file)}) == "from-file"
    assert resolve_token("", env) is None  # explicitly none: the environment is not consulted
    assert resolve_token(None, {}) is None
    with pytest.raises(ConsulError, match="CONSUL_HTTP_TOKEN_FILE"):
        resolve_token(None, {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})


def test_an_explicit_token_wins_over_consul_http_token_for_kv_and_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "a-stale-token-in-the-environment")
    with ConsulDouble(acl_token="the-token", min_ttl=1.0) as double:
        consul = Consul(ConsulAddress.parse(f"consul://{double.address}/k", token="the-token"))
        assert consul.put("k", b"v")
        assert consul.get("k")[1] is not None
        session = consul.create_session("test", 2, 1)
        assert consul.renew_session(session)
        from_env = Consul(ConsulAddress.parse(f"consul://{double.address}/k"))
        with pytest.raises(ConsulError, match="permission denied"):
            from_env.get("k")


@pytest.fixture
def acl_cluster(agents: Callable[..., Standin]) -> list[Standin]:
    """Three stand-in servers with ACLs on, default deny, and a management token."""
    return start_cluster(agents, acl=True)


def test_every_agent_call_carries_the_token_and_it_wins_over_the_environment(
    acl_cluster: list[Standin], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "a-stale-token-in-the-environment")
    agent = ConsulAgent(f"{acl_cluster[0].address}:8500", token=TOKEN)
    assert agent.self_info()["Config"]["NodeName"] == "server1"  # agent:read
    assert {m["Name"] for m in agent.members()} == {"server1", "server2", "server3"}  # node:read
    assert len(agent.raft_configuration()["Servers"]) == 3  # operator:read
    eventually(lambda: agent.autopilot_health()["Healthy"], what="autopilot healthy")  # operator:read
    assert agent.leader().endswith(":8300") and len(agent.peers()) == 3

    without = ConsulAgent(f"{acl_cluster[0].address}:8500", token="")
    with pytest.raises(ConsulError, match="permission denied"):
        without.self_info()
    assert without.members() == []  # filtered, as Consul does for the anonymous token


def test_the_leave_answers_once_the_server_has_left_and_a_short_timeout_is_no_answer(
    agents: Callable[..., Standin],
) -> None:
    servers = start_cluster(agents)
    leader = leader_of(servers)
    first, second = [s for s in servers if s is not leader]
    with pytest.raises(ConsulUnreachable, match="did not answer within 1s"):
        ConsulAgent(f"{first.address}:8500", timeout=1.0).leave()  # the old 3 s would fail the same way
    assert first.wait(30) == 0  # it left all the same: the answer was only late
    started = time.monotonic()
    ConsulAgent(f"{second.address}:8500", timeout=60.0).leave()
    assert time.monotonic() - started >= DRAIN
    assert second.wait(10) == 0


# --- the leader lock ---------------------------------------------------------------------------------


def test_lock_timing_floor_and_cap() -> None:
    assert lock_timing_problem(15, 15) is None
    assert lock_timing_problem(2, 1) is None
    zero = lock_timing_problem(15, 0)
    assert zero is not None and "below 7.5s" in zero
    assert "60s" in (lock_timing_problem(15, 61) or "")
    with pytest.raises(ValueError, match="lock-delay"):
        LeaderLock(Consul(ConsulAddress.parse("consul://127.0.0.1:1/k")), "k", "x", ttl=15, lock_delay=0)


class Pair:
    """Two leader locks on one key, sampled every few milliseconds: who leads, and never both."""

    def __init__(self, double: ConsulDouble, ttl: float = 2.0, lock_delay: float = 1.0) -> None:
        address = ConsulAddress.parse(f"consul://{double.address}/{KEY}")
        self.events: list[tuple[str, bool]] = []
        self.locks = [
            LeaderLock(
                Consul(address, timeout=1.0),
                KEY,
                name,
                ttl=ttl,
                lock_delay=lock_delay,
                on_change=lambda leading, n=name: self.events.append((n, leading)),
            )
            for name in ("a", "b")
        ]
        self.both_at: list[float] = []
        self.samples = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            if all(lock.is_leader() for lock in self.locks):
                self.both_at.append(time.monotonic())
            self.samples += 1
            time.sleep(0.002)

    def leader(self) -> LeaderLock | None:
        leading = [lock for lock in self.locks if lock.is_leader()]
        return leading[0] if len(leading) == 1 else None

    def __enter__(self) -> Pair:
        for lock in self.locks:
            lock.start()
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for lock in self.locks:
            lock.stop()
        for lock in self.locks:
            lock.join(10)
        self._sampler.join(5)


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    with ConsulDouble(min_ttl=1.0) as running:
        yield running


def test_the_lock_key_deleted_under_the_leader_never_makes_two_leaders(double: ConsulDouble) -> None:
    with Pair(double) as pair:
        first = eventually(pair.leader, 10, "a leader")
        for _ in range(3):
            double.kv_delete(KEY)
            eventually(lambda: pair.leader() is not None and double.kv_get(KEY) is not None, 10, "a leader")
        time.sleep(0.5)
        assert pair.samples > 100
        assert pair.both_at == [], f"two leaders at once, {len(pair.both_at)} samples"
        assert (first.identity, False) in pair.events  # the holder saw its key go and stood down


def test_a_session_invalidated_with_its_node_ends_leadership_and_another_takes_over(
    double: ConsulDouble,
) -> None:
    with Pair(double) as pair:
        first = eventually(pair.leader, 10, "a leader")
        # the other controller may still be creating its session when the first already leads
        eventually(lambda: len(double.session_ids()) == 2, 10, "both controllers holding a session")
        assert double.deregister_node(double.node) == 2  # both controllers' sessions live on it
        eventually(lambda: not first.is_leader(), 2, "the leader to stand down")
        assert pair.leader() is None  # Consul refuses new sessions on the node: nobody leads
        double.register_node(double.node)  # the agent's anti-entropy registers its node again
        eventually(pair.leader, 15, "a leader on new sessions")
        assert pair.both_at == []


def test_a_ttl_below_consuls_minimum_is_one_fatal_error() -> None:
    with ConsulDouble() as double:  # Consul's own session_ttl_min of 10 s
        fatal: list[str] = []
        lock = LeaderLock(
            Consul(ConsulAddress.parse(f"consul://{double.address}/{KEY}")),
            KEY,
            "x",
            ttl=2,
            lock_delay=1,
            on_fatal=fatal.append,
        )
        lock.start()
        lock.join(10)
        assert not lock.is_alive()
        assert len(fatal) == 1 and "Invalid Session TTL" in fatal[0] and "--lock-ttl" in fatal[0]
        assert [m for m, _ in double.requests()].count("PUT") == 1  # asked once, not for ever


def test_a_session_lost_during_an_outage_is_replaced_and_some_controller_leads_again() -> None:
    with ConsulDouble(min_ttl=1.0) as double, Pair(double) as pair:
        eventually(pair.leader, 10, "a leader")
        double.take_down()
        eventually(lambda: pair.leader() is None, 5, "nobody leading while Consul is away")
        # longer than twice the TTL: the sessions expire meanwhile (the cluster is up, only unreachable)
        eventually(lambda: not double.session_ids(), 10, "the sessions expired")
        time.sleep(1.5)  # and their lock-delay (1 s) is over: an acquire now meets "invalid session"
        double.bring_up()
        eventually(pair.leader, 2.0 + 1.0 + 5, "a leader within TTL + lock-delay")


# --- the KV watcher ----------------------------------------------------------------------------------


def test_the_watcher_starts_over_when_the_index_goes_backwards() -> None:
    with ConsulDouble(min_ttl=1.0) as double:
        for i in range(30):
            double.kv_put("topology", f"v{i}".encode())
        high = double.index
        changes: list[float] = []
        consul = Consul(ConsulAddress.parse(f"consul://{double.address}/topology"), timeout=2.0)
        watcher = KVWatcher(consul, "topology", lambda: changes.append(time.monotonic()), wait="1s")
        watcher.start()
        try:
            eventually(lambda: any(f"index={high}" in t for _, t in double.requests()), 5, "a blocking query")
            before, asked = len(changes), len(double.requests())
            low = double.restore_snapshot({"topology": b"restored"})
            assert low < high
            eventually(lambda: len(changes) > before, 5, "the restored document noticed")
            eventually(lambda: any(f"index={low}" in t for _, t in double.requests()[asked:]), 5, "new index")
            after = [t for m, t in double.requests()[asked:] if m == "GET"]
            # the held query answered the lower index once its wait ran out (Consul holds it too); the
            # watcher then started over with a plain read (no index), then blocked on the new index
            fresh = next(i for i, t in enumerate(after) if "index=" not in t)
            assert all(f"index={high}" in t for t in after[:fresh]), after
            assert f"index={low}" in after[fresh + 1], after
        finally:
            watcher.stop()


# --- the controller's command line -------------------------------------------------------------------


def _run_controller(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "run", *args, "--http", "off"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP", "CONSUL_RECONCILER"))},
    )


def test_run_refuses_a_lock_delay_below_half_the_ttl(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    result = _run_controller("consul://127.0.0.1:1/infra/topology", "--lock-delay", "0", "--db", db)
    assert result.returncode == 1
    assert "--lock-delay 0s is below 7.5s" in result.stderr, result.stderr


def test_run_stops_with_one_error_when_consul_refuses_the_session_ttl(tmp_path: Path) -> None:
    with ConsulDouble() as double:  # session_ttl_min 10 s, as Consul's default
        double.kv_put("infra/topology", b"cluster: x\nhosts: []\n")
        result = _run_controller(
            f"consul://{double.address}/infra/topology",
            "--lock-ttl",
            "2",
            "--lock-delay",
            "1",
            "--db",
            str(tmp_path / "a.db"),
        )
        creates = [t for m, t in double.requests() if t.startswith("/v1/session/create")]
    assert result.returncode == 1, result.stderr
    assert "Invalid Session TTL" in result.stderr and "--lock-ttl" in result.stderr
    assert len(creates) == 1  # asked once, then stopped; not retried for ever


def test_an_acquire_is_not_a_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consul resets a session's TTL only on renew: a lock taken late in its session's TTL must stop
    acting half a TTL after its last renewal, not half a TTL after the acquire."""
    now = [0.0]
    with ConsulDouble(min_ttl=1.0) as double:
        address = ConsulAddress.parse(f"consul://{double.address}/{KEY}")
        consul = Consul(address, timeout=1.0)
        lock = LeaderLock(consul, KEY, "late", ttl=10, lock_delay=5, clock=lambda: now[0])
        lock.session = lock.consul.create_session("late", 10, 5)  # created (a renewal) at 0
        now[0] = 4.0  # standing by for 4 s, then the lock is free and taken
        lock._try_acquire()
        assert lock._leading
        assert lock.is_leader()  # 4 s after the last renewal: still within half the TTL
        now[0] = 5.5  # 1.5 s after the acquire, 5.5 s after the last renewal
        assert not lock.is_leader()


def test_a_standby_whose_lock_loop_stopped_is_unhealthy(tmp_path: Path) -> None:
    from reconciler.controller import Controller, ControllerOptions
    from reconciler.sources import ConsulSource
    from reconciler.store import AuditLog

    with ConsulDouble(min_ttl=1.0) as double:
        double.kv_put("infra/topology", b"cluster: x\nhosts: []\n")
        source = ConsulSource(ConsulAddress.parse(f"consul://{double.address}/infra/topology"))
        options = ControllerOptions(interval=1, http=None, watch_events=False, lock_ttl=2, lock_delay=1)
        audit = AuditLog(str(tmp_path / "audit.db"))
        controller = Controller(source, audit, options)
        loop = threading.Thread(target=controller.run, daemon=True)
        loop.start()
        try:
            eventually(lambda: controller.lock and controller.lock.last_contact, 10, "the lock loop")
            assert controller.healthz()[0]
            assert controller.lock is not None
            controller.lock.stop()  # the lock loop ends: this controller could never lead again
            controller.lock.join(10)
            ok, detail = controller.healthz()
            assert not ok and "leader lock loop" in str(detail["reason"])
        finally:
            controller.stop()
            loop.join(15)
            audit.close()


def test_the_kv_watcher_never_spins_on_a_consul_that_answers_at_once_unchanged() -> None:
    import http.server

    asked: list[float] = []

    class Immediate(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a Consul that never holds a blocking query: the same index, at once
            asked.append(time.monotonic())
            body = b'[{"Key": "k", "Value": "eA==", "ModifyIndex": 5, "LockIndex": 0, "Flags": 0}]'
            self.send_response(200)
            self.send_header("X-Consul-Index", "5")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Immediate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    consul = Consul(ConsulAddress.parse(f"consul://127.0.0.1:{server.server_address[1]}/k"), timeout=2.0)
    watcher = KVWatcher(consul, "k", lambda: None, wait="30s")
    watcher.start()
    try:
        time.sleep(3.0)
    finally:
        watcher.stop()
        server.shutdown()
    assert 2 <= len(asked) <= 5, f"{len(asked)} requests in 3 s"  # about one a second, not a hot loop


def test_apply_refuses_while_a_live_controller_holds_the_lock(tmp_path: Path) -> None:
    document = (
        b"cluster: x\nhosts:\n"
        b"  - {name: h1, docker: 'unix:///nonexistent.sock', advertise: 127.0.10.1, role: server}\n"
    )

    def apply(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "apply", f"consul://{double.address}/infra/topology",
             "--db", str(tmp_path / "a.db"), *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    with ConsulDouble(min_ttl=1.0) as double:
        double.kv_put("infra/topology", document)
        consul = Consul(ConsulAddress.parse(f"consul://{double.address}/infra/topology"))
        session = consul.create_session("a running controller", 30, 15)
        assert consul.put("infra/topology.leader", b'{"holder": "mgmt:4242"}', acquire=session)
        refused = apply()
        assert refused.returncode == 1
        assert "mgmt:4242" in refused.stderr and "--force" in refused.stderr, refused.stderr
        forced = apply("--force")
        assert "leader lock" not in forced.stderr and "host h1" in forced.stdout + forced.stderr
        consul.destroy_session(session)  # the controller is gone: its lock is free
        assert "leader lock" not in apply().stderr


class _BreaksOff:
    """An HTTP server that answers every request with a 200 promising 874 bytes, sends 12 and closes:
    an agent that exits (crash-looping, or leaving) while it writes an answer. requests raises
    ChunkedEncodingError (urllib3's IncompleteRead) for it, which is not a ConnectionError."""

    def __enter__(self) -> str:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def _cut_short(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "874")
                self.send_header("X-Consul-Index", "7")
                self.end_headers()
                self.wfile.write(b'[{"Name": "n')
                self.wfile.flush()
                self.close_connection = True

            do_GET = do_PUT = _cut_short

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "call", ["leader", "peers", "members", "raft_configuration", "autopilot_health", "self_info", "leave"]
)
def test_an_agent_answer_cut_short_is_an_agent_that_does_not_answer(call: str) -> None:
    with _BreaksOff() as address:
        agent = ConsulAgent(address, timeout=2.0)
        with pytest.raises(ConsulUnreachable) as caught:
            getattr(agent, call)()
    message = str(caught.value)
    assert f"agent {address} broke off its answer" in message, message
    assert "IncompleteRead(12 bytes read, 862 more expected)" in message, message


def test_a_kv_answer_cut_short_is_a_consul_that_does_not_answer() -> None:
    with _BreaksOff() as address:
        consul = Consul(ConsulAddress.parse(f"consul://{address}/infra/topology"), timeout=2.0)
        with pytest.raises(ConsulUnreachable, match="broke off its answer"):
            consul.get("infra/topology")


def test_the_gates_see_a_server_whose_answer_broke_off_as_unhealthy_not_as_a_crash() -> None:
    from reconciler.consul_gates import ConsulGates

    with _BreaksOff() as address:
        gates = ConsulGates({"n1": address}, deadline=1.0, stabilization=0.1, agent_timeout=2.0)
        view = gates.view()  # raised ChunkedEncodingError out of apply before (a crash-looping server)
    assert view.leader == "" and "broke off its answer (status/leader" in view.error, view
    assert gates.member_status("n2") is None
    assert gates.others_down("n2") == ["n1"]


def test_a_server_whose_container_restarts_never_passes_its_gate_though_consul_calls_it_healthy() -> None:
    """A crash-looping server under a restart policy can look alive and healthy to Consul for a whole
    stabilisation window (gossip marks it failed only after probes and a suspicion timeout): the gate
    also asks the engine, and each restart of the new container starts the window again."""
    from reconciler.consul_gates import ConsulGates
    from reconciler.gates import ClusterView, RaftServer

    now = [0.0]
    healthy = ClusterView(
        leader="127.0.0.1:8300",
        servers=(RaftServer(id="n1", node="n1", address="127.0.0.1:8300", leader=True, voter=True),),
        healthy=True,
        serf={"n1": "alive"},
    )

    class Steady(ConsulGates):
        def view(self, exclude: str | None = None) -> ClusterView:
            return healthy

    def sleep(seconds: float) -> None:
        now[0] += seconds

    gates = Steady({"n1": "127.0.0.1:1"}, deadline=8, stabilization=3, agent_timeout=1, clock=lambda: now[0],
                   sleep=sleep)  # fmt: skip
    restarts = [0]

    def crash_looping() -> str | None:  # the engine restarts it every 2 s
        count = int(now[0] // 2)
        if count > restarts[0]:
            restarts[0] = count
            return f"restarted (restart count {count})"
        return None

    problem = gates.wait_replaced("n1", lambda: False, crash_looping)
    assert problem is not None and "not healthy within 8s" in problem and "restarted" in problem, problem
    assert gates.wait_replaced("n1", lambda: False, lambda: None) is None  # steady: the window completes
