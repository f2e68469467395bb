"""Whatever the desired state holds, reading it ends in a topology or in the loader's own located error,
within bounded memory; no command prints a traceback; a file that is not a regular file is refused at
once. Property-based (Hypothesis): any bytes, and random mutations of the valid corpus documents."""

from __future__ import annotations

import os
import random
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from desired_state.load import MAX_DOCUMENT_BYTES, TopologyError, load_topology
from desired_state.model import SecretRef
from desired_state.secrets import SecretError, resolve
from reconciler.cli import app
from reconciler.sources import FileSource, SourceError
from tests.unit.test_bad_topologies import GOOD, memory_cap

VALID = [p.read_text() for p in GOOD if p.suffix == ".yaml"]

# What a hostile or careless edit does to one line of a valid document.
MUTATIONS = (
    lambda v: f"!!int {v}",
    lambda v: f"!!float {v}",
    lambda v: f"!!timestamp {v}",
    lambda v: f"!!binary {v}",
    lambda v: f"!!python/object:os.system {v}",
    lambda v: f"!!set {{{v}}}",
    lambda v: v + "\x00",
    lambda v: v + "\x1b[31m",
    lambda v: "9" * 5000,
    lambda v: "x" * 200_000,
    lambda v: "[" + v + "]",
    lambda v: "{k: " + v + "}",
    lambda v: "true",
    lambda v: "1e999",
    lambda v: ".nan",
    lambda v: "null",
    lambda v: "&a " + v,
    lambda v: "*a",
    lambda v: "<<: {x: 1}",
)


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        index = rng.randrange(len(lines))
        line = lines[index]
        kind = rng.randrange(4)
        if kind == 0 and ":" in line:  # a value replaced
            key, _, value = line.partition(":")
            lines[index] = f"{key}: {rng.choice(MUTATIONS)(value.strip() or 'x')}"
        elif kind == 1:  # a line repeated: a duplicate key
            lines.insert(index, line)
        elif kind == 2:  # a line dropped
            del lines[index]
        else:  # a character inserted anywhere
            at = rng.randrange(len(line) + 1)
            char = rng.choice(["\t", "\x00", "\x85", "'", '"', "{", "[", "&", "*", "!"])
            lines[index] = line[:at] + char + line[at:]
        if not lines:
            lines = ["x"]
    return "\n".join(lines) + "\n"


def _loads_or_refuses(data: bytes) -> None:
    with memory_cap():
        try:
            load_topology(data)
        except TopologyError as error:
            assert error.issues and all(str(issue) for issue in error.issues)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_any_bytes_load_or_are_refused_with_the_loaders_own_error(data: bytes) -> None:
    _loads_or_refuses(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(range(len(VALID))))
def test_mutated_valid_documents_load_or_are_refused(seed: int, which: int) -> None:
    _loads_or_refuses(mutate(VALID[which], random.Random(seed)).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_any_text_as_json_loads_or_is_refused(text: str) -> None:
    with memory_cap():
        try:
            load_topology(text.encode("utf-8", "surrogatepass"), fmt="json")
        except TopologyError as error:
            assert error.issues


def test_no_command_prints_a_traceback_for_mutated_documents(tmp_path: Path) -> None:
    runner = CliRunner()
    rng = random.Random(20261201)
    path = tmp_path / "topology.yaml"
    for round_ in range(30):
        path.write_text(mutate(VALID[round_ % len(VALID)], rng), encoding="utf-8", errors="surrogatepass")
        for args in (
            ["validate", str(path)],
            ["render", str(path)],
            ["plan", str(path), "--db", str(tmp_path / "audit.db")],
        ):
            result = runner.invoke(app, args)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                args,
                path.read_text(errors="replace")[:500],
                result.exception,
            )
            assert "Traceback" not in result.output
            assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)


def test_a_device_a_fifo_and_a_directory_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "topology.fifo"
    os.mkfifo(fifo)
    refused: dict[str, str] = {}

    def read(path: Path) -> None:
        try:
            FileSource(path).read()
        except SourceError as exc:
            refused[str(path)] = str(exc)

    for path, kind in ((Path("/dev/zero"), "character device"), (fifo, "FIFO"), (tmp_path, "directory")):
        reader = threading.Thread(target=read, args=(path,), daemon=True)
        reader.start()
        reader.join(10)  # a FIFO would block, a device never end: neither happens
        assert not reader.is_alive(), f"reading {path} did not return"
        assert kind in refused[str(path)] and "not a regular file" in refused[str(path)]


def test_a_file_larger_than_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as out:
        out.truncate(MAX_DOCUMENT_BYTES * 50)  # a sparse 200 MiB file: only limit + 1 bytes are read
    with memory_cap(256 << 20), pytest.raises(SourceError, match="larger than"):
        FileSource(big).read()


def test_a_secret_file_that_is_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="not a regular file"):
        resolve(SecretRef(file="/dev/zero"))
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(SecretError, match="FIFO"):
        resolve(SecretRef(file=str(fifo)))
