"""Backup throughput and restore time of the guest's pipeline, beside the raw tools.

`python -m bench.backup` prints the table; `run()` returns the rows for `python -m bench`.
The dataset size is `TROVELESS_BENCH_BACKUP_MB` (default 1024 MB of table data per datastore),
the number of alternated rounds `TROVELESS_BENCH_BACKUP_ROUNDS` (default 3).

For MariaDB and PostgreSQL, in one run on one dataset:

- backup MB/s: the guest's pipeline (`guest_agent.backup`: the datastore's tool -> zstd -3 with
  2 threads -> AES-256-GCM records -> sha256 -> the directory BlobStore, fsync off) beside the
  raw floor `mariadb-backup --backup --stream=xbstream | zstd -3 -T2 > file` (PostgreSQL:
  `pg_basebackup -Ft -X fetch -D - | zstd -3 -T2 > file`), and Trove's pipeline for reference
  (`| gzip | openssl enc -aes-256-cbc -pbkdf2 > file`). MB/s are of the uncompressed stream
  (the datastore's data as the tool sends it), the same denominator for all three. The machine
  is shared and its load moves (single runs of one pipeline vary by 30-50% here), so the floor,
  ours and ours with in-process compression (python-zstandard, what the guest falls back to
  without a zstd binary) run in rounds, in an order that rotates each round, and each figure
  is the median of its rounds; the ratio is that of the medians. Goal: >= 0.9 of the raw pipe.
- restore seconds: the guest's restore (download, verify, decrypt, decompress, extract, prepare,
  start, re-key the admin account) beside the raw `zstd -d | mbstream -x` + `mariadb-backup
  --prepare` + start (PostgreSQL: `zstd -d | tar -x` + start with recovery). Goal: <= 1.2x.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from guest_agent.backup import BackupRequest, ChainLink, backup_datastore, restore_datastore, stream
from guest_agent.backup.stream import new_data_key
from guest_agent.datastores.base import DatastoreManager, find_binary, kill_process_group
from guest_agent.datastores.mariadb import MariaDBManager
from guest_agent.datastores.postgresql import PostgreSQLManager, postgres_bin_dirs
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.adapters.local.system_user import DEFAULT_GUEST_USER, ensure_system_user
from shared.rules.names import ADMIN_USER

MB = 1_000_000
ADMIN_PASSWORD = "bench-Admin-Secret-1"
RAM_MB = 1024
ROW_BYTES = 180  # about what one generated row takes in either datastore


class _Bench:
    """Managers, directories and files of one run, all removed at the end."""

    def __init__(self) -> None:
        self.run_as = ensure_system_user(DEFAULT_GUEST_USER).name if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="tl-bench-backup-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.blobs = DirectoryBlobStore(self.root / "blobs", fsync=False)
        self.managers: list[DatastoreManager] = []
        self._address = 0

    def manager(self, cls: type[DatastoreManager]) -> Any:
        volume = Path(tempfile.mkdtemp(prefix=f"v-{cls.datastore[:5]}-", dir=self.root))
        os.chmod(volume, 0o755)
        manager = cls(volume, self._free_address(cls.default_port), run_as=self.run_as,
                      ram_mb=RAM_MB)  # fmt: skip
        self.managers.append(manager)
        return manager

    def _free_address(self, port: int) -> str:
        while self._address < 250:
            self._address += 1
            address = f"127.21.250.{self._address}"
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((address, port)) != 0:
                    return address
        raise RuntimeError("no free address in 127.21.250.0/24")

    def cleanup(self) -> None:
        for manager in self.managers:
            record = manager.layout.run / "server.pid"
            pgid = int(record.read_text().split()[0]) if record.exists() else None
            with contextlib.suppress(Exception):
                manager.stop()
            if pgid is not None:
                kill_process_group(pgid)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def _bench() -> Iterator[_Bench]:
    bench = _Bench()
    try:
        yield bench
    finally:
        bench.cleanup()


def _timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _rounds() -> int:
    return max(1, int(os.environ.get("TROVELESS_BENCH_BACKUP_ROUNDS", "3")))


def _in_process(action: Callable[[], object]) -> Callable[[], object]:
    """`action` with the guest compressing in its own process (python-zstandard)."""

    def run() -> object:
        saved = stream.COMPRESS_WITH_PROCESS
        stream.COMPRESS_WITH_PROCESS = False
        try:
            return action()
        finally:
            stream.COMPRESS_WITH_PROCESS = saved

    return run


def _alternated(pipelines: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each pipeline over `rounds`, the order rotating each round so that
    none always runs first (after the fill) or last."""
    names = list(pipelines)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(_timed(pipelines[name]))
    return {name: statistics.median(values) for name, values in seconds.items()}


