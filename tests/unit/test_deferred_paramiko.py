"""paramiko (for ssh:// engines) is loaded only when an ssh:// engine is used, not at import."""

import subprocess
import sys

CHECK = """
import sys
import reconciler.cli
assert 'paramiko.client' not in sys.modules, 'paramiko loaded at import'
assert 'cryptography' not in sys.modules, 'cryptography loaded at import'
import docker
try:
    docker.APIClient(base_url='ssh://nobody@127.0.0.1:9', version='1.41', timeout=3)
except Exception as exc:
    print(type(exc).__module__, type(exc).__name__)
"""


def test_ssh_engine_still_gets_paramiko_on_first_use() -> None:
    # A fresh interpreter: this test session may have imported paramiko already.
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The connection is refused (nothing listens on port 9), by paramiko: the ssh transport works.
    assert done.stdout.split() == ["paramiko.ssh_exception", "NoValidConnectionsError"], done.stdout


def test_importing_the_pure_core_leaves_sys_modules_alone() -> None:
    # The stand-in for paramiko is put in place by the module that imports docker, not by the package.
    check = "import sys, reconciler.plan; print('paramiko' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"], done.stdout


RACE = """
import threading
import reconciler.engines  # imports docker with paramiko deferred
from docker.transport import sshconn

barrier = threading.Barrier(8)
failures = []

def first_use():
    barrier.wait()
    try:
        sshconn.paramiko.SSHClient  # what docker-py touches first when an ssh:// client is made
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")

threads = [threading.Thread(target=first_use) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len(failures), failures[:1])
"""


def test_hosts_connecting_at_once_all_get_the_whole_module() -> None:
    # A pass connects its hosts in parallel: with several ssh:// hosts, the first use of paramiko comes
    # from several threads at once. Seen before the fix: the threads that did not load it got the
    # module half-initialised ("partially initialized module 'paramiko' has no attribute 'SSHClient'").
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1)[0] == "0", done.stdout
