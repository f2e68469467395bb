"""The operator's agent config files (consul.config_files): read on the management host and copied into
the agents, or on each host and mounted; their content hashed so that an edit replaces them (no
Docker: tests/integration/test_mounted_config.py has the engines)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from desired_state.configfiles import attach
from desired_state.load import Loaded, TopologyError, load_topology
from reconciler.actual import ObservedContainer
from reconciler.containers import ContainerOps, ExecOptions
from reconciler.formatting import docker_run_line
from reconciler.labels import MOUNTED_CONFIG, labels_for
from reconciler.mounted import (
    RECORD,
    Edit,
    MountedConfigError,
    digest,
    edits,
    folder_files,
    loaded_record,
    parse_record,
)
from reconciler.plan import Kind, _compare, field_changes

SECRETISH = '{"acl": {"tokens": {"replication": "0d5f-secret-in-a-config-file"}}}'


def loaded(files: list[dict[str, Any]]) -> Loaded:
    hosts = [{"name": "s1", "docker": "ssh://admin@127.0.0.1", "advertise": "127.0.0.1", "role": "server"}]
    doc = {"cluster": "prod", "consul": {"config_files": files}, "hosts": hosts}
    return load_topology(json.dumps(doc).encode())


def test_a_file_is_copied_into_the_agent_and_only_its_hash_is_shown(tmp_path: Path) -> None:
    extra = tmp_path / "telemetry.json"
    extra.write_text(SECRETISH)
    hcl = tmp_path / "limits.hcl"
    hcl.write_text("limits { http_max_conns_per_client = 400 }\n")
    doc = attach(loaded([{"file": str(extra)}, {"file": str(hcl), "name": "20-limits.hcl"}]))
    spec = doc.fleet.hosts[0].specs[0]
    assert [c.path for c in spec.config_files] == [
        "/consul/config/telemetry.json",
        "/consul/config/20-limits.hcl",
    ]
    record = json.dumps(spec.record())
    assert "0d5f-secret" not in record and "/consul/config/telemetry.json:sha256=" in record
    line = docker_run_line(spec)
    assert (
        "0d5f-secret" not in line and "/consul/config/telemetry.json = (an operator's file, copied;" in line
    )
    archive = ContainerOps("prod", ExecOptions(environ={})).config_archive(spec)
    assert archive is not None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("consul/config/telemetry.json")
        assert member is not None and member.read().decode() == SECRETISH


def test_an_edited_file_is_a_new_desired_state_that_replaces_the_agent(tmp_path: Path) -> None:
    extra = tmp_path / "telemetry.json"
    extra.write_text('{"telemetry": {"disable_hostname": true}}')
    first = attach(loaded([{"file": str(extra)}]))
    assert attach(first) is first  # nothing changed: the same desired state, rendered once
    extra.write_text('{"telemetry": {"disable_hostname": false}}')
    second = attach(first)
    assert second is not first and second.files_digest != first.files_digest
    old, new = first.fleet.hosts[0].specs[0], second.fleet.hosts[0].specs[0]
    assert old.spec_hash() != new.spec_hash()
    assert [c.field for c in field_changes(old.record(), new.record())] == ["config_files"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "consul.config_files[0].file: cannot read {path}: No such file or directory"),
        (b"\xff\xfe", "consul.config_files[0].file: {path} is not UTF-8 text"),
        (b'["not", "an", "object"]', "consul.config_files[0].file: {path} is not a JSON object"),
    ],
)
def test_a_file_that_cannot_be_used_is_an_invalid_document_naming_the_field(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "extra.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TopologyError) as caught:
        attach(loaded([{"file": str(path)}]))
    assert str(caught.value.issues[0]).startswith(message.format(path=path))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"file": "extra.json"}, "is not an absolute path"),
        ({"file": "/etc/consul.d/extra.yaml"}, "Consul reads only *.json and *.hcl files"),
        ({"file": "/etc/consul.d/x.json", "name": "tls.json"}, "is a file the controller writes itself"),
    ],
)
def test_references_are_checked_where_declared(ref: dict[str, str], message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        loaded([ref])
    assert caught.value.issues[0].path.startswith("consul.config_files[0]")
    assert message in caught.value.issues[0].message


def test_two_files_may_not_land_on_one_name() -> None:
    with pytest.raises(TopologyError) as caught:
        loaded([{"file": "/a/extra.json"}, {"file": "/b/extra.json"}])
    assert "item 1: 'extra.json' is already the name of item 0" in str(caught.value)


def test_rendering_without_reading_the_files_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="was not read before rendering"):
        _ = loaded([{"file": "/etc/consul.d/extra.json"}]).fleet


def test_the_production_example_validates_and_renders_every_part(tmp_path: Path) -> None:
    """examples/production.yaml (README): TLS, ACLs, the gossip key, a config file and snapshots."""
    example = Path(__file__).resolve().parents[2] / "examples" / "production.yaml"
    doc = load_topology(example.read_bytes())
    telemetry = '{"telemetry": {"prometheus_retention_time": "60s"}}'
    fleet = attach(doc, read=lambda path: telemetry.encode()).fleet
    server = next(s for h in fleet.hosts if h.name == "consul1" for s in h.specs if s.role == "server")
    client = next(s for h in fleet.hosts if h.name == "app1" for s in h.specs if s.role == "client")
    assert [c.path for c in server.config_files] == [
        "/consul/config/acl.json",
        "/consul/config/tls.json",
        "/consul/config/telemetry.json",
    ]
    assert [s.key for s in server.secret_files] == [
        "encrypt",
        "acl.tokens.agent",
        "acl.tokens.initial_management",
    ]
    assert [s.key for s in client.secret_files] == ["encrypt", "acl.tokens.agent"]
    assert [m.record() for m in client.mounted_config] == [
        "/etc/consul.d/limits.hcl:/consul/config/limits.hcl:ro"
    ]
    assert server.agent_http == "https://192.0.2.11:8501"
    assert (
        doc.topology.snapshots.keep == 20 and doc.topology.snapshots.dir == "/var/backups/consul-reconciler"
    )
    assert doc.warnings == []


# ------------------------------------------------------------------------------------------------
# host_path: a file on each host, mounted read-only; its hash recorded in the agent when it is made


def mounted_spec(ref: dict[str, str] | None = None) -> Any:
    doc = attach(loaded([ref or {"host_path": "/etc/consul.d/limits.hcl", "name": "20-limits.hcl"}]))
    return doc.fleet.hosts[0].specs[0]


def config_folder(files: dict[str, bytes]) -> bytes:
    """A tar of /consul/config as Docker's archive API sends it (``config/...``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo("config")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for path, data in files.items():
            info = tarfile.TarInfo(path.removeprefix("/consul/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_host_file_is_mounted_read_only_named_in_the_spec_and_labelled() -> None:
    spec = mounted_spec()
    assert spec.config_files == ()  # nothing copied: the file is on the host
    assert [m.record() for m in spec.mounted_config] == [
        "/etc/consul.d/limits.hcl:/consul/config/20-limits.hcl:ro"
    ]
    assert spec.record()["config_files"] == [
        "/consul/config/20-limits.hcl:mounted from the host's /etc/consul.d/limits.hcl"
    ]
    assert json.loads(labels_for("prod", spec)[MOUNTED_CONFIG]) == {
        "/consul/config/20-limits.hcl": "/etc/consul.d/limits.hcl"
    }
    assert "-v /etc/consul.d/limits.hcl:/consul/config/20-limits.hcl:ro" in docker_run_line(spec)
    other = mounted_spec({"host_path": "/srv/consul/limits.hcl", "name": "20-limits.hcl"})
    assert [c.field for c in field_changes(spec.record(), other.record())] == ["config_files"]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"name": "x.json"}, "give one of 'host_path'"),
        ({"file": "/a/x.json", "host_path": "/b/x.json"}, "give one of 'host_path'"),
        ({"host_path": "consul.d/x.json"}, "is not an absolute path"),
        ({"host_path": "/etc/consul.d/x.yaml"}, "Consul reads only *.json and *.hcl files"),
    ],
)
def test_a_host_file_reference_is_checked_where_declared(ref: dict[str, str], message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        loaded([ref])
    assert caught.value.issues[0].path.startswith("consul.config_files[0]")
    assert message in caught.value.issues[0].message


def test_the_record_made_at_creation_finds_an_edit_on_the_host_and_only_then() -> None:
    path = "/consul/config/extra.json"
    first = {path: b'{"log_level": "INFO"}'}
    record = loaded_record([path], first)
    mounted = {path: "/etc/consul.d/extra.json"}
    kept = parse_record(folder_files(config_folder({**first, RECORD: record})))
    assert edits(mounted, kept, first) == ()  # as the agent read it
    [edit] = edits(mounted, kept, {path: b'{"log_level": "DEBUG"}'})
    assert edit.loaded == digest(first[path]) and edit.now == digest(b'{"log_level": "DEBUG"}')
    assert edit.before().startswith("extra.json sha256:") and "(on the host now)" in edit.after()
    assert "DEBUG" not in edit.before() + edit.after()  # contents are never shown
    assert edits(mounted, kept, {})[0].after() == "extra.json missing or unreadable on the host"
    assert edits(mounted, {}, first)[0].before() == "extra.json (what its agent read is not recorded)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "extra.json is not a regular file on the host"),
        (b"\xff", "extra.json is not UTF-8 text"),
        (b"[1]", "extra.json is not a JSON object"),
    ],
)
def test_a_host_file_consul_would_refuse_is_refused_at_creation(data: bytes | None, message: str) -> None:
    path = "/consul/config/extra.json"
    with pytest.raises(MountedConfigError, match=message):
        loaded_record([path], {} if data is None else {path: data})


def test_an_edited_host_file_plans_a_replacement_naming_the_file() -> None:
    spec = mounted_spec({"host_path": "/etc/consul.d/extra.json"})
    agent = ObservedContainer(
        id="c" * 64, name=spec.name, image=spec.image, state="running", labels=labels_for("prod", spec)
    )
    assert agent.mounted_config == {"/consul/config/extra.json": "/etc/consul.d/extra.json"}
    assert _compare(spec, agent) is None
    edit = Edit("/consul/config/extra.json", "a" * 64, "b" * 64)
    action = _compare(spec, replace(agent, config_edits=(edit,)))
    assert action is not None and action.kind is Kind.REPLACE
    assert [r.to_dict()["field"] for r in action.reasons] == ["config_files"]
    assert str(action.reasons[0]) == (
        "config_files: 'extra.json sha256:aaaaaaaaaaaa (as its agent read it)' -> "
        "'extra.json sha256:bbbbbbbbbbbb (on the host now)'"
    )
