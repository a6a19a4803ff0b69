"""Qinling function packages: one zip per function, each with a `main.main` entry point.

A package holds the generated `main.py` (calling `infra.openstack.qinling_entry.serve`), the
first-party modules the function can reach (found by following its imports, so the guest agent
stays out unless something imports it; the AWS profile's modules are left out by name), the
state-machine definitions, and `requirements.txt`: the third-party distributions those modules
import, with the version ranges pyproject.toml gives them. Wheels are not vendored; the runtime
image installs them.

The functions: the API, the guest-events consumer, every task module the state machines name
(`fn:module.func`), the backup scheduler and the heartbeat watchdog (when present), and the
engine's step worker (`engine_steps`), which runs the state machines' steps and their tasks
in-process, so its package holds every task module too.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.settings import REPO_ROOT

ENTRY = "main.main"  # Qinling's default entry: module `main`, function `main`
FIRST_PARTY = ("functions", "shared", "infra", "guest_agent", "bench")
# The AWS profile's wiring and adapters: reachable by name (build_runtime imports the profile
# chosen, lazily) but never run on OpenStack, so they and boto3 stay out of the packages.
OTHER_PROFILES = ("infra.aws", "shared.adapters.aws")
STATE_MACHINES_DIR = "state_machines"
REQUIREMENTS_FILE = "requirements.txt"
SETTINGS_FILE = "troveless.toml"  # optional, non-secret settings packaged with the code
SECRET_SETTINGS = frozenset({"master_key"})
MANIFEST_FILE = "troveless-package.json"
PACKAGE_PREFIX = "troveless-"
# A fixed timestamp for every zip entry, so the same sources give byte-identical packages.
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_RESOURCE = re.compile(r"^fn:([a-z_][a-z0-9_]*)\.")


class PackagingError(ValueError):
    """A function cannot be packaged (a module or an import is missing); says which."""


@dataclass(frozen=True)
class FunctionSpec:
    """One Qinling function: its name, kind (see qinling_entry) and `functions` module."""

    name: str
    kind: str
    module: str
    # Modules the function reaches only by name (the engine resolves `fn:module.func`).
    extra_roots: tuple[str, ...] = ()

    @property
    def zip_name(self) -> str:
        return f"{PACKAGE_PREFIX}{self.name.replace('_', '-')}.zip"

    def roots(self) -> list[str]:
        """Modules the function imports at run time (some only by name, dynamically)."""
        roots = ["infra.openstack.qinling_entry", f"functions.{self.module}"]
        if self.kind == "http":
            # functions.api includes functions.routes.<name> by name (ROUTE_MODULES).
            roots.append("functions.routes.*")
        roots.extend(self.extra_roots)
        return roots


def task_modules(state_machines_dir: Path) -> list[str]:
    """The `functions` modules the definitions' Task states call (`fn:module.func`)."""
    modules: set[str] = set()
    for path in sorted(state_machines_dir.glob("*.asl.json")):
        for resource in _resources(json.loads(path.read_text())):
            found = _RESOURCE.match(resource)
            if found is not None:
                modules.add(found.group(1))
    return sorted(modules)


