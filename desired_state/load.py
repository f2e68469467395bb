"""Text -> Topology, with every error named by its place.

Pure: the caller reads the file or the KV value and hands over bytes. Errors
come back all at once as :class:`TopologyError`, each :class:`Issue` naming the
path in the document (``hosts[2].advertise``) and, where the document is YAML
or JSON text we parsed, its line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from desired_state.gcpause import collector_paused
from desired_state.model import Topology
from desired_state.render import render
from desired_state.spec import DesiredFleet

MAX_DOCUMENT_BYTES = 4 << 20  # 4 MiB: 10,000 hosts in the style of examples/blog.yaml are ~1.3 MiB
MAX_DEPTH = 32
MAX_VALUES = 250_000  # scalars, mappings and lists: 10,000 hosts take about 70,000
MAX_ISSUES = 100  # errors reported one by one; the rest are counted
_SECRET_FIELDS = frozenset(  # fields whose values are never shown in an error
    {"encrypt", "agent_token", "default_token", "initial_management_token"}
)


@dataclass(frozen=True)
class Issue:
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.path or "(document)"
        if self.line is not None:
            where += f" (line {self.line}" + (f", column {self.column})" if self.column else ")")
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line, "column": self.column}


class TopologyError(Exception):
    """The document is not a valid topology; ``issues`` lists every problem."""

    def __init__(self, issues: list[Issue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(i) for i in issues))


@dataclass(frozen=True)
class Loaded:
    topology: Topology
    warnings: list[Issue]
    digest: str  # sha256 of the document's bytes: which version was applied
    text: str = ""  # the document itself (secrets appear in it only as references)
    files: Mapping[str, str] = field(default_factory=dict)  # consul.config_files: path -> content
    files_digest: str = ""  # of those contents (desired_state.configfiles): an edit is a new state
    lines: Mapping[str, int] = field(default_factory=dict)  # field path -> its line in the document

    @cached_property
    def fleet(self) -> DesiredFleet:
        """The containers this document asks for, rendered once per document (and version of its
        config files), not once per pass."""
        with collector_paused():
            return render(self.topology, self.files)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_topology(
    data: bytes, *, source: str = "", fmt: str | None = None, base: Path | None = None
) -> Loaded:
    """Parse and validate one topology document (YAML or JSON).

    ``fmt`` is "yaml" or "json"; by default a document whose first non-blank
    character is ``{`` is read as JSON, anything else as YAML (a superset).
    ``base``: the folder of the topology file; the relative paths of the hosts' Docker TLS files are
    taken from there, wherever the command runs (without it, from the working directory).

    Whatever goes wrong reading it, the answer is a TopologyError (never another exception): a
    document that cannot be read is a refused document, and the last valid state stays in force.
    """
    try:
        with collector_paused():
            return _load(data, source, fmt, base)
    except TopologyError:
        raise
    except RecursionError:
        raise TopologyError([Issue("", f"nested deeper than {MAX_DEPTH} levels")], source) from None
    except MemoryError:
        issue = Issue("", "the document needs more memory than there is to read it")
        raise TopologyError([issue], source) from None
    except Exception as exc:  # a parser or validator failing in a way of its own: still a refusal
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise TopologyError(
            [Issue("", f"the document cannot be read: {type(exc).__name__}" + (f": {text}" if text else ""))],
            source,
        ) from None


def _load(data: bytes, source: str, fmt: str | None, base: Path | None) -> Loaded:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise TopologyError(
            [Issue("", f"the document is {len(data):,} bytes; the limit is {MAX_DOCUMENT_BYTES:,}")], source
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TopologyError(
            [Issue("", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", line)],
            source,
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise TopologyError([Issue("", "the document is empty")], source)
    kind = fmt or ("json" if text.lstrip().startswith("{") else "yaml")
    raw, lines = _parse_json(text, source) if kind == "json" else _parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise TopologyError(
            [Issue("", f"the document must be a mapping of fields, not {_kind(raw)}", 1)], source
        )
    _check_size(raw, source)
    try:
        topology = Topology.model_validate(raw)
    except ValidationError as exc:
        raise TopologyError(_issues_from(exc, lines), source) from None
    if base is not None:
        topology = _tls_under(topology, base)
    warnings = [_issue_from_line(text_line, lines) for text_line in topology.warnings()]
    return Loaded(topology=topology, warnings=warnings, digest=digest_of(data), text=text, lines=lines)


def _tls_under(topology: Topology, base: Path) -> Topology:
    """The hosts' relative Docker TLS paths made absolute under ``base`` (the topology file's folder)."""
    hosts = []
    for host in topology.hosts:
        if host.tls:
            files = {
                k: str(base / v) if not Path(v).is_absolute() else v for k, v in host.tls.model_dump().items()
            }
            host = host.model_copy(update={"tls": host.tls.model_copy(update=files)})
        hosts.append(host)
    return topology.model_copy(update={"hosts": hosts})


def line_of(loaded: Loaded, path: str) -> int | None:
    """The line of the field at ``path`` (or of the nearest field holding it)."""
    return _line_for(path, dict(loaded.lines))


# --- parsing -----------------------------------------------------------------------------------------

LineMap = dict[str, int]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (no alias bombs) and duplicate keys."""


