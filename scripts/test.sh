#!/usr/bin/env bash
# The project's one test command: installs what the tests need, lints, runs pytest.
#   bash scripts/test.sh [pytest args...]
# Made for a fresh Debian 12 machine, run as root, whose only network is the package registries:
# the integration tests start their own Docker engines (tests/fleet.py) and build their images
# offline from busybox-static, so docker.io and busybox-static are installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

# --- lint and tests --------------------------------------------------------------------------
step "ruff check ."
.venv/bin/python -m ruff check .

step "pytest $*"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests (exit 5): treated as a failure"
fi
exit "$rc"
