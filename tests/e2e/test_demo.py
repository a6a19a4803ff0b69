"""`make demo` end to end: the embedded cloud provisions real MariaDB and PostgreSQL servers,
serves rows to a tenant user, grows a volume, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.local import demo

pytestmark = [pytest.mark.slow, pytest.mark.datastore]


def _loop_devices() -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return {line.split(":", 1)[0] for line in out.splitlines() if "tl-demo-" in line}


def _demo_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("tl-demo-*")}


@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and cgroups need root")
def test_demo_runs_the_lifecycle_and_leaves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    dirs_before = _demo_dirs()
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert out.count("wrote and read ['apples', 'pears', 'plums']") == 2
    assert "volume now 2 GB; rows after: ['apples', 'pears', 'plums']" in out
    assert "servers left: 0" in out
    assert _demo_dirs() == dirs_before
    assert not _loop_devices()
    mounts = Path("/proc/mounts").read_text()
    assert "tl-demo-" not in mounts