def _shell(script: str, env: dict[str, str] | None = None) -> None:
    """Run a raw pipeline (bash, pipefail). The floor's backup tools run as root: reading the
    data files is as fast for root as for the datastore's user."""
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        check=True,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _row(figure: str, value: float, unit: str, goal: str, floor: float | None) -> dict[str, Any]:
    ratio = None if not floor else round(value / floor, 3)
    return {
        "figure": figure,
        "value": round(value, 2),
        "unit": unit,
        "goal": goal,
        "floor": None if floor is None else round(floor, 2),
        "ratio": ratio,
    }


# --------------------------------------------------------------------------- MariaDB
def _fill_mariadb(manager: MariaDBManager, data_mb: int) -> None:
    rows = data_mb * MB // ROW_BYTES
    with manager._connect(read_timeout=3600) as cur:
        cur.execute("CREATE DATABASE bench")
        cur.execute("USE bench")
        cur.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, ref CHAR(32), body VARCHAR(200))")
        step = 1_000_000
        for first in range(1, rows + 1, step):
            last = min(rows, first + step - 1)
            cur.execute(
                "INSERT INTO t SELECT seq, MD5(seq), REPEAT(SHA2(seq, 256), 2) "
                f"FROM seq_{first}_to_{last}"
            )


def _mariadb_defaults(manager: MariaDBManager, path: Path) -> Path:
    path.write_text(
        f"!include {manager.config_path}\n[client]\nuser = {ADMIN_USER}\n"
        f'password = "{ADMIN_PASSWORD}"\n'
    )
    path.chmod(0o600)
    return path


def _mariadb(bench: _Bench, data_mb: int) -> list[dict[str, Any]]:
    source: MariaDBManager = bench.manager(MariaDBManager)
    source.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
    _fill_mariadb(source, data_mb)
    defaults = _mariadb_defaults(source, bench.root / "maria-bench.cnf")
    tool = f"{find_binary('mariadb-backup')} --defaults-file={defaults} --backup --stream=xbstream"
    work = bench.root / "maria-work"
    floor_file = bench.root / "maria-floor.xb.zst"

    key = new_data_key()
    request = BackupRequest("bench-maria", "bench/maria", key)
    outcome = None

    def ours() -> None:
        nonlocal outcome
        outcome = backup_datastore(source, bench.blobs, request)

    def floor() -> None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _shell(f"{tool} --target-dir={work} | zstd -3 -T2 -q -f -o {floor_file}")

    def trove() -> None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _shell(
            f"{tool} --target-dir={work} | gzip | openssl enc -aes-256-cbc -pbkdf2 -salt "
            f"-pass env:BENCH_KEY > {bench.root / 'maria-trove.xb.gz.enc'}",
            env={"BENCH_KEY": key.hex()},
        )

    medians = _alternated(
        {"floor": floor, "ours": ours, "in_process": _in_process(ours)}, _rounds()
    )
    floor_s, ours_s = medians["floor"], medians["ours"]
    trove_s = _timed(trove)
    assert outcome is not None
    data = outcome.stored.data_size_bytes
    rows = [
        _row("mariadb backup MB/s (guest pipeline)", data / MB / ours_s, "MB/s", ">= 0.9x raw",
             data / MB / floor_s),
        _row("mariadb backup MB/s (guest, in-process zstd)", data / MB / medians["in_process"],
             "MB/s", "reference", data / MB / floor_s),
        _row("mariadb backup MB/s (trove gzip+openssl)", data / MB / trove_s, "MB/s", "reference",
             data / MB / floor_s),
    ]  # fmt: skip

    # Restore: ours into a fresh instance; raw: extract + prepare + start by hand.
    target: MariaDBManager = bench.manager(MariaDBManager)
    link = ChainLink(
        "bench-maria", "bench/maria", outcome.stored.sha256, outcome.stored.size_bytes, key
    )
    restore_s = _timed(
        lambda: restore_datastore(
            target, bench.blobs, [link], admin_password=ADMIN_PASSWORD, overrides={}
        )
    )
    raw: MariaDBManager = bench.manager(MariaDBManager)

    def raw_restore() -> None:
        raw._make_layout()
        raw._render_config(raw.effective_settings())
        user = f"runuser -u {bench.run_as} -- " if bench.run_as else ""
        _shell(f"zstd -d -c {floor_file} | {user}mbstream -x -C {raw.layout.data}")
        _shell(f"{user}mariadb-backup --prepare --use-memory=256M --target-dir={raw.layout.data}")
        raw._start_server()

    raw_s = _timed(raw_restore)
    rows.append(_row("mariadb restore s", restore_s, "s", "<= 1.2x raw", raw_s))
    rows.append(_row("mariadb dataset (xbstream bytes)", data / MB, "MB", "", None))
    return rows


