"""Where Consul is and how to reach it, read from flags and the environment in one place.

Addresses: ``consul://HOST:PORT/KEY`` (HTTP; also ``consul+http://``) or ``consul+https://HOST:PORT/KEY``
(HTTPS, verified against the system CAs or a CA file). Without a host (``consul:///KEY``) the address
is Consul's CLI's: ``CONSUL_HTTP_ADDR`` (``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT``;
``CONSUL_HTTP_SSL=true`` makes a bare one HTTPS), else ``127.0.0.1:8500``.

The ACL token. Precedence is Consul's own CLI's: a token given explicitly (``--consul-token-file``,
``--token-file``) wins over ``CONSUL_HTTP_TOKEN``, which wins over ``CONSUL_HTTP_TOKEN_FILE``
(:func:`resolve_token`). The CA: ``--ca``/``--consul-ca``, else ``CONSUL_CACERT`` (:func:`resolve_ca`).
HTTPS to Consul (the KV source over consul+https://, and the agents when they serve HTTPS,
``consul.tls``) also honours, as Consul's CLI does, ``CONSUL_CLIENT_CERT`` and ``CONSUL_CLIENT_KEY``
(a client certificate for agents with ``verify_incoming``) and ``CONSUL_TLS_SERVER_NAME`` (the name
the agent's certificate is checked against instead of the address dialled) (:class:`TLSClient`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 8500
SCHEMES = {"consul": "http", "consul+http": "http", "consul+https": "https"}
TOKEN_ENV = "CONSUL_HTTP_TOKEN"
TOKEN_FILE_ENV = "CONSUL_HTTP_TOKEN_FILE"
CACERT_ENV = "CONSUL_CACERT"
CLIENT_CERT_ENV = "CONSUL_CLIENT_CERT"
CLIENT_KEY_ENV = "CONSUL_CLIENT_KEY"
TLS_SERVER_NAME_ENV = "CONSUL_TLS_SERVER_NAME"
HTTP_ADDR_ENV = "CONSUL_HTTP_ADDR"
HTTP_SSL_ENV = "CONSUL_HTTP_SSL"
FORMS = (
    "consul://HOST:PORT/KEY, consul+https://HOST:PORT/KEY or consul:///KEY (the address from "
    "$CONSUL_HTTP_ADDR)"
)


class ConsulError(Exception):
    """Consul could not be reached or refused the request, or a setting to reach it is unusable (an
    unreadable token file); the message says which and why. (An address that does not parse is a
    ValueError.)"""


def scheme_of(text: str) -> str | None:
    """``http`` or ``https`` when ``text`` names a Consul key by one of the schemes above, else None
    (a file path, or another URL)."""
    return SCHEMES.get(urlsplit(text.strip()).scheme) if "://" in text else None


def is_consul_url(text: str) -> bool:
    return scheme_of(text) is not None


def resolve_token(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The ACL token to send: ``explicit`` when given, else ``$CONSUL_HTTP_TOKEN``, else the contents of
    ``$CONSUL_HTTP_TOKEN_FILE`` (Consul's CLI order). An explicit empty string means "no token" (the
    environment is not consulted). Raises ConsulError for an unreadable token file."""
    if explicit is not None:
        return explicit or None
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    path = env.get(TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConsulError(f"${TOKEN_FILE_ENV} {path}: cannot read the token file: {why}") from None
    return token or None


def resolve_ca(explicit: str | Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The CA file for consul+https://: ``explicit`` when given, else ``$CONSUL_CACERT`` (else none:
    the system CAs)."""
    if explicit:
        return str(explicit)
    env = os.environ if environ is None else environ
    return env.get(CACERT_ENV) or None


@dataclass(frozen=True)
class TLSClient:
    """How the controller speaks HTTPS to Consul: the CA to verify the agent with (None: the system's),
    a client certificate and key (for agents with ``verify_incoming``), and the name to check the
    agent's certificate against (None: the address dialled)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    @classmethod
    def resolve(cls, ca: str | Path | None = None, environ: Mapping[str, str] | None = None) -> TLSClient:
        """From ``ca`` (a flag) and the environment, as Consul's CLI reads them. A certificate without
        its key (or a key without its certificate) is a ConsulError naming both variables."""
        env = os.environ if environ is None else environ
        cert, key = env.get(CLIENT_CERT_ENV) or None, env.get(CLIENT_KEY_ENV) or None
        if (cert is None) != (key is None):
            raise ConsulError(
                f"${CLIENT_CERT_ENV} and ${CLIENT_KEY_ENV} go together: "
                f"{'the key' if cert else 'the certificate'} is missing"
            )
        return cls(resolve_ca(ca, env), cert, key, env.get(TLS_SERVER_NAME_ENV) or None)

    @property
    def verify(self) -> bool | str:
        return self.ca or True

    @property
    def client_cert(self) -> tuple[str, str] | None:
        return (self.cert, self.key) if self.cert and self.key else None


def http_addr(environ: Mapping[str, str] | None = None) -> tuple[str, str, int]:
    """(scheme, host, port) from ``$CONSUL_HTTP_ADDR`` as Consul's CLI reads it (api.DefaultConfig):
    ``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT``; a bare one is HTTPS when
    ``$CONSUL_HTTP_SSL`` is true; unset, ``127.0.0.1:8500``."""
    env = os.environ if environ is None else environ
    text = env.get(HTTP_ADDR_ENV, "").strip() or "127.0.0.1:8500"
    ssl = env.get(HTTP_SSL_ENV, "").strip().lower() in ("1", "true", "t", "yes")
    scheme = "https" if ssl else "http"
    if "://" in text:
        given, _, text = text.partition("://")
        if given not in ("http", "https"):
            raise ValueError(
                f"${HTTP_ADDR_ENV} {given}://...: the controller speaks http:// or https:// only"
            )
        scheme = given
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"${HTTP_ADDR_ENV} {text!r}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"${HTTP_ADDR_ENV} {text!r}: no host")
    return scheme, parts.hostname, port


@dataclass(frozen=True)
class ConsulAddress:
    scheme: str  # http | https
    host: str
    port: int
    key: str
    ca: str | None = None
    token: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        ca: str | None = None,
        token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ConsulAddress:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{url!r}: a Consul source is {FORMS}")
        key = parts.path.lstrip("/")
        if not key or key.endswith("/"):
            raise ValueError(f"{url!r}: no KV key after the address (consul://HOST:PORT/path/to/key)")
        if parts.netloc:
            if not parts.hostname:
                raise ValueError(f"{url!r}: no Consul host")
            scheme, host, port = SCHEMES[parts.scheme], parts.hostname, parts.port or DEFAULT_PORT
        else:
            scheme, host, port = http_addr(environ)
            if parts.scheme == "consul+https":
                scheme = "https"
        return cls(scheme=scheme, host=host, port=port, key=key, ca=ca, token=resolve_token(token, environ))

    def url(self) -> str:
        prefix = "consul+https" if self.scheme == "https" else "consul"
        return f"{prefix}://{self.host}:{self.port}/{self.key}"

    def with_key(self, key: str) -> ConsulAddress:
        return ConsulAddress(self.scheme, self.host, self.port, key, self.ca, self.token)
