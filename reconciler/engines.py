"""Docker clients per host: unix://, tcp:// with TLS (verification on), ssh://."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests.exceptions
from urllib3._collections import RecentlyUsedContainer

from desired_state.spec import Endpoint
from reconciler.docker_import import docker

# Pinned so that creating a client costs no /version round trip. 1.41 is Docker
# 20.10's API; newer engines still serve it.
API_VERSION = "1.41"
ENGINE_POOLS = 4


class EngineError(Exception):
    """A host's engine cannot be reached or used; the message names the host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"host {host}: {message}")


def connect(host: str, endpoint: Endpoint) -> docker.DockerClient:
    parts = urlsplit(endpoint.url)
    tls: docker.tls.TLSConfig | bool = False
    if parts.scheme == "tcp" and (endpoint.tls_ca or endpoint.tls_cert):
        for label, path in (
            ("CA", endpoint.tls_ca),
            ("client certificate", endpoint.tls_cert),
            ("client key", endpoint.tls_key),
        ):
            if not path:
                raise EngineError(
                    host, f"TLS for {endpoint.url} needs a {label} file (tls.ca, tls.cert, tls.key)"
                )
            if not os.path.isfile(path):
                raise EngineError(host, f"TLS {label} file {path} does not exist")
        assert endpoint.tls_cert and endpoint.tls_key and endpoint.tls_ca
        tls = docker.tls.TLSConfig(
            client_cert=(endpoint.tls_cert, endpoint.tls_key), ca_cert=endpoint.tls_ca, verify=True
        )
    try:
        client = docker.DockerClient(
            base_url=endpoint.url,
            version=API_VERSION,
            timeout=int(max(1, endpoint.timeout)),
            tls=tls,
            use_ssh_client=False,
        )
    except docker.errors.DockerException as exc:
        raise EngineError(host, f"cannot set up a client for {endpoint.url}: {exc}") from None
    # docker-py keeps one connection pool per request URL (every container id, every filter) and
    # ignores num_pools for unix sockets, keeping 25 pools with a socket each per engine: cap them.
    adapter = getattr(client.api, "_custom_adapter", None)
    if adapter is not None and hasattr(adapter, "pools"):
        adapter.pools = RecentlyUsedContainer(ENGINE_POOLS, dispose_func=lambda pool: pool.close())
        if _adapter_name(adapter) == _UNIX_ADAPTER:
            _one_pool(adapter)
    # The host's own TLS files decide: requests would otherwise let $REQUESTS_CA_BUNDLE or
    # $CURL_CA_BUNDLE replace tls.ca, and $HTTPS_PROXY route an engine's API through a proxy.
    client.api.trust_env = False
    return client


def _one_pool(adapter: Any) -> None:
    """Every request to a unix-socket engine on one connection pool. docker-py's pools are per request
    URL, yet all of them connect to the same socket (the URL names no host): an engine kept up to
    ENGINE_POOLS pools, each holding its idle keep-alive socket, four descriptors a host beside its
    event stream (15,000 at 3,000 hosts, near this machine's limit of 20,000). One pool reuses its
    sockets for every call. (ssh:// keeps docker-py's pools: it reconnects a dropped SSH session only
    when it makes a new pool.)"""
    by_url = adapter.get_connection

    def get_connection(url: str, proxies: Any = None) -> Any:
        return by_url(_ONE_POOL_URL, proxies)

    adapter.get_connection = get_connection


_UNIX_ADAPTER = "docker.transport.unixconn.UnixHTTPAdapter"
_ONE_POOL_URL = "http+docker://localhost"  # the key of the one pool (its connections ignore it)


def _adapter_name(adapter: Any) -> str:
    return f"{type(adapter).__module__}.{type(adapter).__name__}"


