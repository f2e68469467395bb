"""The hosts' Docker TLS files checked before anything connects (``validate``, ``plan``, ``apply``): each
exists, is readable and parses as what it should be (the CA: certificates; the client certificate: a
certificate; the key: an unencrypted private key), each problem named with its field and line."""

from __future__ import annotations

from pathlib import Path

from desired_state.load import Issue, Loaded, line_of

MAX_PEM_BYTES = 1 << 20  # a CA bundle is kilobytes; anything near this is not one


def tls_file_issues(loaded: Loaded) -> list[Issue]:
    """Every problem with the Docker TLS files the topology names (``[]`` when none)."""
    issues: list[Issue] = []
    for index, host in enumerate(loaded.topology.hosts):
        if not host.tls:
            continue
        for field, path in (("ca", host.tls.ca), ("cert", host.tls.cert), ("key", host.tls.key)):
            where = f"hosts[{index}].tls.{field}"
            problem = _problem(field, Path(path))
            if problem is not None:
                issues.append(Issue(where, problem, line_of(loaded, where)))
    return issues


def _problem(field: str, path: Path) -> str | None:
    # imported here: cryptography costs the command line's start-up (tests/unit/test_deferred_paramiko.py)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        return f"{path}: no such file"
    except IsADirectoryError:
        return f"{path}: is a directory, not a PEM file"
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror or exc}"
    if len(data) > MAX_PEM_BYTES:
        return f"{path}: larger than {MAX_PEM_BYTES // 1024} KiB; not a PEM file"
    try:
        if field == "key":
            load_pem_private_key(data, password=None)
        elif field == "ca":
            x509.load_pem_x509_certificates(data)
        else:
            x509.load_pem_x509_certificate(data)
    except TypeError:
        return f"{path}: the key is encrypted; Docker's client needs it unencrypted (mode 0600)"
    except ValueError:
        what = {"ca": "a PEM CA certificate", "cert": "a PEM certificate", "key": "a PEM private key"}[field]
        return f"{path}: not {what}"
    return None
