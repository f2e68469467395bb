#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: installs what the project needs on a fresh
# Debian 12 machine (as root; the only network is the package registries) and the .venv.
# The local Docker engines are started later, by testbed/fleet.py, never system-wide.

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
if command -v dpkg-query >/dev/null 2>&1; then
  # A dynamically linked /bin/busybox (Debian's "busybox") cannot run in a FROM-scratch image.
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
else
  [ -x /bin/busybox ] || missing+=(busybox-static)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# testbed/baseimage.py makes the Debian + Python base of the controller's image with debootstrap.
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# testbed/pgserver.py runs the audit tests on a real PostgreSQL server (Debian's, started by the tests).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# testbed/sshgateway.py puts a real sshd (on loopback, keys made by the tests) in front of the engines
# for ssh:// endpoints; the service script is kept from starting a system-wide one (policy-rc.d below).
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# tests/integration/test_prometheus.py: promtool on the alert rules, a real Prometheus scraping a controller
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# tests/integration/test_browser_harness.py (testbed/browser.py): headless Chromium driven by Selenium,
# through Debian's chromedriver so that Selenium Manager never downloads a browser or a driver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "missing ${missing[*]}; install them as root (apt-get install -y ${missing[*]}) or run this script as root"
  fi
  step "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's service scripts from starting a system-wide dockerd: the tests start their own.
  policy_rc=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod +x "$policy_rc"
    added_policy=1
  fi
  apt_rc=0
  { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } || apt_rc=$?
  if [ "$added_policy" -eq 1 ]; then rm -f "$policy_rc"; fi
  [ "$apt_rc" -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $apt_rc)"
fi

# --- Python environment ----------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $(python3 --version)"
  python3 -m venv .venv
fi
step "installing the project with its test extras into .venv (the image's versions, constraints.txt)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-floor.txt -c constraints.txt -e '.[test]'

