"""Small pieces the command-line modules (cli, kvcli) share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


def read_token_file(path: Path, option: str, fail: Callable[[str], NoReturn]) -> str:
    """The token in ``path`` (stripped); ``fail`` names ``option`` when it is missing, unreadable or empty.
    The token itself is never part of a message."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        fail(f"{option} {path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{option} {path}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    if not token:
        fail(f"{option} {path} is empty")
    return token
