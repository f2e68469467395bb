"""Reading the agent config files a topology names on the management host (``consul.config_files``
with ``file``; one with ``host_path`` is on each host, read through its engine: reconciler.mounted).

The shell's part of the desired state: :func:`attach` reads each file (bounded, regular files only,
UTF-8; a ``.json`` file must hold a JSON object, as Consul requires) and returns the document with
their contents and one digest of them, so that an edited file is a new desired state whose spec hash
differs: the agents are replaced through the gates. A file that cannot be read is a TopologyError
naming its field, like any other invalid document: the last valid state stays in force.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace

from desired_state.load import Issue, Loaded, TopologyError
from desired_state.readfile import read_bounded

MAX_CONFIG_BYTES = 1 << 20  # an agent configuration file is a few kilobytes


def read_config_file(path: str) -> bytes:
    return read_bounded(path, MAX_CONFIG_BYTES)


def attach(loaded: Loaded, read: Callable[[str], bytes] = read_config_file) -> Loaded:
    """``loaded`` with the contents of its config files (the same object when it names none, or when
    they have not changed since it was attached)."""
    refs = loaded.topology.consul.config_files
    if not any(ref.file for ref in refs):
        return loaded
    files: dict[str, str] = {}
    issues: list[Issue] = []
    for index, ref in enumerate(refs):
        if ref.file is None:
            continue  # on each host, mounted
        where = f"consul.config_files[{index}].file"
        try:
            text = read(ref.file).decode("utf-8")
        except OSError as exc:
            issues.append(Issue(where, f"cannot read {ref.file}: {getattr(exc, 'strerror', None) or exc}"))
            continue
        except UnicodeDecodeError:
            issues.append(Issue(where, f"{ref.file} is not UTF-8 text"))
            continue
        if ref.target.endswith(".json") and not _json_object(text):
            issues.append(Issue(where, f"{ref.file} is not a JSON object (Consul would not start with it)"))
            continue
        files[ref.file] = text
    if issues:
        raise TopologyError(issues)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    if digest.hexdigest() == loaded.files_digest:
        return loaded
    return replace(loaded, files=files, files_digest=digest.hexdigest())


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
