"""EDAC memory errors, DMI and NVMe inventory: node_exporter's ``edac``, ``dmi`` and ``nvme`` collectors."""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.model import Labels
from agent.plugin import Emitter
from agent.sysfs import list_dir, numbered, read_attr

Report = Callable[[str], None]

DMI_LABELS = ("bios_date", "bios_release", "bios_vendor", "bios_version", "board_asset_tag", "board_name",
              "board_serial", "board_vendor", "board_version", "chassis_asset_tag", "chassis_serial",
              "chassis_vendor", "chassis_version", "product_family", "product_name", "product_serial",
              "product_sku", "product_uuid", "product_version", "system_vendor")  # fmt: skip


def edac(sys_root: str, emit: Emitter, report: Report) -> None:
    for number, controller in numbered(f"{sys_root}/devices/system/edac/mc", "mc"):
        try:
            counts = {name: int(read_attr(f"{controller}/{name}")) for name in
                      ("ce_count", "ce_noinfo_count", "ue_count", "ue_noinfo_count")}  # fmt: skip
            rows = []
            for row, csrow in numbered(controller, "csrow"):
                rows.append((row, int(read_attr(f"{csrow}/ce_count")), int(read_attr(f"{csrow}/ue_count"))))
        except (OSError, ValueError) as exc:
            report(f"edac controller {number}: {getattr(exc, 'strerror', None) or exc}")
            continue
        mc = (("controller", number),)
        emit.counter("node_edac_correctable_errors_total", counts["ce_count"], mc, unit="1")
        emit.counter("node_edac_uncorrectable_errors_total", counts["ue_count"], mc, unit="1")
        # errors the controller could not attribute to a row: csrow="unknown", as node_exporter
        rows.insert(0, ("unknown", counts["ce_noinfo_count"], counts["ue_noinfo_count"]))
        for row, ce, ue in rows:
            labels = (("controller", number), ("csrow", row))
            emit.counter("node_edac_csrow_correctable_errors_total", ce, labels, unit="1")
            emit.counter("node_edac_csrow_uncorrectable_errors_total", ue, labels, unit="1")


def dmi_labels(sys_root: str) -> Labels:
    """The node_dmi_info labels; empty without DMI. Serials and the UUID are root-only: absent otherwise."""
    base = f"{sys_root}/class/dmi/id"
    labels = {}
    try:
        names = list_dir(base)
    except FileNotFoundError:
        return ()
    for name in names:
        label = "system_vendor" if name == "sys_vendor" else name
        if label not in DMI_LABELS or not os.path.isfile(f"{base}/{name}"):
            continue
        try:
            labels[label] = read_attr(f"{base}/{name}")
        except PermissionError:
            continue
    return tuple(sorted(labels.items()))


def nvme(sys_root: str, emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/nvme"
    try:
        devices = list_dir(base)
    except FileNotFoundError:
        return
    for device in devices:
        try:
            values = {
                key: read_attr(f"{base}/{device}/{name}")
                for key, name in (
                    ("firmware_revision", "firmware_rev"),
                    ("model", "model"),
                    ("serial", "serial"),
                    ("state", "state"),
                )
            }
        except OSError as exc:
            report(f"nvme {device}: {exc.strerror}: {exc.filename}")
            continue
        emit.gauge("node_nvme_info", 1.0, tuple(sorted({"device": device, **values}.items())))
