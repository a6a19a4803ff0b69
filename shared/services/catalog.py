"""What tenants can choose from: flavors (from settings) and datastores with their versions.

A datastore version is listed only when its binaries are installed on this host (the local
profile runs them directly); its name is the major version the binary reports ("10.11",
"15", "7.0"). Ids are UUIDv5 of the names, so they stay the same across restarts and hosts.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from shared.errors import NotFoundError
from shared.models.datastore import Datastore, DatastoreManager, DatastoreVersion
from shared.models.flavor import Flavor
from shared.observability import get_logger
from shared.settings import Settings

log = get_logger("catalog")

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://troveless/datastores")


@dataclass(frozen=True)
class InstalledVersion:
    """A datastore binary found on this host: its major `name` and exact `version`."""

    datastore: str
    name: str
    version: str
    binary: str


def _run_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _mariadb() -> list[InstalledVersion]:
    binary = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        return []
    match = re.search(r"Ver (\d+)\.(\d+)\.(\d+)", _run_version([binary, "--version"]))
    if match is None:
        return []
    major, minor, patch = match.groups()
    return [InstalledVersion("mariadb", f"{major}.{minor}", f"{major}.{minor}.{patch}", binary)]


def _postgresql() -> list[InstalledVersion]:
    found = []
    for binary in sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres")):
        match = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", _run_version([binary, "--version"]))
        if match is None:
            continue
        major, minor = match.group(1), match.group(2) or "0"
        found.append(InstalledVersion("postgresql", major, f"{major}.{minor}", binary))
    return found


def _redis() -> list[InstalledVersion]:
    binary = shutil.which("redis-server")
    if binary is None:
        return []
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", _run_version([binary, "--version"]))
    if match is None:
        return []
    major, minor, patch = match.groups()
    return [InstalledVersion("redis", f"{major}.{minor}", f"{major}.{minor}.{patch}", binary)]


@cache
def installed_versions() -> tuple[InstalledVersion, ...]:
    """Every datastore version installed here (probed once per process)."""
    found = (*_mariadb(), *_postgresql(), *_redis())
    log.info("datastores probed", extra={"versions": [f"{v.datastore} {v.name}" for v in found]})
    return found


def datastore_id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def version_id(datastore: str, version: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{datastore}/{version}"))


class CatalogService:
    """Flavors and datastores as the API lists them and `create` checks requests against."""

    def __init__(
        self,
        settings: Settings,
        *,
        probe: Callable[[], tuple[InstalledVersion, ...]] = installed_versions,
    ) -> None:
        self._settings = settings
        self._probe = probe

    # ------------------------------------------------------------------ flavors
    def flavors(self) -> list[Flavor]:
        return list(self._settings.flavors)

    def flavor(self, flavor_id: str) -> Flavor:
        """A flavor by id (or by name, which some clients send); NotFoundError otherwise."""
        for flavor in self._settings.flavors:
            if flavor_id in (flavor.id, flavor.name):
                return flavor
        raise NotFoundError(flavor_id, "flavor")

    # ------------------------------------------------------------------ datastores
    def datastores(self) -> list[Datastore]:
        """Installed datastores, each with its installed versions (the newest is the default)."""
        by_type: dict[str, list[InstalledVersion]] = {}
        for found in self._probe():
            by_type.setdefault(found.datastore, []).append(found)
        result = []
        for name in sorted(by_type):
            versions = sorted(by_type[name], key=lambda v: _version_key(v.version))
            result.append(
                Datastore(
                    id=datastore_id(name),
                    name=name,
                    manager=DatastoreManager(name),
                    versions=[
                        DatastoreVersion(
                            id=version_id(name, v.name),
                            name=v.name,
                            version=v.version,
                            image=v.binary,
                            default=v is versions[-1],
                        )
                        for v in versions
                    ],
                )
            )
        return result

    def datastore(self, name_or_id: str) -> Datastore:
        for datastore in self.datastores():
            if name_or_id in (datastore.name, datastore.id):
                return datastore
        raise NotFoundError(name_or_id, "datastore")

    def version(self, datastore: str, name_or_id: str) -> DatastoreVersion:
        found = self.datastore(datastore).find_version(name_or_id)
        if found is None or not found.active:
            raise NotFoundError(name_or_id, f"{datastore} version")
        return found

    def default_version(self, datastore: str) -> DatastoreVersion:
        store = self.datastore(datastore)
        default = store.default_version
        if default is None:
            raise NotFoundError(datastore, "default version of datastore")
        return default

    def default_datastore(self) -> Datastore:
        """The datastore used when a request names none: MariaDB if installed (Trove's
        usual default), else the first installed one."""
        stores = self.datastores()
        if not stores:
            raise NotFoundError("any", "installed datastore")
        return next((d for d in stores if d.name == "mariadb"), stores[0])


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))