def connect_bounded(host: str, endpoint: Endpoint) -> docker.DockerClient:
    """``connect``, within the host's timeout. docker-py opens an ssh:// engine's SSH session while the
    client is made, with no time limit of its own (paramiko waits 15 s for a banner, and longer for
    the rest): that part runs in a thread given the host's timeout, and is abandoned past it."""
    if not endpoint.url.startswith("ssh://"):
        return connect(host, endpoint)
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["client"] = connect(host, endpoint)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, name=f"ssh-connect-{host}", daemon=True)
    worker.start()
    worker.join(max(1.0, endpoint.timeout))
    if worker.is_alive():
        raise EngineError(host, f"SSH to {endpoint.url} did not complete within {endpoint.timeout:g}s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, EngineError):
            raise error
        why = _ssh_cause(error, endpoint.url) or describe_error(error)
        raise EngineError(host, f"cannot connect to {endpoint.url}: {why}") from None
    client: docker.DockerClient = outcome["client"]
    return client


def describe_error(exc: BaseException, url: str | None = None) -> str:
    """A one-line, human-readable cause for a failed engine call; ``url``, the engine's endpoint, is
    named when the engine could not be reached ("engine unreachable at unix:///...: No such file")."""
    ssh = _ssh_cause(exc, url)
    if ssh is not None:
        return ssh
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS handshake failed: {_root(exc)}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"engine unreachable{f' at {url}' if url else ''}: {_root(exc)}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "engine did not answer within the host's timeout"
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return f"{type(exc).__name__}: {exc}"


# docker-py's adapters whose get_connection(url) is all a request needs: a unix socket, an SSH channel.
# Not the TLS adapter: requests applies the host's certificates per request (cert_verify), so a TLS
# engine's calls always go through requests.
_PLAIN_ADAPTERS = frozenset({_UNIX_ADAPTER, "docker.transport.sshconn.SSHHTTPAdapter"})


def list_containers(api: Any, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``GET /containers/json?all=1&filters=...``, as ``api.containers(all=True, filters=filters)``
    returns it, on the client's own connection pool. A pass makes one such call per host and a resync
    makes it for every host: through requests, two thirds of a call's CPU was requests' per-call
    session work (settings merged, hooks, cookies, a runtime Protocol check per setting), about
    0.6 ms a host on this machine; urllib3's pool alone does the HTTP. Errors are raised as requests
    raises them (ConnectionError, ReadTimeout; APIError from Docker's answer), so describe_error reads
    them alike; the client's response hooks (the benchmarks' request count) are told of the call."""
    adapter: Any = vars(api).get("_custom_adapter")  # docker-py's APIClient sets it in __init__
    if _adapter_name(adapter) not in _PLAIN_ADAPTERS:
        return list(api.containers(all=True, filters=filters))
    import json
    from types import SimpleNamespace
    from urllib.parse import urlencode

    import urllib3.exceptions

    url = api._url("/containers/json")
    path = f"{urlsplit(url).path}?{urlencode({'all': '1', 'filters': json.dumps(filters)})}"
    timeout = urllib3.Timeout(connect=api.timeout, read=api.timeout)
    try:
        response = adapter.get_connection(url).urlopen(
            "GET", path, headers={"User-Agent": api.headers.get("User-Agent", "")}, retries=False,
            timeout=timeout, preload_content=True,
        )  # fmt: skip
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
        raise requests.exceptions.ReadTimeout(exc) from exc
    except urllib3.exceptions.ConnectTimeoutError as exc:
        raise requests.exceptions.ConnectTimeout(exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    for hook in api.hooks.get("response", ()):
        hook(SimpleNamespace(request=SimpleNamespace(method="GET", path_url=path)))
    if response.status >= 400:
        try:
            explanation = str(json.loads(response.data).get("message"))
        except (ValueError, AttributeError):
            explanation = response.data.decode(errors="replace")
        raise docker.errors.APIError(
            f"{response.status} Server Error for GET {path}", explanation=explanation
        )
    listed: list[dict[str, Any]] = json.loads(response.data)
    return listed


def known_hosts_path() -> str:
    """Where docker-py's SSH client (paramiko) reads the trusted host keys: the user's
    ~/.ssh/known_hosts (in the controller's image, /var/lib/consul-reconciler/.ssh/known_hosts)."""
    return os.path.expanduser("~/.ssh/known_hosts")


def _known_hosts_name(url: str | None, hostname: str) -> str:
    """The host's name as known_hosts writes it: ``[address]:port`` for a port other than 22."""
    parts = urlsplit(url) if url else None
    if parts is None or parts.hostname is None or parts.port in (None, 22):
        return hostname
    return f"[{parts.hostname}]:{parts.port}"


def _ssh_cause(exc: BaseException, url: str | None = None) -> str | None:
    """What an SSH failure (paramiko's exceptions, raised while an ssh:// client is made) means to
    an operator, or None for any other error. paramiko is looked up, not imported: it is loaded only
    once an ssh:// engine has been tried (reconciler/docker_import.py)."""
    if not type(exc).__module__.startswith("paramiko."):
        return None  # and paramiko, loaded only for ssh://, is not touched (reconciler/docker_import.py)
    paramiko = sys.modules["paramiko"]
    known_hosts = known_hosts_path()
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):  # an OSError
        return f"SSH server unreachable: {exc.strerror or exc}"
    if isinstance(exc, paramiko.hostkeys.InvalidHostKey):
        return f"a line of {known_hosts} cannot be read ({exc.line.strip()[:80]}): {exc.exc}"
    if isinstance(exc, paramiko.BadHostKeyException):
        got, expected = exc.key, exc.expected_key
        server = _known_hosts_name(url, exc.hostname)
        return (
            f"SSH host key of {server} does not match {known_hosts}: the server offered "
            f"{got.get_name()} {got.fingerprint}, known_hosts has {expected.get_name()} "
            f"{expected.fingerprint}; refused (the connection may be intercepted). If the host was "
            f"reinstalled, check its new key and replace the line (ssh-keygen -R '{server}')"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return (
            f"SSH login refused ({exc}): the controller offers the keys in ~/.ssh (id_ed25519, "
            "id_ecdsa, id_rsa) or an IdentityFile of ~/.ssh/config, and the user of the docker URL"
        )
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not found in known_hosts" in text:
            server = text.split("'")[1] if text.count("'") >= 2 else "the server"
            return (
                f"SSH host key of {server} is not in {known_hosts}: host key checking is on, so an "
                f"unknown host is refused; add its key once you have checked its fingerprint "
                f"(ssh-keyscan, then ssh-keygen -lf)"
            )
        if "No authentication methods available" in text:
            return (
                "SSH login impossible: no private key found (the controller offers ~/.ssh/id_ed25519, "
                "id_ecdsa, id_rsa or an IdentityFile of ~/.ssh/config)"
            )
        return f"SSH failed: {text or type(exc).__name__}"
    return None


def _root(exc: BaseException) -> str:
    seen: BaseException = exc
    while seen.__context__ is not None and seen.__context__ is not seen:
        seen = seen.__context__
    # "[Errno 2] No such file or directory" reads as "No such file or directory"
    plain = seen.strerror if isinstance(seen, OSError) and seen.strerror else str(seen)
    text = plain or type(seen).__name__
    return text if len(text) < 300 else text[:297] + "..."


def api_route(path: str) -> str:
    """A request path as an API route: ``/v1.41/containers/3f2a/start`` -> ``/containers/{id}/start``."""
    parts = path.split("/")
    if len(parts) > 1 and parts[1].startswith("v1."):
        parts = ["", *parts[2:]]
    if len(parts) > 3 and parts[1] == "images":  # an image name may hold slashes: repo/name:tag
        parts = ["", "images", "{name}", parts[-1]]
    elif len(parts) > 2 and parts[1] == "containers" and parts[2] not in ("json", "create", "prune"):
        parts[2] = "{id}"
    return "/".join(parts)


RequestHook = Callable[[str, str], None]


class Connections:
    """One client per host, reused across passes; rebuilt when the endpoint changes.

    ``on_request``, when given, is told of every Docker API request its clients make: the host and the
    request as ``METHOD /route`` (see :func:`api_route`), e.g. ``GET /containers/json``. The benchmarks
    count requests with it; the controller gives none, and its requests pay nothing for it."""

    def __init__(self, on_request: RequestHook | None = None) -> None:
        self._clients: dict[str, tuple[Endpoint, docker.DockerClient]] = {}
        self._lock = threading.Lock()
        self._on_request = on_request

    def get(self, host: str, endpoint: Endpoint) -> docker.DockerClient:
        with self._lock:
            cached = self._clients.get(host)
            if cached is not None and cached[0] == endpoint:
                return cached[1]
        # Connected outside the lock: one engine that is slow to answer (an SSH server that never
        # speaks) must not hold up the others.
        client = connect_bounded(host, endpoint)
        with self._lock:
            cached = self._clients.get(host)
            if cached is not None and cached[0] == endpoint:  # another thread connected meanwhile
                client.close()
                return cached[1]
            if cached is not None:
                cached[1].close()
            if self._on_request is not None:
                client.api.hooks["response"].append(_reporter(host, self._on_request))
            self._clients[host] = (endpoint, client)
            return client

    def drop(self, host: str) -> None:
        with self._lock:
            cached = self._clients.pop(host, None)
        if cached is not None:
            cached[1].close()

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for _, client in clients:
            client.close()


def _reporter(host: str, on_request: RequestHook) -> Callable[..., None]:
    """A response hook (requests') that tells ``on_request`` of each request of ``host``'s client."""

    def report(response: Any, *args: Any, **kwargs: Any) -> None:
        method = getattr(response.request, "method", "?")
        on_request(host, f"{method} {api_route(urlsplit(getattr(response.request, 'path_url', '')).path)}")

    return report
