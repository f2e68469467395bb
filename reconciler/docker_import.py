"""docker-py, imported for the package with paramiko deferred: the modules that use Docker take it from
here (``from reconciler.docker_import import docker``), so importing the pure core (the plan, the
desired state) leaves ``sys.modules`` alone.

docker-py imports paramiko (and with it the cryptography bindings) as soon as ``docker`` is imported,
for ssh:// endpoints: about 15 MB of resident memory in a controller that may never use ssh. Deferred
(reconciler/deferred.py), paramiko loads the first time an ssh:// engine is connected.
"""

from __future__ import annotations

from reconciler.deferred import defer_import

defer_import("paramiko")

# After the deferral, which these need: docker imports paramiko when it is imported.
import docker  # noqa: E402
import docker.errors  # noqa: E402
import docker.tls  # noqa: E402
import docker.utils  # noqa: E402
from docker.models.containers import Container  # noqa: E402
from docker.types.daemon import CancellableStream  # noqa: E402

__all__ = ["CancellableStream", "Container", "docker"]
