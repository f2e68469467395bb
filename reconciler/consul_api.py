"""Every call the controller makes to Consul's HTTP API, behind one small module (py-consul).

Where Consul is and how to reach it (addresses, the ACL token, the CA) is read in one place,
:mod:`reconciler.consul_settings`. py-consul reads ``CONSUL_HTTP_TOKEN`` over an explicit token and leaves the
token off some calls (``agent/self``, ``agent/members``, ``operator/raft/configuration``), so every
client made here carries the token as an ``X-Consul-Token`` header on its HTTP session: every request
sends it, whatever the library does per call. It is never logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import requests.adapters
import requests.exceptions

from reconciler.consul_settings import ConsulAddress, TLSClient
from reconciler.consul_settings import ConsulError as ConsulError  # every Consul failure, settings too
from reconciler.deferred import defer_import

# python-consul loads when a Consul is first talked to: a `plan` or `apply` of a file source whose pass
# touches no server never needs it (reconciler/deferred.py).
defer_import("consul")
import consul  # noqa: E402


class ConsulUnreachable(ConsulError):
    """No answer: refused, reset, closed before the answer or during it, or timed out."""


def _cut(exc: BaseException) -> str:
    """The failure in one short line: ``ChunkedEncodingError: IncompleteRead(0 bytes read, ...)``."""
    text = " ".join(str(exc).split())
    found = re.search(r"IncompleteRead\([^)]*\)", text)
    return f"{type(exc).__name__}: {found.group(0) if found else text[:160]}"


SNAPSHOT_CHUNK = 1 << 16  # bytes read at a time from a snapshot being streamed


class ConsulRefused(ConsulError):
    """Consul answered and refused in a way retrying cannot fix (e.g. a session TTL below its
    ``session_ttl_min``): a configuration error to report once, not to retry for ever."""


_SSL_REASON = re.compile(r"\[SSL: [A-Z0-9_]+\] (.+?) \(_ssl\.c")
_CLIENT_CERT_HINT = "does it verify callers? a client certificate: $CONSUL_CLIENT_CERT and $CONSUL_CLIENT_KEY"
_VERIFY_HINT = "the CA: --consul-ca or $CONSUL_CACERT; the name checked: $CONSUL_TLS_SERVER_NAME"


def tls_reason(exc: Exception) -> str:
    """What OpenSSL said, without the layers of exceptions around it, and what to check."""
    text = str(exc)
    found = _SSL_REASON.search(text)
    if found and "certificate verify failed" in found.group(1):
        return f"{found.group(1)} ({_VERIFY_HINT})"
    if found:
        return f"{found.group(1)} ({_CLIENT_CERT_HINT})"  # e.g. "tlsv13 alert certificate required"
    mismatch = re.search(r"hostname '([^']+)' doesn't match", text)  # urllib3's own name check
    if mismatch:
        return f"the agent's certificate does not name {mismatch.group(1)} ({_VERIFY_HINT})"
    if "EOF occurred" in text or "reset by peer" in text:
        return f"the agent closed the connection in the TLS handshake ({_CLIENT_CERT_HINT})"
    return text.splitlines()[0][:200]


class _ServerName(requests.adapters.HTTPAdapter):
    """HTTPS that checks the certificate against ``server_name`` (and sends it as SNI) rather than the
    address dialled: ``CONSUL_TLS_SERVER_NAME``, as Consul's CLI sets tls.Config.ServerName."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


def _client(
    host: str, port: int, scheme: str, tls: TLSClient, token: str | None, timeout: float
) -> consul.Consul:
    """A py-consul client that sends ``token`` (and only it) on every request."""
    client = consul.Consul(
        host=host,
        port=port,
        scheme=scheme,
        verify=tls.verify,
        cert=tls.client_cert,
        token=token,
        connections_timeout=timeout,
    )
    client.token = token  # py-consul prefers $CONSUL_HTTP_TOKEN over the token it was given
    session = client.http.session
    if token:
        session.headers["X-Consul-Token"] = token
    else:
        session.headers.pop("X-Consul-Token", None)
    if scheme == "https" and tls.server_name:
        session.mount("https://", _ServerName(tls.server_name))
    return client


