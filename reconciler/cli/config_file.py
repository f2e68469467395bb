"""A configuration file for `run`: every option of the command, in TOML or YAML, so that a systemd
unit or an image needs one line, ``consul-reconciler run --config FILE``.

Keys are the options' long names without the dashes (``interval``, ``prune-after``, ``http``, ``db``,
``source``...; ``prune_after`` is the same key). The file supplies defaults: an option on the command
line wins, then its environment variable, then the file, then the built-in default (click's
``default_map``). A key that is no option of `run` is an error naming the file and listing the keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CONFIG_ENV = "CONSUL_RECONCILER_CONFIG"


class ConfigFileError(Exception):
    """The file cannot be read, is not TOML/YAML, or names what is no option (the message says which)."""


def config_path(argv: list[str], environ: dict[str, str] | None = None) -> Path | None:
    """The file named by ``--config FILE`` (or ``--config=FILE``) in ``argv``, else by
    ``$CONSUL_RECONCILER_CONFIG``."""
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    value = (os.environ if environ is None else environ).get(CONFIG_ENV, "").strip()
    return Path(value) if value else None


def load_config(path: Path, command: Any) -> dict[str, Any]:
    # ``command``: the click command typer built for `run` (typer carries its own click)
    """The file's settings as ``command``'s default_map (parameter name -> value)."""
    import tomllib  # only `run --config` reads a file: the other commands start without these

    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(
            f"--config {path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigFileError(
            f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {first}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of option names to values")
    # ``source`` is the SOURCE argument; --source (source_opt) is the same thing under another name
    names = {p.name: p for p in command.params if p.name and p.name not in ("config", "source_opt")}
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            shown = ", ".join(sorted(n.replace("_", "-") for n in names))
            raise ConfigFileError(f"--config {path}: {key!r} is no option of run; the keys are: {shown}")
        settings[name] = value  # typed as on the command line: typer converts it as it does a flag
    return settings
