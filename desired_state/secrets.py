"""Resolving secret references (environment variable or file on the management host).

Values are returned to the one caller that writes them into a container and are
never formatted into messages: errors name the reference, not the value.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping

from desired_state.load import Issue
from desired_state.model import SecretRef, Topology
from desired_state.readfile import read_bounded

REDACTED = "(redacted)"
MAX_SECRET_BYTES = 64 * 1024  # a gossip key is 44 bytes, a token 36; a secret file is never megabytes


class SecretError(Exception):
    """A reference that does not resolve; the message names the reference, never a value."""


def _read_file(path: str) -> str:
    return read_bounded(path, MAX_SECRET_BYTES).decode("utf-8")


def resolve(
    ref: SecretRef,
    environ: Mapping[str, str] | None = None,
    read_file: Callable[[str], str] = _read_file,
) -> str:
    env = os.environ if environ is None else environ
    if ref.env is not None:
        value = env.get(ref.env)
        if value is None or not value.strip():
            raise SecretError(f"environment variable {ref.env} is not set or empty")
        return value.strip()
    assert ref.file is not None
    try:
        value = read_file(ref.file)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {ref.file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret file {ref.file} is not UTF-8 text") from None
    if not value.strip():
        raise SecretError(f"secret file {ref.file} is empty")
    return value.strip()


def check_gossip_key(value: str) -> None:
    """Consul's gossip key is 16 or 32 random bytes, base64-encoded (`consul keygen`)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("the gossip key is not valid base64 (create one with `consul keygen`)") from None
    if len(raw) not in (16, 32):
        raise SecretError(f"the gossip key decodes to {len(raw)} bytes; Consul needs 16 or 32")


def check_secrets(
    topology: Topology,
    environ: Mapping[str, str] | None = None,
    read_file: Callable[[str], str] = _read_file,
) -> list[Issue]:
    """Every secret reference in the topology resolves (and is well-formed)."""
    issues: list[Issue] = []
    if topology.consul.encrypt is not None:
        try:
            check_gossip_key(resolve(topology.consul.encrypt, environ, read_file))
        except SecretError as exc:
            issues.append(Issue("consul.encrypt", f"{topology.consul.encrypt.describe()}: {exc}"))
    acl = topology.consul.acl
    if acl is not None:
        refs = {
            "agent_token": acl.agent_token,
            "default_token": acl.default_token,
            "initial_management_token": acl.initial_management_token,
        }
        for name, ref in refs.items():
            if ref is None:
                continue
            try:
                check_token(resolve(ref, environ, read_file))
            except SecretError as exc:
                issues.append(Issue(f"consul.acl.{name}", f"{ref.describe()}: {exc}"))
    return issues


def check_token(value: str) -> None:
    """An ACL token's secret is one word (Consul makes UUIDs; it sends the token in a header)."""
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise SecretError("the token contains whitespace or a control character")
