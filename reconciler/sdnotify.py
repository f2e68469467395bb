"""systemd's service notifications (sd_notify(3)), without libsystemd: a datagram to ``$NOTIFY_SOCKET``.

Under ``Type=notify`` the controller says ``READY=1`` once its first pass has ended with a valid desired
state (readyz), ``STOPPING=1`` as it shuts down, and, when the unit sets ``WatchdogSec=``, pings
``WATCHDOG=1`` every half period while healthz holds: a wedged pass stops the pings, and systemd
restarts the service. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("consul_reconciler.sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # an abstract socket is written with a leading '@' (sd_notify(3))
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_every = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._ready = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, state: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("systemd notification %r not sent: %s", state.split("=", 1)[0], exc)
            return False
        return True

    def ready(self, status: str) -> None:
        """Once: the service is up (and STATUS= for `systemctl status`)."""
        if not self._ready:
            self._ready = self.send(f"READY=1\nSTATUS={status}")

    def watchdog(self, healthy: bool, why: str) -> None:
        """A ping when healthy; none when not, so that systemd's watchdog fires."""
        if healthy:
            self.send("WATCHDOG=1")
        else:
            self.send(f"STATUS=unhealthy: {why}")

    def stopping(self) -> None:
        self.send("STOPPING=1")
