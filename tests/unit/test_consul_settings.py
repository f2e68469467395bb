"""reconciler/consul_settings.py: one reading of Consul addresses, the ACL token and the CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.consul_settings import (
    ConsulAddress,
    ConsulError,
    is_consul_url,
    resolve_ca,
    resolve_token,
    scheme_of,
)


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("consul://127.0.0.1:8500/infra/topology", "http"),
        ("consul+http://consul.example:8500/k", "http"),
        ("consul+https://consul.example:8501/k", "https"),
        ("  consul://h/k  ", "http"),
        ("topology.yaml", None),
        ("/etc/consul-reconciler/topology.yaml", None),
        ("https://consul.example/k", None),
        ("consul:topology.yaml", None),  # a file whose name has a colon, not a URL
    ],
)
def test_scheme_of_tells_a_consul_key_from_a_file(text: str, scheme: str | None) -> None:
    assert scheme_of(text) == scheme
    assert is_consul_url(text) is (scheme is not None)


def test_the_ca_given_wins_over_the_environment() -> None:
    env = {"CONSUL_CACERT": "/env/ca.pem"}
    assert resolve_ca("/given/ca.pem", env) == "/given/ca.pem"
    assert resolve_ca(Path("/given/ca.pem"), env) == "/given/ca.pem"
    assert resolve_ca(None, env) == "/env/ca.pem"
    assert resolve_ca(None, {}) is None


def test_the_token_order_is_consul_clis(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    both = {"CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert resolve_token("given", both) == "given"
    assert resolve_token("", both) is None  # explicitly none: the environment is not read
    assert resolve_token(None, both) == "from-env"
    assert resolve_token(None, {"CONSUL_HTTP_TOKEN_FILE": str(token_file)}) == "from-file"
    with pytest.raises(ConsulError, match="CONSUL_HTTP_TOKEN_FILE"):
        resolve_token(None, {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})


def test_an_address_keeps_its_scheme_key_and_ca() -> None:
    address = ConsulAddress.parse("consul+https://c.example:8501/infra/topology", ca="/ca.pem", token="")
    assert (address.scheme, address.host, address.port, address.key, address.ca) == (
        "https",
        "c.example",
        8501,
        "infra/topology",
        "/ca.pem",
    )
    assert address.url() == "consul+https://c.example:8501/infra/topology"
    with pytest.raises(ValueError, match="consul://HOST:PORT/KEY"):
        ConsulAddress.parse("http://c.example/k")


def test_consul_http_addr_is_read_as_consuls_cli_reads_it() -> None:
    from reconciler.consul_settings import ConsulAddress, http_addr

    assert http_addr({}) == ("http", "127.0.0.1", 8500)
    assert http_addr({"CONSUL_HTTP_ADDR": "127.0.0.9:8600"}) == ("http", "127.0.0.9", 8600)
    assert http_addr({"CONSUL_HTTP_ADDR": "https://consul.local:8501"}) == ("https", "consul.local", 8501)
    assert http_addr({"CONSUL_HTTP_ADDR": "127.0.0.9:8501", "CONSUL_HTTP_SSL": "true"}) == (
        "https",
        "127.0.0.9",
        8501,
    )
    given = ConsulAddress.parse("consul://127.0.0.5:8500/k", environ={"CONSUL_HTTP_ADDR": "127.0.0.9:1"})
    assert (given.host, given.port) == ("127.0.0.5", 8500)  # an address in the URL wins
    from_env = ConsulAddress.parse("consul+https:///a/b", environ={"CONSUL_HTTP_ADDR": "127.0.0.9:8501"})
    assert (from_env.scheme, from_env.host, from_env.port, from_env.key) == (
        "https",
        "127.0.0.9",
        8501,
        "a/b",
    )
