"""Ownership labels: every container the controller creates carries them."""

from __future__ import annotations

import json
from typing import Any

from desired_state.spec import HASH_VERSION, ContainerSpec

PREFIX = "io.consul-reconciler"
MANAGED_BY = f"{PREFIX}.managed-by"
HOST = f"{PREFIX}.host"
ROLE = f"{PREFIX}.role"
NODE = f"{PREFIX}.node"
SPEC_HASH = f"{PREFIX}.spec-hash"
HASH_VERSION_LABEL = f"{PREFIX}.hash-version"
SPEC = f"{PREFIX}.spec"
AGENT_HTTP = f"{PREFIX}.agent-http"
# the operator's files mounted from the host into the config folder (JSON: path in the container ->
# path on the host)
MOUNTED_CONFIG = f"{PREFIX}.mounted-config"


def labels_for(cluster: str, spec: ContainerSpec) -> dict[str, str]:
    return {
        MANAGED_BY: cluster,
        HOST: spec.host,
        ROLE: spec.role,
        NODE: spec.node,
        SPEC_HASH: spec.spec_hash(),
        HASH_VERSION_LABEL: HASH_VERSION,
        SPEC: json.dumps(spec.record(), sort_keys=True, separators=(",", ":")),
        **({AGENT_HTTP: spec.agent_http} if spec.agent_http else {}),
        **_mounted_label(spec),
    }


def _mounted_label(spec: ContainerSpec) -> dict[str, str]:
    if not spec.mounted_config:
        return {}
    return {MOUNTED_CONFIG: json.dumps({m.target: m.source for m in spec.mounted_config}, sort_keys=True)}


def record_from(labels: dict[str, str]) -> dict[str, Any] | None:
    text = labels.get(SPEC)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def mounted_files(labels: dict[str, str]) -> dict[str, str]:
    """The config files mounted from the host: path in the container -> path on the host."""
    try:
        value = json.loads(labels.get(MOUNTED_CONFIG) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
