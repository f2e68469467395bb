"""desired_state.load, desired_state.model and desired_state.secrets: text -> Topology, every error placed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from desired_state.load import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_VALUES, Issue, TopologyError, load_topology
from desired_state.model import Role, Topology
from desired_state.secrets import REDACTED, check_secrets

ROOT = Path(__file__).resolve().parents[2]
GOSSIP_16 = "k4cyl0oZbdW5sGQGOv1VZQ=="  # 16 random bytes, base64
GOSSIP_32 = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="  # 32 random bytes, base64
ONE_HOST_LINE = b"  - {name: a, docker: 'ssh://admin@10.0.0.1', advertise: 10.0.0.1, role: server}\n"


def host(name: str, ip: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    """One host entry; ``extra`` adds or overrides fields (``name=`` too, via ``**{"name": ...}``)."""
    return {"name": name, "docker": f"ssh://admin@{ip}", "advertise": ip, "role": role, **extra}


def doc(hosts: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    if hosts is None:
        hosts = [host("node1", "10.0.0.1"), host("node2", "10.0.0.2"), host("node3", "10.0.0.3", "client")]
    return {"cluster": "shop", **top, "hosts": hosts}


def as_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


def as_yaml(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def issues_of(data: bytes, fmt: str | None = None) -> list[Issue]:
    with pytest.raises(TopologyError) as caught:
        load_topology(data, source="t.yaml", fmt=fmt)
    assert caught.value.issues
    return caught.value.issues


def one_issue(data: bytes, fmt: str | None = None) -> Issue:
    issues = issues_of(data, fmt)
    assert len(issues) == 1, issues
    return issues[0]


def render_issues(issues: list[Issue]) -> list[str]:
    return [f"{i.path}: {i.message}" for i in issues]


# --- formats ---------------------------------------------------------------------------------------------


def test_yaml_and_json_give_the_same_topology() -> None:
    data = doc(consul={"ui": False, "extra_args": ["-log-level=warn"]})
    from_yaml = load_topology(as_yaml(data)).topology
    from_json = load_topology(as_json(data)).topology
    assert from_yaml == from_json
    assert from_yaml.cluster == "shop"
    assert [h.name for h in from_yaml.hosts] == ["node1", "node2", "node3"]
    assert [h.role for h in from_yaml.hosts] == [Role.SERVER, Role.SERVER, Role.CLIENT]
    assert from_yaml.consul.ui is False
    assert from_yaml.consul.extra_args == ("-log-level=warn",)


def test_json_is_detected_by_its_brace_and_can_be_forced() -> None:
    data = as_json(doc())
    assert load_topology(b"\n  " + data).topology.cluster == "shop"
    assert load_topology(data, fmt="json").topology.cluster == "shop"
    # forced JSON refuses YAML syntax
    issue = one_issue(as_yaml(doc()), fmt="json")
    assert issue.message.startswith("malformed JSON:")


def test_the_blog_example_loads() -> None:
    loaded = load_topology((ROOT / "examples" / "blog.yaml").read_bytes())
    t = loaded.topology
    assert (t.cluster, t.datacenter) == ("blog", "dc1")
    assert [(h.name, h.role, h.advertise) for h in t.hosts] == [
        ("node1", Role.SERVER, "192.168.99.100"),
        ("node2", Role.CLIENT, "192.168.99.101"),
    ]
    assert loaded.warnings == []  # one server: odd


def test_a_byte_order_mark_is_accepted() -> None:
    assert load_topology(b"\xef\xbb\xbf" + as_yaml(doc())).topology.cluster == "shop"


def test_defaults_fill_in() -> None:
    t = load_topology(as_yaml(doc())).topology
    assert t.datacenter == "dc1"
    assert t.consul.image == "hashicorp/consul:1.20"
    assert t.registrator.image == "gliderlabs/registrator:latest"
    assert (t.names.agent, t.names.registrator) == ("consul", "registrator")
    assert t.hosts[0].data_dir == "/var/lib/consul-reconciler/data"
    assert t.hosts[0].node_name == "node1"


# --- parse errors ----------------------------------------------------------------------------------------


def test_malformed_yaml_gives_line_and_column() -> None:
    text = b"cluster: shop\nhosts:\n  - name: node1\n    docker: [unclosed\n    role: server\n"
    issue = one_issue(text)
    assert issue.path == ""
    assert issue.message == "malformed YAML: while parsing a flow sequence expected ',' or ']', but got ':'"
    assert (issue.line, issue.column) == (5, 9)
    assert str(issue).startswith("(document) (line 5, column 9): malformed YAML")


def test_malformed_json_gives_line_and_column() -> None:
    text = b'{\n  "cluster": "shop",\n  "hosts": [\n    {"name": "node1" "docker": "x"}\n  ]\n}\n'
    issue = one_issue(text)
    assert issue.message == "malformed JSON: Expecting ',' delimiter"
    assert (issue.line, issue.column) == (4, 22)


@pytest.mark.parametrize(
    ("data", "path", "suggestion"),
    [
        ({**doc(), "datacentre": "dc2"}, "datacentre", "did you mean 'datacenter'?"),
        (doc(consul={"imgae": "x"}), "consul.imgae", "did you mean 'image'?"),
        (doc(registrator={"enabeld": False}), "registrator.enabeld", "did you mean 'enabled'?"),
        (doc(names={"agnet": "c"}), "names.agnet", "did you mean 'agent'?"),
        (
            doc([host("node1", "10.0.0.1", adverise="10.0.0.9")]),
            "hosts[0].adverise",
            "did you mean 'advertise'?",
        ),
        (
            doc([host("node1", "10.0.0.1", tls={"ca": "/a", "cert": "/b", "kye": "/c"})]),
            "hosts[0].tls.kye",
            "did you mean 'key'?",
        ),
    ],
)
def test_unknown_field_names_its_path_and_the_close_field(
    data: dict[str, Any], path: str, suggestion: str
) -> None:
    for encoded in (as_yaml(data), as_json(data)):
        issues = [i for i in issues_of(encoded) if i.path == path]
        assert len(issues) == 1, render_issues(issues_of(encoded))
        assert issues[0].message.startswith("unknown field; " + suggestion)
        assert "(allowed: " in issues[0].message


def test_unknown_field_with_nothing_close_lists_the_allowed_ones() -> None:
    issue = one_issue(as_yaml({**doc(), "zzzzzz": 1}))
    assert issue.path == "zzzzzz"
    assert issue.message == (
        "unknown field (allowed: acknowledge, cluster, consul, datacenter, hosts, names, registrator, "
        "rollout, snapshots)"
    )


def test_duplicate_key_in_yaml_is_rejected_with_both_lines() -> None:
    text = b"cluster: shop\nhosts: []\ndatacenter: a\ndatacenter: b\n"
    issue = one_issue(text)
    assert issue.message == "malformed YAML: duplicate key 'datacenter' (first at line 3)"
    assert issue.line == 4


def test_duplicate_key_nested_in_yaml_is_rejected() -> None:
    text = b"cluster: shop\nhosts:\n  - name: a\n    role: server\n    name: b\n"
    assert one_issue(text).message == "malformed YAML: duplicate key 'name' (first at line 3)"


def test_duplicate_key_in_json_is_rejected() -> None:
    text = b'{"cluster": "shop", "hosts": [{"name": "a", "name": "b"}]}'
    assert one_issue(text).message == "malformed JSON: duplicate key 'name'"


def test_yaml_aliases_are_rejected_even_a_harmless_one() -> None:
    text = (
        b"cluster: shop\nhosts:\n"
        b"  - &first {name: node1, docker: 'tcp://10.0.0.1:2376', advertise: 10.0.0.1, role: server}\n"
        b"  - *first\n"
    )
    issue = one_issue(text)
    assert "aliases (*name) are not allowed" in issue.message
    assert (issue.line, issue.column) == (4, 5)


def test_yaml_anchor_without_alias_is_fine() -> None:
    text = b"cluster: &c shop\nhosts:\n" + ONE_HOST_LINE
    assert load_topology(text).topology.cluster == "shop"


def test_yaml_unsafe_tags_are_rejected() -> None:
    issue = one_issue(b"cluster: !!python/name:os.system\nhosts: []\n")
    assert "could not determine a constructor" in issue.message


def test_non_utf8_is_rejected_with_the_byte_and_line() -> None:
    issue = one_issue(b"cluster: shop\ndatacenter: d\xfcsseldorf\nhosts: []\n")
    assert issue.message == "not UTF-8 text (byte 0xfc at offset 27)"
    assert issue.line == 2


def test_utf16_is_rejected() -> None:
    issue = one_issue(as_yaml(doc()).decode().encode("utf-16"))
    assert issue.message.startswith("not UTF-8 text (byte 0xff at offset 0)")


@pytest.mark.parametrize("text", [b"", b"   \n\t\n", b"# nothing but a comment\n", b"\xef\xbb\xbf"])
def test_empty_document_is_rejected(text: bytes) -> None:
    assert one_issue(text).message == "the document is empty"


def test_document_over_four_mebibytes_is_rejected_before_parsing() -> None:
    data = b"{" * (MAX_DOCUMENT_BYTES + 1)  # would be malformed, but size comes first
    issue = one_issue(data)
    assert issue.message == "the document is 4,194,305 bytes; the limit is 4,194,304"


def test_document_of_exactly_the_limit_is_accepted() -> None:
    body = as_yaml(doc())
    padding = MAX_DOCUMENT_BYTES - len(body) - 3
    data = body + b"# " + b"x" * padding + b"\n"
    assert len(data) == MAX_DOCUMENT_BYTES
    assert load_topology(data).topology.cluster == "shop"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_nesting_over_the_depth_limit_is_rejected(fmt: str) -> None:
    def nested(levels: int) -> bytes:
        # the top mapping is depth 0, its value list depth 1, ...
        if fmt == "json":
            return ('{"cluster": "shop", "x": ' + "[" * levels + "]" * levels + "}").encode()
        return ("cluster: shop\nx: " + "[" * levels + "]" * levels + "\n").encode()

    deep = one_issue(nested(MAX_DEPTH + 1), fmt=fmt)
    assert deep.message == f"nested deeper than {MAX_DEPTH} levels"
    # at the limit the document is merely wrong (an unknown field), not too deep
    at_limit = issues_of(nested(MAX_DEPTH), fmt=fmt)
    assert all("nested deeper" not in i.message for i in at_limit)
    assert any(i.path == "x" and i.message.startswith("unknown field") for i in at_limit)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_document_of_too_many_values_is_refused_before_validation(fmt: str) -> None:
    def values(count: int) -> bytes:
        # the top mapping, "cluster"'s value and "x"'s list are 3 values; the list holds the rest
        items = [0] * (count - 3)
        return (
            json.dumps({"cluster": "shop", "x": items}) if fmt == "json" else f"cluster: shop\nx: {items}\n"
        ).encode()

    over = one_issue(values(MAX_VALUES + 1), fmt=fmt)
    assert over.message == f"the document holds more than {MAX_VALUES:,} values; a topology has far fewer"
    at_limit = issues_of(values(MAX_VALUES), fmt=fmt)  # merely wrong: an unknown field
    assert any(i.path == "x" and i.message.startswith("unknown field") for i in at_limit)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_pathological_nesting_is_an_error_not_a_crash(fmt: str) -> None:
    levels = 100_000
    data = ("[" * levels + "]" * levels).encode()
    if fmt == "yaml":
        data = b"x: " + data
    assert one_issue(data, fmt=fmt).message == f"nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (b"- a\n- b\n", "a list"),
        (b'[{"cluster": "shop"}]', "a list"),
        (b"just a string\n", "a str"),
        (b"42\n", "a int"),
        (b"---\n", "null"),
    ],
)
def test_top_level_must_be_a_mapping(text: bytes, kind: str) -> None:
    assert one_issue(text).message == f"the document must be a mapping of fields, not {kind}"


def test_multiple_yaml_documents_are_rejected() -> None:
    issue = one_issue(as_yaml(doc()) + b"---\n" + as_yaml(doc()))
    assert "expected a single document" in issue.message


def test_non_string_keys_are_named_not_mistaken_for_list_indexes() -> None:
    text = b"cluster: shop\n1: one\nhosts:\n" + ONE_HOST_LINE
    issue = one_issue(text)
    assert (issue.path, issue.message) == ("", "key 1 is not a string (write it in quotes)")


# --- warnings, digest, error shape ------------------------------------------------------------------------


@pytest.mark.parametrize("servers", [2, 4, 6])
def test_even_number_of_servers_is_a_warning(servers: int) -> None:
    hosts = [host(f"node{i}", f"10.0.0.{i}") for i in range(1, servers + 1)]
    loaded = load_topology(as_yaml(doc(hosts)))
    assert len(loaded.topology.servers) == servers
    assert [(w.path, w.message) for w in loaded.warnings] == [
        (
            "hosts",
            f"{servers} servers is an even number; it tolerates no more failures than {servers - 1} "
            "(use an odd number: 1, 3 or 5)",
        )
    ]
    assert loaded.warnings[0].line == 3  # where "hosts:" is, in YAML


@pytest.mark.parametrize("servers", [1, 3, 5])
def test_odd_number_of_servers_has_no_warning(servers: int) -> None:
    hosts = [host(f"node{i}", f"10.0.0.{i}") for i in range(1, servers + 1)]
    hosts.append(host("client1", "10.0.1.1", "client"))
    assert load_topology(as_yaml(doc(hosts))).warnings == []


def test_digest_is_the_sha256_of_the_exact_bytes() -> None:
    data = as_yaml(doc())
    loaded = load_topology(data)
    assert loaded.digest == hashlib.sha256(data).hexdigest()
    # the same topology written differently is a different document version
    other = load_topology(data + b"# a comment\n")
    assert other.topology == loaded.topology
    assert other.digest != loaded.digest
    assert other.digest == hashlib.sha256(data + b"# a comment\n").hexdigest()


def test_error_names_the_source_and_every_issue() -> None:
    data = doc([host("node1", "10.0.0.999"), host("node 2", "10.0.0.2", "leader")])
    with pytest.raises(TopologyError) as caught:
        load_topology(as_yaml(data), source="/etc/topology.yaml")
    error = caught.value
    assert error.source == "/etc/topology.yaml"
    assert str(error).startswith("/etc/topology.yaml: ")
    assert sorted(i.path for i in error.issues) == ["hosts[0].advertise", "hosts[1].name", "hosts[1].role"]
    for issue in error.issues:
        assert str(issue) in str(error)
        assert issue.to_dict() == {
            "path": issue.path,
            "message": issue.message,
            "line": issue.line,
            "column": issue.column,
        }


def test_yaml_issues_carry_the_line_of_their_path() -> None:
    text = (
        b"cluster: shop\n"
        b"hosts:\n"
        b"  - name: node1\n"
        b"    docker: ssh://admin@10.0.0.1\n"
        b"    advertise: 10.0.0.1\n"
        b"    role: server\n"
        b"  - name: node2\n"
        b"    docker: ssh://admin@10.0.0.2\n"
        b"    advertise: not-an-ip\n"
        b"    role: client\n"
    )
    issue = one_issue(text)
    assert (issue.path, issue.line) == ("hosts[1].advertise", 9)
    assert str(issue) == "hosts[1].advertise (line 9): 'not-an-ip' is not an IP address"


# --- validation: values and paths -------------------------------------------------------------------------


def test_bad_ip_has_exactly_this_path_and_message() -> None:
    data = doc([host("node1", "10.0.0.1"), host("node2", "10.0.0.2"), host("node3", "10.0.0.300")])
    issue = one_issue(as_json(data))
    assert f"{issue.path}: {issue.message}" == "hosts[2].advertise: '10.0.0.300' is not an IP address"


def test_ipv6_addresses_are_accepted_and_normalised() -> None:
    data = doc([host("node1", "10.0.0.1", advertise="FD00:0:0::1", bind="fd00::0001")])
    h = load_topology(as_json(data)).topology.hosts[0]
    assert (h.advertise, h.bind) == ("fd00::1", "fd00::1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "node1"),
        ("node", "node1"),
        ("advertise", "10.0.0.1"),
        ("docker", "ssh://admin@10.0.0.1"),
    ],
)
def test_duplicates_name_both_indices(field: str, value: str) -> None:
    hosts = [
        host("node1", "10.0.0.1"),
        host("node2", "10.0.0.2", "client"),
        host("node3", "10.0.0.3", "client"),
    ]
    hosts[2][field] = value
    issues = render_issues(issues_of(as_yaml(doc(hosts))))
    assert f"hosts[2].{field}: {value!r} is already used by hosts[0]" in issues


def test_no_server_is_rejected() -> None:
    data = doc([host("node1", "10.0.0.1", "client")])
    assert render_issues(issues_of(as_yaml(data))) == [
        "hosts: no host has role 'server'; a Consul datacenter needs at least one"
    ]


@pytest.mark.parametrize("hosts", [[], None])
def test_no_hosts_is_rejected(hosts: list[Any] | None) -> None:
    data: dict[str, Any] = {"cluster": "shop"}
    if hosts is not None:
        data["hosts"] = hosts
    issue = one_issue(as_json(data))
    assert issue.path == "hosts"
    expected = "the topology has no hosts" if hosts is not None else "required field is missing"
    assert issue.message.startswith(expected)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://10.0.0.1:2375",
            "'http://10.0.0.1:2375' has unsupported scheme 'http' (supported: unix://, tcp://, ssh://)",
        ),
        ("https://10.0.0.1:2376", "has unsupported scheme 'https' (supported: unix://, tcp://, ssh://)"),
        (
            "npipe:////./pipe/docker_engine",
            "has unsupported scheme 'npipe' (supported: unix://, tcp://, ssh://)",
        ),
        ("tcp://10.0.0.1", "'tcp://10.0.0.1': a tcp:// endpoint needs a port (tcp://host:2376)"),
        ("tcp://:2376", "a tcp:// endpoint needs a host name or address"),
        ("ssh://", "a ssh:// endpoint needs a host name or address"),
        ("unix://var/run/docker.sock", "a unix:// endpoint needs an absolute socket path"),
    ],
)
def test_bad_docker_urls(url: str, message: str) -> None:
    issue = one_issue(as_yaml(doc([host("node1", "10.0.0.1", docker=url)])))
    assert issue.path == "hosts[0].docker"
    assert message in issue.message


@pytest.mark.parametrize(
    "url", ["unix:///var/run/docker.sock", "tcp://10.0.0.1:2376", "tcp://[fd00::1]:2376", "ssh://admin@node1"]
)
def test_good_docker_urls(url: str) -> None:
    tls = {"tls": False} if url.startswith("tcp://") else {}
    assert (
        load_topology(as_yaml(doc([host("node1", "10.0.0.1", docker=url, **tls)]))).topology.hosts[0].docker
        == url
    )


def test_a_tcp_endpoint_without_tls_is_refused_unless_plain_http_is_asked_for() -> None:
    plain = doc([host("node1", "10.0.0.1", docker="tcp://10.0.0.1:2375")])
    issue = one_issue(as_yaml(plain))
    assert issue.path == "hosts[0]"
    assert issue.message.startswith("tcp://10.0.0.1:2375 without 'tls' would be plain HTTP: anyone who can")
    assert "or tls: false to accept plain HTTP knowingly" in issue.message
    plain["hosts"][0]["tls"] = False
    loaded = load_topology(as_yaml(plain))
    assert loaded.topology.hosts[0].plain_tcp
    assert [str(w) for w in loaded.warnings] == [
        "hosts[0].tls (line 7): host node1's engine at tcp://10.0.0.1:2375 is reached over plain HTTP "
        "(tls: false), unauthenticated and unencrypted; use tls: {ca, cert, key} outside a test bench"
    ]
    plain["hosts"][0]["docker"] = "ssh://admin@10.0.0.1"  # tls: false is for tcp:// only, as the files are
    assert one_issue(as_yaml(plain)).message == "'tls' applies only to a tcp:// docker endpoint"


@pytest.mark.parametrize(
    "image",
    [
        "hashicorp/Consul",
        "hashicorp/consul:",
        "hashicorp/consul:1.20 --privileged",
        "hashicorp//consul",
        "-hashicorp/consul",
        "hashicorp/consul:-1",
        "hashicorp/consul@sha256:abc",
        "",
    ],
)
def test_bad_image_reference(image: str) -> None:
    issue = one_issue(as_yaml(doc(consul={"image": image})))
    assert issue.path == "consul.image"
    assert issue.message == (
        f"{image!r} is not a valid image reference (expected [registry/]name[:tag][@sha256:digest], "
        "lower-case name)"
    )


@pytest.mark.parametrize(
    "image",
    [
        "consul",
        "hashicorp/consul:1.20",
        "registry.example:5000/team/consul:1.20.1-ent",
        "hashicorp/consul@sha256:" + "a" * 64,
        "Registry.Example/consul",  # Docker reads an upper-case first part as a registry host
        "localhost:5000/consul",
    ],
)
def test_good_image_reference(image: str) -> None:
    assert load_topology(as_yaml(doc(registrator={"image": image}))).topology.registrator.image == image


@pytest.mark.parametrize("url", ["unix:///var/run/docker.sock", "ssh://admin@node1"])
def test_tls_only_on_tcp(url: str) -> None:
    tls = {"ca": "/etc/ca.pem", "cert": "/etc/cert.pem", "key": "/etc/key.pem"}
    issue = one_issue(as_yaml(doc([host("node1", "10.0.0.1", docker=url, tls=tls)])))
    assert (issue.path, issue.message) == ("hosts[0]", "'tls' applies only to a tcp:// docker endpoint")
    # the same on tcp:// is fine
    on_tcp = host("node1", "10.0.0.1", docker="tcp://10.0.0.1:2376", tls=tls)
    assert load_topology(as_yaml(doc([on_tcp]))).topology.hosts[0].tls is not None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("data", "'data' is not an absolute path (a host path must start with '/')"),
        ("./data", "'./data' is not an absolute path"),
        ("/data/../etc", "'/data/../etc' contains '..' (a host path must not climb out of its folder)"),
        ("/..", "'/..' contains '..'"),
        ("/data:/etc", "contains a character Docker cannot mount"),
    ],
)
def test_bad_data_dir(path: str, message: str) -> None:
    issue = one_issue(as_yaml(doc([host("node1", "10.0.0.1", data_dir=path)])))
    assert issue.path == "hosts[0].data_dir"
    assert message in issue.message


def test_data_dir_with_dots_in_names_is_fine() -> None:
    data = doc([host("node1", "10.0.0.1", data_dir="/srv/consul..d/data.v2")])
    assert load_topology(as_yaml(data)).topology.hosts[0].data_dir == "/srv/consul..d/data.v2"


@pytest.mark.parametrize(
    "name",
    [
        "node 1",
        "node1 ",
        '"node1"',
        "node'1",
        "$(reboot)",
        "`id`",
        "-node1",
        "--server",
        "node1-",
        "n" * 64,
        "node_1",
        "",
    ],
)
@pytest.mark.parametrize("field", ["name", "node"])
def test_bad_node_names(field: str, name: str) -> None:
    entry = host("node1", "10.0.0.1")
    entry[field] = name
    issue = one_issue(as_yaml(doc([entry])))
    assert issue.path == f"hosts[0].{field}"
    assert "is not allowed here (letters, digits and '-', at most 63, starting and ending" in issue.message
    assert issue.message.startswith(repr(name)[:20])


@pytest.mark.parametrize("name", ["a", "node-1", "N1", "n" * 63])
def test_good_node_names(name: str) -> None:
    assert load_topology(as_yaml(doc([host(name, "10.0.0.1")]))).topology.hosts[0].node_name == name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["log-level=debug"],
            "item 0: 'log-level=debug' must be a flag starting with '-' (write '-flag=value')",
        ),
        (["-log-level", "debug"], "item 1: 'debug' must be a flag starting with '-'"),
        (["-encrypt=abc"], "item 0: '-encrypt' is set by the topology itself: use consul.encrypt"),
        (["--encrypt", "abc"], "item 0: '--encrypt' is set by the topology itself"),
        (["-node=other"], "item 0: '-node' is set by the topology itself"),
        (
            ["-log-level=debug", "-server"],
            "item 1: '-server' is set by the topology itself: use hosts[].role",
        ),
        (["-ui"], "item 0: '-ui' is set by the topology itself: use consul.ui"),
        (["-client=0.0.0.0"], "item 0: '-client' is set by the topology itself: use consul.client_address"),
        (["-data-dir=/"], "item 0: '-data-dir' is set by the topology itself: use hosts[].data_dir"),
        (["-bootstrap"], "item 0: '-bootstrap' is set by the topology itself"),
        (["-retry-join=127.0.0.9"], "item 0: '-retry-join' is set by the topology itself"),
        (["-config-dir=/etc"], "item 0: '-config-dir' is set by the topology itself"),
        (["-datacenter", "dc9"], "item 0: '-datacenter' is set by the topology itself: use datacenter"),
        (["-bootstrap-expect=5"], "item 0: '-bootstrap-expect' is set by the topology itself"),
        (["-advertise=10.0.0.9"], "item 0: '-advertise' is set by the topology itself"),
        (["-node other"], "item 0: '-node' is set by the topology itself"),
        (["-log-level=debug\n-server"], "contains a newline or NUL"),
    ],
)
def test_bad_extra_args(args: list[str], message: str) -> None:
    issue = one_issue(as_json(doc(consul={"extra_args": args})))
    assert issue.path == "consul.extra_args"
    assert message in issue.message


def test_good_extra_args() -> None:
    args = [
        "-log-level=debug",
        "-node-meta=rack:r1",
        "-nodes-are-not-node=1",
        "-encrypt-verify-incoming=true",
    ]
    assert load_topology(as_json(doc(consul={"extra_args": args}))).topology.consul.extra_args == tuple(args)


@pytest.mark.parametrize(
    ("where", "value", "path", "message"),
    [
        ({"cluster": "Shop"}, None, "cluster", "'Shop' is not allowed here (lower-case letters"),
        (
            {"datacenter": "dc 1"},
            None,
            "datacenter",
            "'dc 1' is not allowed here (letters, digits, '_' and '-')",
        ),
        ({"names": {"agent": "my consul"}}, None, "names.agent", "'my consul' is not allowed here (a Docker"),
        ({"names": {"registrator": "_reg"}}, None, "names.registrator", "'_reg' is not allowed here"),
        ({"names": {"agent": "x", "registrator": "x"}}, None, "names", "names are both 'x'"),
        (
            {"consul": {"client_address": "localhost"}},
            None,
            "consul.client_address",
            "'localhost' is not an IP",
        ),
        ({"consul": {"ui": "maybe"}}, None, "consul.ui", "Input should be a valid boolean"),
        ({"registrator": {"resync": -1}}, None, "registrator.resync", "greater than or equal to 0"),
        ({"registrator": {"tags": ["a b"]}}, None, "registrator.tags[0]", "'a b' is not allowed here"),
        (
            {"registrator": {"deregister": "never"}},
            None,
            "registrator.deregister",
            "'always' or 'on-success'",
        ),
        ({}, {"role": "leader"}, "hosts[0].role", "Input should be 'server' or 'client', got 'leader'"),
        ({}, {"network": "overlay"}, "hosts[0].network", "Input should be 'host' or 'bridge'"),
        ({}, {"timeout": 0}, "hosts[0].timeout", "Input should be greater than 0"),
        ({}, {"timeout": "soon"}, "hosts[0].timeout", "Input should be a valid number"),
        ({}, {"advertise": 167772161}, "hosts[0].advertise", "Input should be a valid string, got 167772161"),
        ({}, {"docker_socket": "docker.sock"}, "hosts[0].docker_socket", "is not an absolute path"),
        ({}, {"registrator": "sometimes"}, "hosts[0].registrator", "Input should be a valid boolean"),
    ],
)
def test_field_errors_have_paths(
    where: dict[str, Any], value: dict[str, Any] | None, path: str, message: str
) -> None:
    data = doc([host("node1", "10.0.0.1", **(value or {}))], **where)
    issue = one_issue(as_json(data))
    assert issue.path == path
    assert message in issue.message


def test_strictness_is_not_type_juggling_for_structure() -> None:
    assert one_issue(as_json({"cluster": "shop", "hosts": {"name": "node1"}})).message.startswith(
        "Input should be a valid tuple"
    )
    assert one_issue(as_json({"cluster": 7, "hosts": []})).path == "cluster"


def test_the_model_can_be_built_directly() -> None:
    t = Topology.model_validate(doc())
    assert [h.name for h in t.servers] == ["node1", "node2"]
    with pytest.raises(ValueError, match="frozen"):
        t.cluster = "other"


# --- secrets: references, never values ----------------------------------------------------------------------


def topology_with_secret(ref: dict[str, str]) -> Topology:
    return load_topology(as_json(doc(consul={"encrypt": ref}))).topology


def no_file(path: str) -> str:
    raise AssertionError(f"read_file called for {path}")


def test_no_secret_reference_needs_nothing() -> None:
    assert check_secrets(load_topology(as_json(doc())).topology, {}, no_file) == []


@pytest.mark.parametrize("key", [GOSSIP_16, GOSSIP_32, f"  {GOSSIP_32}\n"])
def test_valid_gossip_key_from_env(key: str) -> None:
    assert check_secrets(topology_with_secret({"env": "GOSSIP"}), {"GOSSIP": key}, no_file) == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "env:GOSSIP: environment variable GOSSIP is not set or empty"),
        ({"GOSSIP": ""}, "env:GOSSIP: environment variable GOSSIP is not set or empty"),
        ({"GOSSIP": "   "}, "env:GOSSIP: environment variable GOSSIP is not set or empty"),
        ({"OTHER": GOSSIP_32}, "env:GOSSIP: environment variable GOSSIP is not set or empty"),
        (
            {"GOSSIP": "correct horse battery staple"},
            "env:GOSSIP: the gossip key is not valid base64 (create one with `consul keygen`)",
        ),
        (
            {"GOSSIP": "c2VjcmV0LWtleS0yNA=="},
            "env:GOSSIP: the gossip key decodes to 13 bytes; Consul needs 16 or 32",
        ),
        ({"GOSSIP": GOSSIP_32 + GOSSIP_16}, "env:GOSSIP: the gossip key is not valid base64"),
    ],
)
def test_gossip_key_from_env_that_does_not_resolve(environ: dict[str, str], message: str) -> None:
    issues = check_secrets(topology_with_secret({"env": "GOSSIP"}), environ, no_file)
    assert len(issues) == 1
    assert issues[0].path == "consul.encrypt"
    assert issues[0].message.startswith(message)
    for value in environ.values():
        if value.strip():
            assert value not in str(issues[0])
            assert value not in repr(issues[0])


def test_gossip_key_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "gossip.key"
    issues = check_secrets(topology_with_secret({"file": str(missing)}), {})
    assert render_issues(issues) == [
        f"consul.encrypt: file:{missing}: cannot read secret file {missing}: No such file or directory"
    ]


def test_gossip_key_file_resolves(tmp_path: Path) -> None:
    key = tmp_path / "gossip.key"
    key.write_text(GOSSIP_32 + "\n")
    assert check_secrets(topology_with_secret({"file": str(key)}), {}) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"hunter2-is-my-password", "the gossip key is not valid base64"),
        (b"\xff\xfe" + GOSSIP_32.encode("utf-16-le"), "is not UTF-8 text"),
    ],
)
def test_gossip_key_file_with_bad_content(tmp_path: Path, content: bytes, message: str) -> None:
    key = tmp_path / "gossip.key"
    key.write_bytes(content)
    issues = check_secrets(topology_with_secret({"file": str(key)}), {})
    assert len(issues) == 1 and issues[0].path == "consul.encrypt"
    assert message in issues[0].message
    assert "hunter2" not in issues[0].message


def test_gossip_key_file_read_through_the_given_reader() -> None:
    seen: list[str] = []

    def reader(path: str) -> str:
        seen.append(path)
        return "not base64 at all: s3cr3t"

    issues = check_secrets(topology_with_secret({"file": "/etc/consul/gossip.key"}), {}, reader)
    assert seen == ["/etc/consul/gossip.key"]
    assert "s3cr3t" not in str(issues[0])


def test_secret_reference_must_name_exactly_one_source() -> None:
    for ref in ({}, {"env": "A", "file": "/b"}):
        issue = one_issue(as_json(doc(consul={"encrypt": ref})))
        assert (issue.path, issue.message) == (
            "consul.encrypt",
            "give exactly one of 'env' (a variable name) or 'file' (a path)",
        )


def test_a_secret_written_inline_is_rejected_without_echoing_it() -> None:
    for encrypt in (GOSSIP_32, {"env": GOSSIP_32}, {"value": GOSSIP_32}, [GOSSIP_32]):
        for data in (as_json(doc(consul={"encrypt": encrypt})), as_yaml(doc(consul={"encrypt": encrypt}))):
            with pytest.raises(TopologyError) as caught:
                load_topology(data)
            assert caught.value.issues[0].path.startswith("consul.encrypt")
            assert GOSSIP_32 not in str(caught.value)
            assert GOSSIP_32[:12] not in str(caught.value)
    issue = one_issue(as_json(doc(consul={"encrypt": GOSSIP_32})))
    assert issue.message.endswith(f"got {REDACTED}")


def test_a_secret_in_extra_args_is_rejected_without_echoing_it() -> None:
    for args in (
        [f"-encrypt={GOSSIP_32}"],
        [f"--encrypt={GOSSIP_32}"],
        ["-encrypt", GOSSIP_32],
        [f"-encrypt {GOSSIP_32}"],
    ):
        with pytest.raises(TopologyError) as caught:
            load_topology(as_json(doc(consul={"extra_args": args})))
        assert "is set by the topology itself" in str(caught.value)
        assert GOSSIP_32 not in str(caught.value)


def test_loaded_renders_its_fleet_once() -> None:
    from desired_state.render import render

    doc = (
        b"cluster: c1\nconsul: {image: 'consul:1.15'}\nhosts:\n"
        b"  - {name: n1, docker: 'unix:///x.sock', advertise: 127.0.0.1, role: server}\n"
    )
    loaded = load_topology(doc)
    assert loaded.fleet == render(loaded.topology)
    assert loaded.fleet is loaded.fleet  # cached: a pass does not render again


CORPUS_YAML = [*sorted((ROOT / "tests" / "corpus").glob("*/*.yaml")), ROOT / "examples" / "blog.yaml"]


@pytest.mark.parametrize("path", CORPUS_YAML, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_libyaml_reads_what_the_pure_loader_reads_or_leaves_it_to_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from desired_state import load as load_module

    # the speed-up is really in use here: libyaml, resolving each scalar's tag once
    fast_loader = load_module._FAST_LOADER
    assert fast_loader is not None and issubclass(fast_loader, yaml.CSafeLoader)
    text = path.read_bytes().decode("utf-8", errors="replace")  # load_topology refuses bad UTF-8 first
    fast = load_module._parse_yaml_fast(fast_loader, text)
    monkeypatch.setattr(load_module, "_FAST_LOADER", None)
    try:
        pure: Any = load_module._parse_yaml(text, path.name)
    except TopologyError:
        pure = None  # the pure loader reports it; libyaml must have left it to it
    assert fast == pure  # the same data and the same line for every path


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # an alias
        "a: 1\na: 2\n",  # a duplicate key
        "a: [1, 2\n",  # a syntax error
        "",  # nothing
    ],
)
def test_libyaml_leaves_everything_to_report_to_the_pure_loader(text: str) -> None:
    from desired_state import load as load_module

    assert load_module._parse_yaml_fast(yaml.CSafeLoader, text) is None


def _random_value(rng: Any, depth: int = 0) -> Any:
    scalars = ["yes", "no", "on", "0x1F", "1e3", "2026-01-01", "~", "null", "a: b", "- x", "#c", "é", "\t"]
    kind = rng.randrange(6 if depth < 4 else 3)
    if kind == 0:
        return rng.choice(scalars) + rng.choice(["", "z", " q"])
    if kind == 1:
        return rng.choice([rng.randint(-5, 5), rng.random(), True, None])
    if kind == 2:
        return "".join(rng.choice("ab:-#'\" {}[],&*!|>%@`\\\n") for _ in range(rng.randrange(6)))
    if kind == 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        f"k{i}{rng.choice(['', ':', ' x'])}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))
    }


def test_libyaml_never_reads_a_document_differently_from_the_pure_loader() -> None:
    """Seeded random documents, dumped in block and flow style, some then damaged: wherever the pure
    loader reads a document, the fast path reads the same data and lines, or leaves it to it."""
    import random

    from desired_state import load as load_module

    rng = random.Random(20261127)
    compared = 0
    for _ in range(400):
        text = yaml.safe_dump({"doc": _random_value(rng)}, default_flow_style=rng.choice([False, True, None]))
        if rng.random() < 0.4:  # damage it: drop, repeat or insert a character
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(["", text[at], "\t", ":", "*a", "&a "]) + text[at + 1 :]
        fast = load_module._parse_yaml_fast(yaml.CSafeLoader, text)
        try:
            loader = load_module._StrictLoader(text)
            try:
                node = loader.get_single_node()
                lines: dict[str, int] = {}
                if node is not None:
                    load_module._map_lines(node, "", lines)
                pure = (loader.construct_document(node), lines) if node is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError:
            continue  # the pure loader refuses it: libyaml may take it (it is the more lenient)
        if fast is not None:
            compared += 1
            assert fast == pure, text
    assert compared > 200  # most documents were really compared
