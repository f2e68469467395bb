"""A real PostgreSQL server for the audit tests: Debian's postgresql, started by the tests.

A throwaway cluster under ``$CR_PG_ROOT`` (default /tmp/crpg), owned by the ``postgres`` user,
listening on 127.0.0.1 only, trust authentication for loopback. Reused across runs when running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PG_ROOT = Path(os.environ.get("CR_PG_ROOT", "/tmp/crpg"))
PORT = int(os.environ.get("CR_PG_PORT", "25432"))  # below Linux's ephemeral ports (32768-60999)


class PostgresError(RuntimeError):
    pass


def _bindir() -> Path:
    base = Path("/usr/lib/postgresql")
    versions = (
        sorted((p for p in base.iterdir() if (p / "bin" / "initdb").exists()), reverse=True)
        if base.is_dir()
        else []
    )
    if not versions:
        raise PostgresError(
            "PostgreSQL is not installed (apt-get install postgresql; scripts/bootstrap.sh does it)"
        )
    return versions[0] / "bin"


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120)


def _answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_postgres() -> str:
    """Start (or reuse) the server; returns the admin URL (database ``postgres``)."""
    bindir = _bindir()
    data = PG_ROOT / "data"
    if not _answers():
        if (data / "postmaster.pid").exists():
            # a server of this folder that does not answer here: left by a killed run, or listening on
            # another port (an older default): stop it, or pg_ctl start refuses the folder
            _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(PG_ROOT, ignore_errors=True)
            PG_ROOT.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(PG_ROOT, "postgres", "postgres")
            done = _as_postgres(
                str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"
            )
            if done.returncode != 0:
                raise PostgresError(f"initdb failed: {done.stderr.strip()}")
        done = _as_postgres(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(PG_ROOT / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {PORT} -k {PG_ROOT} -c fsync=off",
            "start",
        )
        if done.returncode != 0:
            log = (
                (PG_ROOT / "server.log").read_text(errors="replace")[-2000:]
                if (PG_ROOT / "server.log").exists()
                else ""
            )
            raise PostgresError(f"pg_ctl start failed: {done.stderr.strip()} {log}")
    deadline = time.monotonic() + 30
    while not _answers():
        if time.monotonic() > deadline:
            raise PostgresError(f"PostgreSQL did not listen on 127.0.0.1:{PORT}")
        time.sleep(0.1)
    return f"postgresql+psycopg://postgres@127.0.0.1:{PORT}/postgres"


def fresh_database(name: str) -> str:
    """Drop and create database ``name``; returns its SQLAlchemy URL."""
    import psycopg

    ensure_postgres()
    with psycopg.connect(
        f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:{PORT}/{name}"


def stop_postgres() -> None:
    """Stop the server (fast shutdown): the database becomes unavailable."""
    done = _as_postgres(str(_bindir() / "pg_ctl"), "-D", str(PG_ROOT / "data"), "-m", "fast", "-w", "stop")
    if done.returncode != 0 and _answers():
        raise PostgresError(f"pg_ctl stop failed: {done.stderr.strip()}")


def set_read_only(name: str, read_only: bool) -> None:
    """Make database ``name`` read-only (or writable) for every session, ending the open ones."""
    import psycopg

    with psycopg.connect(
        f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if read_only else "off"}'
        )
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
