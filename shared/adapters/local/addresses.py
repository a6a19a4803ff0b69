"""Loopback addresses for local servers: each server gets its own 127.x.y.z, like its own VM.

Any address in 127.0.0.0/8 can be bound without configuration, so a datastore listens on
`address:standard-port` exactly as on a VM. Claims are files named after the address holding
the owner's id, created with O_EXCL so two control-plane processes sharing the directory can
never hand out the same address; allocation runs under a file lock so stale claims (owner
gone) are reclaimed by one process at a time.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from shared.errors import TrovelessError

DEFAULT_ADDRESS_POOL = "127.10.0.0/16"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# Last octets never handed out: network/broadcast look-alikes and the conventional gateway (.1).
RESERVED_LAST_OCTETS = frozenset({0, 1, 255})
_LOCK_NAME = ".lock"


class AddressPoolExhaustedError(TrovelessError):
    """Every usable address of the pool is claimed."""


class AddressPool:
    """Hands out addresses of `network` (inside 127.0.0.0/8), at most one per owner.

    `owner_exists(owner)` says whether a claim's owner still exists; claims of owners that do
    not are stale (a crash between claiming and recording) and are reused. Without it every
    claim is live until released.
    """

    def __init__(
        self,
        claims_dir: Path,
        network: str = DEFAULT_ADDRESS_POOL,
        owner_exists: Callable[[str], bool] | None = None,
    ) -> None:
        try:
            self.network = ipaddress.IPv4Network(network)
        except ValueError as exc:
            raise ValueError(f"address pool {network!r} is not an IPv4 network: {exc}") from None
        if not self.network.subnet_of(LOOPBACK):
            raise ValueError(f"address pool {network} must lie inside {LOOPBACK}")
        self.claims_dir = claims_dir
        self._owner_exists = owner_exists
        claims_dir.mkdir(parents=True, exist_ok=True)

    def usable(self) -> Iterator[str]:
        """Addresses of the pool that may be handed out, in ascending order."""
        for host in self.network:
            if int(host) & 0xFF not in RESERVED_LAST_OCTETS:
                yield str(host)

    def claims(self) -> dict[str, str]:
        """Address -> owner of every claim on file ("" for a claim a crash left empty)."""
        out: dict[str, str] = {}
        for entry in os.scandir(self.claims_dir):
            if entry.name.startswith("."):
                continue
            owner = self._read_owner(Path(entry.path))
            if owner is not None:
                out[entry.name] = owner
        return out

    def address_of(self, owner: str) -> str | None:
        for address, holder in self.claims().items():
            if holder == owner:
                return address
        return None

    def allocate(self, owner: str) -> str:
        """An address for `owner`: the one it already holds, else the lowest free one."""
        if not owner or "\n" in owner:
            raise ValueError(f"invalid address owner {owner!r}")
        with self._locked():
            claims = self.claims()
            for address, holder in claims.items():
                if holder == owner and self._in_pool(address):
                    return address
            # Another control plane with its own claims directory (a second data dir, a test)
            # may already serve from an address: never hand out one something listens on.
            listening = listening_addresses()
            for address in self.usable():
                if address in listening:
                    continue
                claimed_by = claims.get(address)
                if claimed_by is not None:
                    if self._is_live(claimed_by):
                        continue
                    self._remove_claim(address)
                if self._claim(address, owner):
                    return address
        raise AddressPoolExhaustedError(f"no free address left in {self.network}")

    def release(self, address: str, owner: str) -> None:
        """Give `address` back; a claim held by someone else is left alone."""
        with self._locked():
            if self._read_owner(self.claims_dir / address) == owner:
                self._remove_claim(address)

    def release_owner(self, owner: str) -> None:
        """Give back whatever `owner` holds (nothing is fine)."""
        with self._locked():
            for address, holder in self.claims().items():
                if holder == owner:
                    self._remove_claim(address)

    # ------------------------------------------------------------------ internals
    def _in_pool(self, address: str) -> bool:
        try:
            return ipaddress.IPv4Address(address) in self.network
        except ValueError:
            return False

    def _is_live(self, owner: str) -> bool:
        # An empty claim is a crash between create and write (writes happen under the lock).
        if not owner:
            return False
        return True if self._owner_exists is None else self._owner_exists(owner)

    def _claim(self, address: str, owner: str) -> bool:
        try:
            fd = os.open(self.claims_dir / address, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, owner.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _remove_claim(self, address: str) -> None:
        with suppress(FileNotFoundError):
            (self.claims_dir / address).unlink()

    @staticmethod
    def _read_owner(path: Path) -> str | None:
        try:
            text = path.read_text()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return text

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.claims_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def listening_addresses() -> set[str]:
    """IPv4 addresses with a TCP socket in LISTEN state on this host (from /proc/net/tcp)."""
    found: set[str] = set()
    try:
        with open("/proc/net/tcp") as table:
            next(table, None)  # header
            for line in table:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # 0A = LISTEN
                    hex_address = fields[1].split(":", 1)[0]
                    # The kernel prints the network-order word as a host-order number.
                    found.add(str(ipaddress.IPv4Address(socket.ntohl(int(hex_address, 16)))))
    except OSError:
        pass
    return found
