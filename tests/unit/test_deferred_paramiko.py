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
