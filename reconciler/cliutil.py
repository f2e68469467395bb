"""Small pieces the command-line modules (cli, kvcli) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from reconciler.audit import AuditLog, default_database_url, normalize_url


def safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def open_audit(db: str | None, fail: Callable[[str], NoReturn]) -> AuditLog:
    """The audit log at ``--db`` (else $CONSUL_RECONCILER_DB, else the default file); ``fail`` on error."""
    try:
        url = normalize_url(db) if db else default_database_url()
    except ValueError as exc:
        fail(f"--db: {exc}")
    try:
        return AuditLog(url)
    except Exception as exc:
        fail(f"cannot open the audit database {safe_url(url)}: {exc}")