def _resources(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Resource" and isinstance(value, str):
                yield value
            else:
                yield from _resources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _resources(item)


def function_specs(root: Path = REPO_ROOT) -> list[FunctionSpec]:
    tasks = task_modules(root / STATE_MACHINES_DIR)
    specs = [
        FunctionSpec("api", "http", "api"),
        FunctionSpec("guest_events", "queue", "guest_events"),
        FunctionSpec("backup_scheduler", "timer", "backup_scheduler"),
        FunctionSpec("heartbeat_watchdog", "timer", "heartbeat_watchdog"),
        FunctionSpec(
            "engine_steps",
            "engine",
            "engine_steps",
            extra_roots=tuple(f"functions.{module}" for module in tasks),
        ),
    ]
    specs.extend(FunctionSpec(module, "tasks", module) for module in tasks)
    for spec in specs:
        if not (root / "functions" / f"{spec.module}.py").is_file():
            raise PackagingError(f"function {spec.name}: functions/{spec.module}.py is missing")
    return specs


# ------------------------------------------------------------------ import closure
def module_file(root: Path, name: str) -> Path | None:
    """The source file of first-party module `name` under `root`, or None."""
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _statements(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones included (imports are statements; expressions are
    skipped, which keeps this fast)."""
    for node in nodes:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _statements([c for c in children if isinstance(c, ast.stmt)])
                for child in children:
                    if isinstance(child, ast.ExceptHandler | ast.match_case):
                        yield from _statements(child.body)


@functools.lru_cache(maxsize=4096)
def _imported_names_cached(path: Path, mtime_ns: int, module: str) -> frozenset[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(names)


def _imported_names(path: Path, module: str) -> frozenset[str]:
    """Every module name `path` imports, anywhere in the file (function-level imports are
    how cold starts and optional adapters load), resolved to absolute names."""
    return _imported_names_cached(path, path.stat().st_mtime_ns, module)


@dataclass(frozen=True)
class Closure:
    modules: frozenset[str]  # first-party modules (packages included)
    third_party: frozenset[str]  # top-level import names outside the stdlib and our code


def import_closure(root: Path, roots: Iterable[str]) -> Closure:
    """The first-party modules reachable from `roots` (a `pkg.*` root means every module of
    `pkg`), and the third-party top-level names they import."""
    pending: list[str] = []
    for name in roots:
        if name.endswith(".*"):
            package = name[:-2]
            directory = root.joinpath(*package.split("."))
            pending.append(package)
            pending.extend(
                f"{package}.{p.stem}"
                for p in sorted(directory.glob("*.py"))
                if p.stem != "__init__"
            )
        else:
            pending.append(name)
    modules: set[str] = set()
    third_party: set[str] = set()
    while pending:
        name = pending.pop()
        top = name.partition(".")[0]
        if top not in FIRST_PARTY:
            if top and top not in sys.stdlib_module_names:
                third_party.add(top)
            continue
        if name in modules or any(
            name == other or name.startswith(f"{other}.") for other in OTHER_PROFILES
        ):
            continue
        path = module_file(root, name)
        if path is None:
            continue  # `from pkg import attribute`: the attribute is not a module
        modules.add(name)
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)
        pending.extend(_imported_names(path, name))
    return Closure(frozenset(modules), frozenset(third_party))


# ------------------------------------------------------------------ requirements
def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(root: Path = REPO_ROOT) -> dict[str, str]:
    """pyproject's runtime dependencies: normalised distribution name -> requirement line."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared: dict[str, str] = {}
    for line in project.get("dependencies", []):
        name = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]
        declared[_normalise(name)] = line
    return declared


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level import name -> distributions (slow to compute: once per process)."""
    return dict(importlib.metadata.packages_distributions())


def requirements_for(import_names: Iterable[str], root: Path = REPO_ROOT) -> list[str]:
    """Requirement lines covering `import_names` (top-level modules), as pyproject states
    them; a distribution pyproject does not list is pinned to the installed version."""
    distributions = _distributions()
    declared = declared_requirements(root)
    lines: set[str] = set()
    for name in import_names:
        found = distributions.get(name)
        if not found:
            raise PackagingError(f"import {name!r}: no installed distribution provides it")
        for distribution in found:
            line = declared.get(_normalise(distribution))
            if line is None:
                line = f"{distribution}=={importlib.metadata.version(distribution)}"
            lines.add(line)
    return sorted(lines, key=str.lower)


# ------------------------------------------------------------------ packages
def main_module_source(spec: FunctionSpec) -> str:
    # Qinling sets no per-function environment: settings packaged beside main.py are used
    # unless the runtime's environment names another file.
    return (
        f'"""Qinling entry point of troveless\'s {spec.name} function ({spec.kind}).\n\n'
        "Generated by `troveless package --target qinling`; see infra/openstack/qinling_entry.py.\n"
        '"""\n\n'
        "import os\n"
        "from pathlib import Path\n\n"
        f"_SETTINGS = Path(__file__).with_name({SETTINGS_FILE!r})\n"
        "if _SETTINGS.is_file():\n"
        '    os.environ.setdefault("TROVELESS_CONFIG_FILE", str(_SETTINGS))\n\n'
        "from infra.openstack.qinling_entry import serve  # noqa: E402\n\n\n"
        "def main(**kwargs):\n"
        f"    return serve({spec.kind!r}, {spec.module!r}, kwargs)\n"
    )


def checked_settings(path: Path) -> bytes:
    """A settings file fit to package: valid TOML without secrets (a package is stored and
    downloaded in plaintext; secrets reach the functions through the runtime's environment)."""
    data = path.read_bytes()
    try:
        parsed = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PackagingError(f"{path}: not valid TOML: {exc}") from None
    secrets = sorted(SECRET_SETTINGS & set(parsed))
    if secrets:
        raise PackagingError(
            f"{path}: {', '.join(secrets)} must not be packaged; set TROVELESS_MASTER_KEY in "
            "the runtime's environment instead"
        )
    return data


@dataclass(frozen=True)
class BuiltPackage:
    spec: FunctionSpec
    path: Path
    modules: frozenset[str]
    requirements: tuple[str, ...]


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def build_package(
    spec: FunctionSpec, out_dir: Path, root: Path = REPO_ROOT, settings: bytes | None = None
) -> BuiltPackage:
    closure = import_closure(root, spec.roots())
    requirements = tuple(requirements_for(closure.third_party, root))
    files = sorted(
        str(path.relative_to(root))
        for path in (module_file(root, m) for m in closure.modules)
        if path is not None
    )
    definitions = sorted((root / STATE_MACHINES_DIR).glob("*.asl.json"))
    manifest = {
        "function": spec.name,
        "kind": spec.kind,
        "module": f"functions.{spec.module}",
        "entry": ENTRY,
        "runtime": "python3",
        "requirements": list(requirements),
        "modules": sorted(closure.modules),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.zip_name
    partial = path.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        _write(archive, "main.py", main_module_source(spec).encode())
        for name in files:
            _write(archive, name, (root / name).read_bytes())
        for definition in definitions:
            _write(archive, f"{STATE_MACHINES_DIR}/{definition.name}", definition.read_bytes())
        _write(archive, REQUIREMENTS_FILE, "".join(f"{r}\n" for r in requirements).encode())
        if settings is not None:
            _write(archive, SETTINGS_FILE, settings)
        _write(archive, MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    partial.replace(path)  # never leave a half-written zip under the final name
    return BuiltPackage(spec, path, closure.modules, requirements)


def build_all(
    out_dir: Path, root: Path = REPO_ROOT, settings_file: Path | None = None
) -> list[BuiltPackage]:
    """Every function's package; `settings_file` (TOML, no secrets) goes into each."""
    settings = checked_settings(settings_file) if settings_file is not None else None
    return [build_package(spec, out_dir, root, settings) for spec in function_specs(root)]
