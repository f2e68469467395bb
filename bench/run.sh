#!/usr/bin/env bash
# Every benchmark in one command: installs the peers, then runs bench/compare.py, which prints the
# figures and writes BENCHMARKS.json, BENCHMARKS.md and BENCHMARKS.png.
#   bash bench/run.sh                      (about 30-40 minutes with the defaults)
#   bash bench/run.sh --sizes 3 --trials 1 --idle-seconds 20 --audit-rows 100000   (a quick look)
# Arguments are passed to `python -m bench.compare` (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../scripts/bootstrap.sh
. scripts/bootstrap.sh   # docker.io, busybox-static, the .venv (the same set-up as the tests)

# The peers: Debian's docker-compose 1.29, PyPI's ansible (community.docker inside), matplotlib.
if ! command -v docker-compose >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "docker-compose is missing; run as root or apt-get install -y docker-compose"
  step "installing docker-compose (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
step "installing the benchmark extras (ansible, matplotlib) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
exec .venv/bin/python -m bench.compare "$@"
