"""node_exporter's ``time`` and ``timex`` collectors: the clock, its source and its NTP discipline.

``timex`` calls ``adjtimex(2)`` with ``modes = 0``, which only reads the
kernel's clock state; it needs no privilege, but a seccomp filter that denies
the ``@clock`` system calls (systemd's ``ProtectClock=yes``) refuses it with
EPERM, which is reported as unavailable, as node_exporter does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

from agent.plugin import Emitter

from .base import Roots, Unavailable

TIME_ERROR = 5  # adjtimex's return value when the clock is not synchronised
STA_NANO = 0x2000  # offset and jitter in nanoseconds instead of microseconds
PPM16 = 1_000_000.0 * 65536.0  # freq, ppsfreq and stabil are ppm with a 16-bit fraction


class Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux); C layout rules give the kernel's padding."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


class TimeCollector:
    name = "time"

    def __init__(self, roots: Roots) -> None:
        self._clocksource = str(roots.sys / "devices" / "system" / "clocksource")
        self._files = roots.files

    def collect(self, emit: Emitter) -> None:
        now = time.time()
        local = time.localtime(now)
        emit.gauge("node_time_seconds", now, unit="s")
        emit.gauge("node_time_zone_offset_seconds", local.tm_gmtoff, (("time_zone", local.tm_zone),), unit="s")
        try:
            # lexical order, as Go's filepath.Glob; the device label is the position in it
            devices = sorted(p for p in os.listdir(self._clocksource) if _is_clocksource(p))
        except FileNotFoundError:
            return  # no sysfs here (a container): node_exporter exports only the time then
        for index, device in enumerate(devices):
            folder = f"{self._clocksource}/{device}"
            available = self._files.read_once(folder + "/available_clocksource").split()
            current = self._files.read_once(folder + "/current_clocksource").strip().decode()
            labels_device = ("device", str(index))
            for source in available:
                emit.gauge("node_time_clocksource_available_info", 1, (("clocksource", source.decode()), labels_device))
            emit.gauge("node_time_clocksource_current_info", 1, (("clocksource", current), labels_device))


def _is_clocksource(name: str) -> bool:
    return name.startswith("clocksource") and name[11:12].isdigit()


class TimexCollector:
    name = "timex"

    def __init__(self, roots: Roots, adjtimex=None) -> None:
        self._adjtimex = adjtimex  # a test seam: fn(pointer to Timex) -> state, or -1 with errno set

    def read(self) -> tuple[int, Timex]:
        if self._adjtimex is None:
            libc = ctypes.CDLL(None, use_errno=True)
            self._adjtimex = libc.adjtimex
            self._adjtimex.argtypes = (ctypes.POINTER(Timex),)
            self._adjtimex.restype = ctypes.c_int
        tx = Timex()  # modes = 0: read only
        state = self._adjtimex(ctypes.byref(tx))
        if state < 0:
            code = ctypes.get_errno()
            if code == errno.EPERM:
                raise Unavailable(
                    "adjtimex refused (EPERM): a seccomp filter denies it, e.g. systemd's ProtectClock=yes; "
                    "node_timex_* (the clock synchronisation alerts' input) are not exported",
                    warn=True,
                )
            raise OSError(code, f"adjtimex: {os.strerror(code)}")
        return state, tx

    def collect(self, emit: Emitter) -> None:
        state, tx = self.read()
        divisor = 1e9 if tx.status & STA_NANO else 1e6
        gauges = (
            ("node_timex_sync_status", 0.0 if state == TIME_ERROR else 1.0, "1"),
            ("node_timex_offset_seconds", tx.offset / divisor, "s"),
            ("node_timex_frequency_adjustment_ratio", 1 + tx.freq / PPM16, "1"),
            ("node_timex_maxerror_seconds", tx.maxerror / 1e6, "s"),
            ("node_timex_estimated_error_seconds", tx.esterror / 1e6, "s"),
            ("node_timex_status", tx.status, "1"),
            ("node_timex_loop_time_constant", tx.constant, "1"),
            ("node_timex_tick_seconds", tx.tick / 1e6, "s"),
            ("node_timex_pps_frequency_hertz", tx.ppsfreq / PPM16, "Hz"),
            ("node_timex_pps_jitter_seconds", tx.jitter / divisor, "s"),
            ("node_timex_pps_shift_seconds", tx.shift, "s"),
            ("node_timex_pps_stability_hertz", tx.stabil / PPM16, "Hz"),
            ("node_timex_tai_offset_seconds", tx.tai, "s"),
        )
        for name, value, unit in gauges:
            emit.gauge(name, value, unit=unit)
        emit.counter("node_timex_pps_jitter_total", tx.jitcnt, unit="1")
        emit.counter("node_timex_pps_calibration_total", tx.calcnt, unit="1")
        emit.counter("node_timex_pps_error_total", tx.errcnt, unit="1")
        emit.counter("node_timex_pps_stability_exceeded_total", tx.stbcnt, unit="1")
