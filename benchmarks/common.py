"""What every benchmark prints first: its name, the date and the machine."""

from __future__ import annotations

import platform
from datetime import UTC, datetime

import psutil


def print_header(name: str) -> None:
    print(f"# {name} benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# machine: {platform.node()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.processor() or platform.machine()}"
    )
