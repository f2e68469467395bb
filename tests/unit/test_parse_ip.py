"""desired_state.fields.parse_ip: the topology's addresses, read as ``ipaddress`` reads them (its
dotted-quad fast path must accept and refuse exactly what ``ipaddress.ip_address`` does)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from desired_state.fields import parse_ip

EDGES = [
    "0.0.0.0", "255.255.255.255", "1.2.3.4", "127.0.0.1", "249.250.251.252", "199.200.9.99",
    "01.2.3.4", "1.02.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "300.1.1.1", "1.2.3.4 ", " 1.2.3.4",
    "0x1.2.3.4", "1.2.3.4\n", "１.2.3.4", "::1", "::ffff:1.2.3.4", "fe80::1%eth0", "", "host",
]  # fmt: skip


def _ipaddress(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ours(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return parse_ip(text)
    except ValueError as exc:
        assert repr(text) in str(exc)  # the error names the value
        return None


def test_parse_ip_agrees_with_ipaddress() -> None:
    rng = random.Random(20)
    octets = [
        "0",
        "00",
        "1",
        "001",
        "9",
        "10",
        "99",
        "100",
        "199",
        "200",
        "249",
        "250",
        "255",
        "256",
        "2555",
        "",
    ]
    cases = EDGES + [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(3000)]
    cases += [".".join(rng.choice(octets) for _ in range(rng.choice((3, 4, 4, 5)))) for _ in range(3000)]
    for text in cases:
        want, got = _ipaddress(text), _ours(text)
        assert got == want and type(got) is type(want), text


@pytest.mark.parametrize("text", ["01.2.3.4", "256.0.0.1", "1.2.3"])
def test_parse_ip_names_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_ip(text)