# --------------------------------------------------------------------------- PostgreSQL
def _postgresql(bench: _Bench, data_mb: int) -> list[dict[str, Any]]:
    source: PostgreSQLManager = bench.manager(PostgreSQLManager)
    source.prepare(admin_password=ADMIN_PASSWORD, databases=[{"name": "bench"}], users=[],
                   overrides={})  # fmt: skip
    rows_count = data_mb * MB // ROW_BYTES
    with source._connect("bench") as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS ref, "
            "repeat(md5((g * 7)::text), 4) AS body "
            f"FROM generate_series(1, {rows_count}) g"
        )
        conn.execute("CHECKPOINT")
    passfile = bench.root / "pg.pass"
    passfile.write_text(f"{source.address}:{source.port}:*:{ADMIN_USER}:{ADMIN_PASSWORD}\n")
    passfile.chmod(0o600)
    basebackup = (
        f"{find_binary('pg_basebackup', postgres_bin_dirs())} -h {source.address} "
        f"-p {source.port} -U {ADMIN_USER} -w -D - -Ft -X fetch -c fast"
    )
    env = {"PGPASSFILE": str(passfile)}
    floor_file = bench.root / "pg-floor.tar.zst"
    key = new_data_key()
    outcome = None

    def ours() -> None:
        nonlocal outcome
        outcome = backup_datastore(source, bench.blobs, BackupRequest("bench-pg", "bench/pg", key))

    def floor() -> None:
        _shell(f"{basebackup} | zstd -3 -T2 -q -f -o {floor_file}", env=env)

    medians = _alternated(
        {"floor": floor, "ours": ours, "in_process": _in_process(ours)}, _rounds()
    )
    floor_s, ours_s = medians["floor"], medians["ours"]
    trove_s = _timed(
        lambda: _shell(
            f"{basebackup} | gzip | openssl enc -aes-256-cbc -pbkdf2 -salt -pass env:BENCH_KEY "
            f"> {bench.root / 'pg-trove.tar.gz.enc'}",
            env={**env, "BENCH_KEY": key.hex()},
        )
    )
    assert outcome is not None
    data = outcome.stored.data_size_bytes
    rows = [
        _row("postgresql backup MB/s (guest pipeline)", data / MB / ours_s, "MB/s",
             ">= 0.9x raw", data / MB / floor_s),
        _row("postgresql backup MB/s (guest, in-process zstd)",
             data / MB / medians["in_process"], "MB/s", "reference", data / MB / floor_s),
        _row("postgresql backup MB/s (trove gzip+openssl)", data / MB / trove_s, "MB/s",
             "reference", data / MB / floor_s),
    ]  # fmt: skip
    target: PostgreSQLManager = bench.manager(PostgreSQLManager)
    link = ChainLink("bench-pg", "bench/pg", outcome.stored.sha256, outcome.stored.size_bytes, key)
    restore_s = _timed(
        lambda: restore_datastore(
            target, bench.blobs, [link], admin_password=ADMIN_PASSWORD, overrides={}
        )
    )
    raw: PostgreSQLManager = bench.manager(PostgreSQLManager)

    def raw_restore() -> None:
        raw._make_layout()
        raw._render_config(raw.effective_settings())
        user = f"runuser -u {bench.run_as} -- " if bench.run_as else ""
        _shell(f"zstd -d -c {floor_file} | {user}tar -x -C {raw.layout.data}")
        raw._start_server()

    raw_s = _timed(raw_restore)
    rows.append(_row("postgresql restore s", restore_s, "s", "<= 1.2x raw", raw_s))
    rows.append(_row("postgresql dataset (tar bytes)", data / MB, "MB", "", None))
    return rows


def run() -> list[dict[str, Any]]:
    data_mb = int(os.environ.get("TROVELESS_BENCH_BACKUP_MB", "1024"))
    rows: list[dict[str, Any]] = []
    with _bench() as bench:
        rows += _mariadb(bench, data_mb)
    with _bench() as bench:
        rows += _postgresql(bench, data_mb)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