@dataclass(frozen=True)
class KVEntry:
    key: str
    value: bytes | None
    modify_index: int
    lock_index: int
    flags: int
    session: str | None
    create_index: int = 0


class Consul:
    def __init__(self, address: ConsulAddress, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        tls = TLSClient.resolve(address.ca) if address.scheme == "https" else TLSClient(address.ca)
        self._client = _client(address.host, address.port, address.scheme, tls, address.token, timeout)

    def where(self) -> str:
        return f"Consul at {self.address.scheme}://{self.address.host}:{self.address.port}"

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise ConsulError(f"{self.where()}: TLS failed ({what}): {tls_reason(exc)}") from None
        except requests.exceptions.ConnectionError:
            raise ConsulUnreachable(f"{self.where()} is unreachable ({what})") from None
        except requests.exceptions.Timeout:
            raise ConsulUnreachable(f"{self.where()} did not answer in time ({what})") from None
        except (requests.exceptions.RequestException, json.JSONDecodeError) as exc:
            # the answer broke off (a body shorter than its Content-Length) or was not JSON
            raise ConsulUnreachable(f"{self.where()} broke off its answer ({what}: {_cut(exc)})") from None
        except consul.ACLPermissionDenied:
            raise ConsulError(
                f"{self.where()} denied {what}: permission denied (check the ACL token)"
            ) from None
        except consul.ConsulException as exc:
            text = str(exc).strip() or type(exc).__name__
            raise ConsulError(f"{self.where()} failed {what}: {text[:300]}") from None

    # --- KV -----------------------------------------------------------------------------------------

    def get(
        self, key: str, *, index: int | None = None, wait: str | None = None, consistent: bool = False
    ) -> tuple[int, KVEntry | None]:
        """Read one key; with ``index`` this is a blocking query (up to ``wait``, e.g. "10s");
        ``consistent``: Consul's ``?consistent`` mode (the leader confirms it still leads)."""
        extra: dict[str, Any] = {"consistency": "consistent"} if consistent else {}
        if index:
            # py-consul stretches its timeout by the wait (plus Consul's wait/16 jitter) by itself
            extra |= {"index": index, "wait": wait or "10s"}
        raw_index, data = self._call(f"reading {key}", self._client.kv.get, key, **extra)
        return int(raw_index or 0), None if data is None else _entry(data)

    def list(
        self, prefix: str, *, index: int | None = None, wait: str | None = None
    ) -> tuple[int, list[KVEntry]]:
        """Every key under ``prefix`` (``?recurse``); with ``index`` a blocking query, as :meth:`get`."""
        extra: dict[str, Any] = {"index": index, "wait": wait or "10s"} if index else {}
        raw_index, data = self._call(f"listing {prefix}", self._client.kv.get, prefix, recurse=True, **extra)
        return int(raw_index or 0), [_entry(item) for item in data or []]

    def put(
        self,
        key: str,
        value: bytes,
        *,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool:
        return bool(
            self._call(
                f"writing {key}", self._client.kv.put, key, value, cas=cas, acquire=acquire, release=release
            )
        )

    def release(self, key: str, session: str) -> bool:
        return bool(self._call(f"releasing {key}", self._client.kv.put, key, None, release=session))

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        return bool(self._call(f"deleting {key}", self._client.kv.delete, key, cas=cas))

    # --- sessions -----------------------------------------------------------------------------------

    def create_session(self, name: str, ttl: float, lock_delay: float, behavior: str = "release") -> str:
        """A session for the leader lock. Consul accepts TTLs of 10 s to 24 h (py-consul asserts that
        bound before sending, so the request goes through its transport directly: tests use short
        TTLs against the test double; a real Consul refuses them with a clear 500)."""
        body = json.dumps(
            {
                "Name": name,
                "TTL": f"{ttl:g}s",
                "LockDelay": f"{lock_delay:g}s",
                "Behavior": behavior,
                "Checks": [],
            }
        )
        from consul.callback import CB

        headers = self._client.prepare_headers(None)
        try:
            return str(
                self._call(
                    "creating a session",
                    self._client.http.put,
                    CB.json(is_id=True),
                    "/v1/session/create",
                    data=body,
                    headers=headers,
                )
            )
        except ConsulError as exc:
            # Consul (agent/structs: SessionTTLMin, the agent's session_ttl_min) answers 500
            # "Invalid Session TTL '<ns>', must be between [<min>=24h0m0s]": retrying cannot help.
            if "Invalid Session TTL" in str(exc):
                raise ConsulRefused(
                    f"{self.where()} refuses a leader session with TTL {ttl:g}s ({exc}); "
                    "use a --lock-ttl within Consul's session_ttl_min..24h"
                ) from None
            raise

    def renew_session(self, session: str) -> bool:
        """True while the session lives; False once Consul no longer knows it."""
        try:
            result = self._client.session.renew(session)
        except consul.NotFound:
            return False
        except Exception:
            # not a verdict on the session: Consul did not answer (or answered an error)
            return bool(self._call("renewing the session", self._client.session.renew, session))
        return result is not None

    def session_alive(self, session: str) -> bool:
        """Does Consul still know this session (``GET /v1/session/info/<id>``)?"""
        _, info = self._call("reading a session", self._client.session.info, session)
        return bool(info)

    def destroy_session(self, session: str) -> None:
        self._call("destroying the session", self._client.session.destroy, session)


def _entry(data: dict[str, Any]) -> KVEntry:
    value = data.get("Value")
    if isinstance(value, str):
        value = value.encode()
    return KVEntry(
        key=str(data.get("Key", "")),
        value=value,
        modify_index=int(data.get("ModifyIndex", 0)),
        lock_index=int(data.get("LockIndex", 0)),
        flags=int(data.get("Flags", 0)),
        session=data.get("Session") or None,
        create_index=int(data.get("CreateIndex", 0)),
    )


class ConsulAgent:
    """One agent's own HTTP API (``HOST:PORT``): what the rollout gates ask each server."""

    def __init__(
        self, http: str, *, token: str | None = None, timeout: float = 3.0, tls: TLSClient | None = None
    ) -> None:
        """``http`` is ``HOST:PORT`` (plain HTTP) or ``https://HOST:PORT`` (an agent serving HTTPS,
        reached with ``tls``, by default the CA and client certificate of the environment)."""
        scheme = "https" if http.startswith("https://") else "http"
        host, _, port = http.removeprefix("https://").rpartition(":")
        self.http = http
        self.timeout = timeout
        if scheme == "https" and tls is None:
            tls = TLSClient.resolve()
        self._client = _client(host.strip("[]"), int(port), scheme, tls or TLSClient(), token, timeout)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except requests.exceptions.Timeout:
            raise ConsulUnreachable(
                f"agent {self.http} did not answer within {self.timeout:g}s ({what})"
            ) from None
        except requests.exceptions.SSLError as exc:
            # the agent is there, and the handshake failed: a setting to fix, not an agent gone
            raise ConsulError(f"agent {self.http}: TLS failed ({what}): {tls_reason(exc)}") from None
        except requests.exceptions.ConnectionError:
            # refused, reset, or closed before the answer (an agent that exits as it leaves does that)
            raise ConsulUnreachable(f"agent {self.http} does not answer ({what})") from None
        except (requests.exceptions.RequestException, json.JSONDecodeError) as exc:
            # the answer broke off: an agent that exits (crash-looping, leaving) while it writes one
            raise ConsulUnreachable(f"agent {self.http} broke off its answer ({what}: {_cut(exc)})") from None
        except consul.ACLPermissionDenied:
            raise ConsulError(
                f"agent {self.http} denied {what}: permission denied (check the ACL token)"
            ) from None
        except consul.ConsulException as exc:
            raise ConsulError(f"agent {self.http} failed {what}: {str(exc).strip()[:300]}") from None

    def self_info(self) -> dict[str, Any]:
        return dict(self._call("agent/self", self._client.agent.self))

    def members(self) -> list[dict[str, Any]]:
        return list(self._call("agent/members", self._client.agent.members))

    def leave(self) -> None:
        """``PUT /v1/agent/leave``. Consul answers only once the agent has left: a server leaves the
        gossip pool, drains for ``leave_drain_time`` (5 s by default) and, as a follower, waits to be
        removed from the raft peers (agent/consul/server.go, Server.Leave), then the agent shuts down.
        Give this client a timeout well above that (``rollout.leave_timeout``)."""
        self._call("agent/leave", self._client.agent.leave)

    def peers(self) -> list[str]:
        return list(self._call("status/peers", self._client.status.peers) or [])

    def leader(self) -> str:
        return str(self._call("status/leader", self._client.status.leader) or "")

    def raft_configuration(self) -> dict[str, Any]:
        return dict(self._call("operator/raft/configuration", self._client.operator.raft_config))

    def autopilot_health(self) -> dict[str, Any]:
        """Consul answers 200 when healthy and 429 (same body) when not; both are data here."""
        return dict(self._call("operator/autopilot/health", self._client.operator.autopilot_health))

    # --- snapshots (agent/snapshot_endpoint.go; agent/consul/snapshot_endpoint.go) -------------------

    def save_snapshot(self, write: Callable[[bytes], object]) -> int | None:
        """``GET /v1/snapshot``, streamed to ``write`` chunk by chunk (a snapshot holds the whole state
        store: it is never held in memory); returns the ``X-Consul-Index`` header (the snapshot's raft
        index), or None when absent. Never ``?stale``: a server that is not the leader forwards the
        request to the leader, which makes a consistent read first, and without a leader Consul
        answers 500 "No cluster leader". With ACLs on, the token needs management rights (Consul
        checks ``acl:write``: a snapshot holds every token)."""
        what = "GET /v1/snapshot"
        http = self._client.http
        try:
            with http.session.get(
                http.uri("/v1/snapshot"),
                stream=True,
                timeout=self.timeout,
                verify=http.verify,
                cert=http.cert,
            ) as response:
                if response.status_code != 200:
                    raise self._refusal(what, response.status_code, response.text)
                for chunk in response.iter_content(SNAPSHOT_CHUNK):
                    write(chunk)
                index = response.headers.get("X-Consul-Index")
        except requests.exceptions.RequestException as exc:
            raise self._no_answer(what, exc) from None
        return int(index) if index and index.isdigit() else None

    def restore_snapshot(self, archive: IO[bytes]) -> None:
        """``PUT /v1/snapshot`` with the archive as the body (streamed from the file): the servers' state
        is replaced by the snapshot's. Consul verifies the archive's SHA256SUMS first. A disaster
        recovery step for a fresh cluster, never taken by the controller itself."""
        what = "PUT /v1/snapshot"
        http = self._client.http
        try:
            response = http.session.put(
                http.uri("/v1/snapshot"),
                data=archive,
                timeout=self.timeout,
                verify=http.verify,
                cert=http.cert,
            )
        except requests.exceptions.RequestException as exc:
            raise self._no_answer(what, exc) from None
        if response.status_code != 200:
            raise self._refusal(what, response.status_code, response.text)

    def _no_answer(self, what: str, exc: requests.exceptions.RequestException) -> ConsulUnreachable:
        if isinstance(exc, requests.exceptions.Timeout):
            return ConsulUnreachable(f"agent {self.http} did not answer within {self.timeout:g}s ({what})")
        return ConsulUnreachable(
            f"agent {self.http} does not answer or broke off ({what}: {type(exc).__name__})"
        )

    def _refusal(self, what: str, status: int, text: str) -> ConsulError:
        body = " ".join(text.split())[:300]
        if status == 403:
            return ConsulError(
                f"agent {self.http} denied {what}: {body or 'permission denied'} (a snapshot needs a token "
                "with management rights)"
            )
        return ConsulError(f"agent {self.http} failed {what}: {status} {body}".rstrip())
