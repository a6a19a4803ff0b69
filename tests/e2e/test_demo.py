"""`make demo` end to end: `troveless up` in a process of its own, MariaDB and PostgreSQL
instances made through the API with python-troveclient, rows written and read as the tenant
user, a volume grown, everything deleted; and nothing left behind, failure or not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.local import demo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.datastore,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and cgroups need root"),
]


def _loop_devices() -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return {line.split(":", 1)[0] for line in out.splitlines() if "tl-demo-" in line}


def _demo_paths() -> set[str]:
    return {p.name for p in Path("/tmp").glob("tl-demo-*")}


def _demo_processes() -> list[str]:
    """Command lines of live processes that mention a demo data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
        if "tl-demo-" in cmdline:
            found.append(cmdline)
    return found


def _assert_nothing_left(paths_before: set[str]) -> None:
    assert _demo_paths() == paths_before
    assert not _loop_devices()
    assert "tl-demo-" not in Path("/proc/mounts").read_text()
    assert _demo_processes() == []


def test_demo_runs_the_lifecycle_through_the_api_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _demo_paths()
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "export OS_CLIENT_CONFIG_FILE=" in out
    assert "datastores: mariadb, postgresql, redis" in out
    assert "demo-mariadb ACTIVE at 127." in out and "demo-postgresql ACTIVE at 127." in out
    assert out.count("POST /databases shop") == 2
    assert out.count("as user 'app' over TCP: wrote and read ['apples', 'pears', 'plums']") == 2
    assert "volume now 2 GB; rows after: ['apples', 'pears', 'plums']" in out
    assert "DELETE demo-mariadb: gone" in out and "DELETE demo-postgresql: gone" in out
    assert "execution SUCCEEDED" in out
    assert "servers left: 0; data directory removed" in out
    _assert_nothing_left(before)


def test_a_failing_demo_still_leaves_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure once both instances exist: they, their volumes and `up` all go."""

    def broken(db: demo.TenantDatabase, rows: list[str] | None) -> list[str]:
        raise RuntimeError("the tenant's driver broke")

    monkeypatch.setattr(demo, "write_and_read", broken)
    before = _demo_paths()
    assert demo.main() == 1
    out = capsys.readouterr().out
    assert "demo failed: the tenant's driver broke" in out
    assert "servers left: 0; data directory removed" in out
    _assert_nothing_left(before)
