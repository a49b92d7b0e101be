"""sd_notify over ``$NOTIFY_SOCKET`` (stdlib only), and the watchdog heartbeat.

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call
is a no-op. The heartbeat is sent from the event loop itself, so a stalled
loop stops it and systemd's ``WatchdogSec`` restarts the agent.
"""

from __future__ import annotations

import asyncio
import os
import socket


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = 0
        if env.get("WATCHDOG_USEC", "").isdigit() and env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            usec = int(env["WATCHDOG_USEC"])
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (``READY=1``, ``STATUS=...``, newline-separated); False if not delivered."""
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):  # abstract namespace socket
            target = "\0" + target[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), target)
            return True
        except OSError:
            return False

    async def watchdog(self) -> None:
        """Ping at half the watchdog period until cancelled."""
        if not self.watchdog_usec or self.address is None:
            return
        period = self.watchdog_usec / 1e6 / 2
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(period)
