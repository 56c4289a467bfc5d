"""A ConfigMap volume, laid out and updated step by step as the kubelet does it.

The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) keeps the real files in a
timestamped directory, points ``..data`` at it, and gives each key a link through
``..data``. An update writes a new timestamped directory, makes a ``..data_tmp`` link to
it and renames that over ``..data`` (atomic), then links keys that are new, removes the
links of keys that are gone, and removes the old timestamped directory, in that order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ConfigMapVolume:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.updates = 0

    def ts_dir(self) -> Path:
        """The timestamped directory ``..data`` points at now."""
        return self.mount / os.readlink(self.mount / "..data")

    def write(self, payload: dict[str, str]) -> None:
        """Project ``payload`` (key -> content): the first call creates the volume."""
        data = self.mount / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        # (5, 6) a new timestamped directory holding the payload
        self.updates += 1
        ts = f"..2026_12_03_10_00_{self.updates:02d}.{123456789 + self.updates}"
        (self.mount / ts).mkdir(mode=0o755)
        for key, text in payload.items():
            (self.mount / ts / key).write_text(text)
        # (8, 9) ..data_tmp -> the new directory, renamed over ..data
        os.symlink(ts, self.mount / "..data_tmp")
        os.replace(self.mount / "..data_tmp", data)
        # (10) links for the keys that are new
        for key in payload:
            if not (self.mount / key).is_symlink():
                os.symlink(f"..data/{key}", self.mount / key)
        if old is not None:
            # (11) links of the keys that are gone
            for key in os.listdir(self.mount / old):
                if key not in payload:
                    os.unlink(self.mount / key)
            # (12) the old timestamped directory
            shutil.rmtree(self.mount / old)
