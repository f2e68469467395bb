#!/usr/bin/env bash
# The demo: install what is missing, start three local Docker engines (one per host), and let
# consul-reconciler converge a Consul fleet on them; then show the plan, the containers and the
# audit log. Set DEMO_DOCKER_HOSTS=unix:///a.sock,unix:///b.sock to use engines you already run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
