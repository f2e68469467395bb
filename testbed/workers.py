"""What keeps pytest-xdist workers clear of each other on one machine.

scripts/test.sh runs the suite on three workers (CR_TEST_WORKERS, 3 by default). Each is a test
session of its own: worker gwN (N > 0) gets its own engines, loopback /24, TLS engine and PostgreSQL, as
testbed/fleet.py describes for a second session, so no two workers share an address, a port or a
state folder. gw0 keeps the
defaults, those of a run without workers. tests/conftest.py applies this before any test module is
imported.

Before pytest starts, scripts/test.sh prepares every worker's fleet (one fleet without workers),
one after another::

    python -m testbed.workers prepare --workers 3

five engines each, with the stand-in, agent stand-in and real Consul images. On a new machine that
is minutes of image loading per fleet; done inside the first tests of two workers at once, it slowed
the engines enough that a create outlasted the host's timeout. On a warm machine it finds everything
in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from testbed.fleet import DEFAULT_NET, DEFAULT_ROOT, NET_ENV, ROOT_ENV

# testbed/tlsengine.py and testbed/pgserver.py read their variables when imported, so they are not imported
# here (conftest imports this module before it sets a worker's variables); their defaults are restated
_FOLDERS = {ROOT_ENV: DEFAULT_ROOT, "CR_TLS_ROOT": "/tmp/crtls", "CR_PG_ROOT": "/tmp/crpg"}
_NET = (NET_ENV, DEFAULT_NET)
_PG_PORT = ("CR_PG_PORT", "25432")  # outside the ephemeral range: no client socket holds it


class WorkerError(ValueError):
    """The environment leaves no room for another worker."""


def worker_environment(worker: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables to set for worker ``worker`` (``gw0``, ``gw1``, ...; empty outside xdist)."""
    if not worker.startswith("gw") or not worker[2:].isdigit() or int(worker[2:]) == 0:
        return {}
    index = int(worker[2:])
    a, b, c = (env.get(_NET[0]) or _NET[1]).split(".")
    if int(c) + index > 255:
        raise WorkerError(f"{_NET[0]}={a}.{b}.{c} leaves no /24 of loopback for worker {worker}")
    made = {name: f"{env.get(name) or default}-{worker}" for name, default in _FOLDERS.items()}
    made[_NET[0]] = f"{a}.{b}.{int(c) + index}"
    made[_PG_PORT[0]] = str(int(env.get(_PG_PORT[0]) or _PG_PORT[1]) + index)
    return made


ENGINES = 5  # the largest fleet a test asks for (tests/conftest.py: fleet5)


def prepare_this_worker() -> None:
    """Engines and images of the fleet the environment names (CR_FLEET_ROOT, CR_FLEET_NET)."""
    from testbed.agent_image import ensure_agent_images
    from testbed.fleet import ensure_engines, ensure_standin_images
    from testbed.real_consul import ensure_images

    engines = ensure_engines(ENGINES)
    ensure_standin_images(engines)
    ensure_agent_images(engines)
    ensure_images(engines)
    ensure_images(engines, acl=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.workers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser(
        "prepare", help="start each worker's engines and load their images, one worker after another"
    )
    prep.add_argument("--workers", type=int, default=3, help="how many xdist workers (0 or 1: one fleet)")
    sub.add_parser("prepare-one", help="the fleet of this environment only (what prepare runs per worker)")
    args = parser.parse_args(argv)
    if args.command == "prepare-one":
        prepare_this_worker()
        return 0
    for index in range(max(args.workers, 1)):
        worker = f"gw{index}"
        env = {**os.environ, **worker_environment(worker, os.environ)}
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "testbed.workers", "prepare-one"], env=env, check=False)
        if done.returncode != 0:
            print(f"worker {worker}: its fleet could not be prepared (see above)", file=sys.stderr)
            return done.returncode
        root = env.get(ROOT_ENV) or DEFAULT_ROOT
        print(f"worker {worker}: fleet {root} ready ({time.monotonic() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