def _compose_node(self: _StrictLoader, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
    if self.check_event(yaml.AliasEvent):
        event = self.peek_event()  # type: ignore[no-untyped-call]
        raise yaml.constructor.ConstructorError(
            None, None, "aliases (*name) are not allowed in a topology; write the value out", event.start_mark
        )
    return yaml.SafeLoader.compose_node(self, parent, index)


_StrictLoader.compose_node = _compose_node  # type: ignore[method-assign,assignment]


def _construct_object(self: yaml.SafeLoader, node: yaml.Node, deep: bool = False) -> Any:
    """A value the constructors cannot make (``!!int abc``, an impossible ``!!timestamp``, an integer
    of more digits than Python converts) is a located YAML error, not an exception of its own."""
    try:
        return yaml.SafeLoader.construct_object(self, node, deep)
    except (yaml.YAMLError, RecursionError):
        raise
    except Exception as exc:  # ValueError, OverflowError, PyYAML's own AttributeError on a bad timestamp
        shown = _show(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise yaml.constructor.ConstructorError(
            None, None, f"{shown} cannot be read as {node.tag.rsplit(':', 1)[-1]}: {reason}", node.start_mark
        ) from None


_StrictLoader.construct_object = _construct_object  # type: ignore[method-assign,assignment]


# libyaml's parser, when PyYAML was built with it: about 5x faster than the pure-Python one (a
# 10,000-host document: 3 s -> 0.6 s). It is used only for documents it takes without a word to
# say; anything to report (a syntax error, an alias, a duplicate key, an empty document) is
# reported by the pure loader, with its messages and positions. libyaml bounds nesting (1,000
# levels), so its recursive composer cannot exhaust the stack.
_C_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


class _ResolvedOnce:
    """Mixed into a loader (before it), resolves each scalar's tag once per document. PyYAML resolves
    every scalar in Python, trying the implicit resolvers' patterns (int, float, bool, null,
    timestamp...) one by one, even under libyaml; a 10,000-host document has 110,000 scalars, most of
    them the same few keys and values. The answer depends on the scalar's text and how it was written
    alone (the safe loaders have no path resolvers), so it is remembered by those."""

    _resolved: dict[tuple[str, Any], str]

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        resolve = super().resolve  # type: ignore[misc]  # the loader's own, after this in the MRO
        if kind is not yaml.ScalarNode:
            return resolve(kind, value, implicit)  # type: ignore[no-any-return]
        key = (value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            tag = self._resolved[key] = resolve(kind, value, implicit)
        return tag


def _resolving_once(loader: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    class Loader(_ResolvedOnce, loader):  # type: ignore[valid-type,misc]
        def __init__(self, stream: str) -> None:
            loader.__init__(self, stream)
            self._resolved = {}

    return Loader


_FAST_LOADER: type[yaml.SafeLoader] | None = _resolving_once(_C_LOADER) if _C_LOADER is not None else None


def _parse_yaml(text: str, source: str) -> tuple[Any, LineMap]:
    if _FAST_LOADER is not None:
        parsed = _parse_yaml_fast(_FAST_LOADER, text)
        if parsed is not None:
            return parsed
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        at: int = exc.position
        where = (text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1)
        char = exc.character
        what = f"character #x{char:04x}" if isinstance(char, int) else "a character"
        what = f"unacceptable {what}"
        issue = Issue("", f"malformed YAML: {what} (control characters are not allowed)", *where)
        raise TopologyError([issue], source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise TopologyError([Issue("", "the document is empty")], source)
        lines: LineMap = {}
        _map_lines(node, "", lines)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "malformed YAML"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise TopologyError([Issue("", f"malformed YAML: {message}", line, column)], source) from None
    except yaml.YAMLError as exc:
        raise TopologyError([Issue("", f"malformed YAML: {exc}")], source) from None
    except RecursionError:
        raise TopologyError([Issue("", f"nested deeper than {MAX_DEPTH} levels")], source) from None
    finally:
        loader.dispose()


def _parse_yaml_fast(loader_class: type[yaml.SafeLoader], text: str) -> tuple[Any, LineMap] | None:
    """The document and its line map, or None if there is anything to report about it (the pure
    loader then says what, and where)."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None or _has_alias(node):
            return None
        lines: LineMap = {}
        _map_lines(node, "", lines)  # raises on a duplicate key or a merge key
        return loader.construct_document(node), lines
    except Exception:
        return None
    finally:
        loader.dispose()


def _has_alias(root: yaml.Node) -> bool:
    """True if a node is reached twice: that is what an alias (*name) composes to."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return False


def _map_lines(node: yaml.Node, path: str, lines: LineMap, depth: int = 0) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if depth > MAX_DEPTH:
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "merge keys (<<) are not allowed in a topology: they can give a field a second value "
                    "silently; write the fields out",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
            _map_lines(value_node, f"{path}.{key}" if path else key, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _map_lines(item, f"{path}[{index}]", lines, depth + 1)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _second_occurrence(text: str, quoted: str) -> tuple[int | None, int | None]:
    """Line and column of the second time ``quoted`` (a JSON string) stands as a key in ``text``."""
    found = [m.start() for m in re.finditer(re.escape(quoted) + r"\s*:", text)]
    if len(found) < 2:
        return None, None
    at = found[1]
    return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1


def _parse_json(text: str, source: str) -> tuple[Any, LineMap]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _DuplicateKey(key)
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=no_duplicates), {}
    except json.JSONDecodeError as exc:
        raise TopologyError(
            [Issue("", f"malformed JSON: {exc.msg}", exc.lineno, exc.colno)], source
        ) from None
    except _DuplicateKey as exc:
        line, column = _second_occurrence(text, json.dumps(exc.key))
        raise TopologyError(
            [Issue("", f"malformed JSON: duplicate key {exc.key!r}", line, column)], source
        ) from None
    except ValueError as exc:
        raise TopologyError([Issue("", f"malformed JSON: {exc}")], source) from None
    except RecursionError:
        raise TopologyError([Issue("", f"nested deeper than {MAX_DEPTH} levels")], source) from None


def _check_size(raw: Any, source: str) -> None:
    """Not nested deeper than MAX_DEPTH, and no more than MAX_VALUES values: a document just under the
    byte limit could otherwise hold a million values, each an error to compute and report. Walked a
    level at a time, a parser's own dicts and lists told by their type (an ABC check of each of a
    10,000-host document's 120,000 values was most of this walk's time)."""
    level: list[Any] = [raw]
    depth = count = 0
    while level:
        count += len(level)
        if depth > MAX_DEPTH:
            raise TopologyError([Issue("", f"nested deeper than {MAX_DEPTH} levels")], source)
        if count > MAX_VALUES:
            raise TopologyError(
                [Issue("", f"the document holds more than {MAX_VALUES:,} values; a topology has far fewer")],
                source,
            )
        below: list[Any] = []
        for value in level:
            kind = type(value)
            if kind is dict:
                below.extend(value.values())
            elif kind is list:
                below.extend(value)
            elif kind in _SCALARS:
                continue
            elif isinstance(value, Mapping):
                below.extend(value.values())
            elif isinstance(value, list):
                below.extend(value)
        level, depth = below, depth + 1


_SCALARS = frozenset({str, int, float, bool, type(None)})


# --- validation errors -> issues -------------------------------------------------------------------


def format_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _issues_from(exc: ValidationError, lines: LineMap) -> list[Issue]:
    issues = _each_issue(exc, lines)
    if len(issues) > MAX_ISSUES:
        more = len(issues) - MAX_ISSUES
        issues = [*issues[:MAX_ISSUES], Issue("", f"... and {more:,} more error(s); fix these first")]
    return issues


def _each_issue(exc: ValidationError, lines: LineMap) -> list[Issue]:
    issues: list[Issue] = []
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        path = format_path(loc)
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = error["type"]
        if (not path and "\n" in message) or (not path and ": " in message):
            issues.extend(_issue_from_line(line, lines) for line in message.split("\n"))
            continue
        # a value under a secret field may be the secret itself, written inline by mistake
        shown = "(redacted)" if any(p in _SECRET_FIELDS for p in loc) else _show(error.get("input"))
        if kind == "extra_forbidden":
            message = "unknown field" + _suggest(loc, message)
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "invalid_key":  # the last part of loc is the key itself, not a field or an index
            path = format_path(loc[:-1])
            message = f"key {shown} is not a string (write it in quotes)"
        elif kind.endswith("_type") or kind.endswith("_parsing") or kind == "enum":
            message = f"{message}, got {shown}"
        elif kind == "string_pattern_mismatch":
            message = f"{shown} is not allowed here ({_pattern_hint(loc)})"
        issues.append(Issue(path, message, _line_for(path, lines)))
    return issues


def _issue_from_line(text: str, lines: LineMap) -> Issue:
    path, sep, message = text.partition(": ")
    if not sep or " " in path:
        return Issue("", text)
    return Issue(path, message, _line_for(path, lines))


def _line_for(path: str, lines: LineMap) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and (
        part.startswith("function-") or part in ("str", "int", "float", "bool", "tls-files", "tls-off")
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(loc: tuple[int | str, ...], _message: str) -> str:
    field = loc[-1] if loc else ""
    model = _model_at(loc[:-1])
    if model is None or not isinstance(field, str):
        return ""
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(field, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Topology
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        found = _model_in(info.annotation)
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_PATTERN_HINTS = {
    "cluster": "lower-case letters, digits, '.', '_' and '-', starting and ending with a letter or digit",
    "name": "letters, digits and '-', at most 63, starting and ending with a letter or digit "
    "(a Consul node name; no spaces, quotes or leading '-')",
    "node": "letters, digits and '-', at most 63, starting and ending with a letter or digit",
    "datacenter": "letters, digits, '_' and '-'",
    "agent": "a Docker container name: letters, digits, '_', '.', '-', starting with a letter or digit",
    "registrator": "a Docker container name: letters, digits, '_', '.', '-', starting with a letter or digit",
    "env": "an environment variable name: letters, digits and '_'",
}


def _pattern_hint(loc: tuple[int | str, ...]) -> str:
    for part in reversed(loc):
        if isinstance(part, str) and part in _PATTERN_HINTS:
            return _PATTERN_HINTS[part]
    return "see the README for the allowed characters"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
