#!/usr/bin/env bash
# The project's one test command: installs what the tests need, lints, runs pytest.
#   bash scripts/test.sh [pytest args...]
# Made for a fresh Debian 12 machine, run as root, whose only network is the package registries:
# the integration tests start their own Docker engines (testbed/fleet.py) and build their images
# offline from busybox-static, so docker.io and busybox-static are installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

# --- a real Consul, built from its Go module ---------------------------------------------------
# testbed/real_consul.py: Go's caches and the binary live in /var/cache/consul-reconciler (keyed by the
# module's files and the Go version); the first build on a machine takes about 4.5 minutes, a rerun
# finds it. No Go toolchain, or a build that fails, fails the test command: the integration suite runs
# against this Consul and never skips it.
step "real Consul $(sed -n 's|^\s*github.com/hashicorp/consul \(v[0-9.]*\)$|\1|p' testbed/consul_agent/go.mod) from its Go module"
.venv/bin/python -m testbed.real_consul build || die "the real Consul of the integration suite could not be built"

# --- lint and tests --------------------------------------------------------------------------
step "ruff check ."
.venv/bin/python -m ruff check .

# Three pytest-xdist workers by default, each given whole files and each a session of its own, with its
# own engines, loopback /24, TLS engine and PostgreSQL (testbed/workers.py), the real-Consul rollouts
# (the longest file) first on one of them. The tests mostly wait on Consul and Docker, so a third worker
# on two cores shortens the suite (it had grown past 25 minutes on two); CR_TEST_WORKERS=0 runs one
# process; "-n N" in the arguments wins.
workers="${CR_TEST_WORKERS:-3}"
step "the test fleets: engines and images"
.venv/bin/python -m testbed.workers prepare --workers "$workers" || die "the Docker test fleets could not be prepared"

step "pytest -n $workers $*"
rc=0
# --durations: the slowest tests, to see where the suite's time goes (it must stay under 25 minutes)
.venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder --durations=25 "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests (exit 5): treated as a failure"
fi
exit "$rc"
