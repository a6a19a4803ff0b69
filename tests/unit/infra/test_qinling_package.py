"""`troveless package --target qinling`: which functions get a package, what each zip holds,
and the Qinling entry's handling of inputs that need no runtime. (Running the packages is
tests/integration/test_qinling_packages.py.)"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli.main import app
from infra.openstack import qinling_entry
from infra.openstack.qinling_packages import (
    FIRST_PARTY,
    OTHER_PROFILES,
    BuiltPackage,
    PackagingError,
    build_all,
    checked_settings,
    function_specs,
)
from shared.settings import REPO_ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[BuiltPackage]:
    return build_all(tmp_path_factory.mktemp("qinling"))


def _modules_named_by_state_machines() -> set[str]:
    text = "".join(p.read_text() for p in (REPO_ROOT / "state_machines").glob("*.asl.json"))
    return set(re.findall(r'"Resource"\s*:\s*"fn:([a-z_0-9]+)\.', text))


def test_one_package_per_function() -> None:
    names = {spec.name for spec in function_specs()}
    expected = {
        "api",
        "guest_events",
        "backup_scheduler",
        "heartbeat_watchdog",
        "engine_steps",
    } | _modules_named_by_state_machines()
    assert names == expected
    assert {"instance_tasks", "backup_tasks"} <= names


def test_each_zip_has_an_entry_requirements_and_only_what_it_needs(
    built: list[BuiltPackage],
) -> None:
    for package in built:
        with zipfile.ZipFile(package.path) as archive:
            names = set(archive.namelist())
            main = archive.read("main.py").decode()
            requirements = archive.read("requirements.txt").decode().split()
        tree = ast.parse(main)
        entry = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        assert entry.args.kwarg is not None and not entry.args.args  # main(**kwargs)
        assert f"functions/{package.spec.module}.py" in names
        assert "infra/openstack/qinling_entry.py" in names
        assert "state_machines/provision_instance.asl.json" in names
        assert not [n for n in names if n.startswith(("guest_agent/", "infra/cli/", "tests/"))]
        assert "functions/lambda_tasks.py" not in names  # AWS's entry, not Qinling's
        # The AWS profile's wiring and adapters never run on OpenStack: left out, boto3 too.
        assert not [n for n in names if n.startswith(("infra/aws/", "shared/adapters/aws/"))]
        assert not [r for r in requirements if r.startswith(("boto3", "botocore"))]
        assert "pydantic>=2.7" in requirements


@functools.cache
def _imports(source: str, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module or "")
    return found


def test_zips_are_closed_under_imports_and_declare_third_party_ones(
    built: list[BuiltPackage],
) -> None:
    distributions = importlib.metadata.packages_distributions()
    for package in built:
        with zipfile.ZipFile(package.path) as archive:
            sources = {n: archive.read(n).decode() for n in archive.namelist() if n.endswith(".py")}
            requirements = archive.read("requirements.txt").decode().lower()
        for name, source in sources.items():
            module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for imported in _imports(source, module, name.endswith("__init__.py")):
                top = imported.partition(".")[0]
                if imported.startswith(tuple(f"{other}." for other in OTHER_PROFILES)):
                    continue  # another profile's, imported only when that profile is chosen
                if top in FIRST_PARTY:
                    path = imported.replace(".", "/")
                    assert (
                        f"{path}.py" in sources
                        or f"{path}/__init__.py" in sources
                        or f"{path.rpartition('/')[0]}.py" in sources  # from module import name
                        or f"{path.rpartition('/')[0]}/__init__.py" in sources
                    ), f"{package.path.name}: {name} imports {imported}, not packaged"
                elif top and top not in sys.stdlib_module_names:
                    dists = distributions.get(top, [])
                    assert any(
                        re.sub(r"[-_.]+", "-", d).lower() in requirements.replace("_", "-")
                        for d in dists
                    ), f"{package.path.name}: {name} imports {top}, not in requirements"


def test_builds_are_reproducible(built: list[BuiltPackage], tmp_path: Path) -> None:
    again = {p.path.name: p.path.read_bytes() for p in build_all(tmp_path)}
    assert again == {p.path.name: p.path.read_bytes() for p in built}


def test_cli_builds_the_packages(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["package", "--target", "qinling", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    zips = sorted(p.name for p in tmp_path.glob("*.zip"))
    assert len(zips) == len(function_specs())
    assert "troveless-instance-tasks.zip" in zips
    assert not list(tmp_path.glob("*.partial"))
    refused = CliRunner().invoke(app, ["package", "--target", "lambda", "--out", str(tmp_path)])
    assert refused.exit_code == 2


def test_qinling_context_never_reaches_the_handler() -> None:
    event = qinling_entry.queue_event(
        {"body": {"kind": "heartbeat"}, "queue_name": "guest-events", "message_id": "m1"}
    )
    assert event["Records"][0]["messageId"] == "m1"
    assert event["Records"][0]["body"] == '{"kind": "heartbeat"}'
    batch = {"Records": [{"messageId": "x", "body": "{}"}]}
    assert qinling_entry.queue_event(batch) is batch
    with pytest.raises(qinling_entry.EntryError):
        qinling_entry.queue_event({"nothing": 1})
    with pytest.raises(qinling_entry.EntryError):
        qinling_entry.serve("cron", "backup_scheduler", {})
    with pytest.raises(qinling_entry.EntryError):
        qinling_entry.serve("timer", "../etc", {})


def test_task_packages_run_only_their_own_module() -> None:
    foreign = qinling_entry.run_task(
        "instance_tasks", {"payload": {}, "task": {"resource": "fn:backup_tasks.begin"}}
    )
    assert foreign["error"] == "UnknownResource"
    unnamed = qinling_entry.run_task("instance_tasks", {"payload": {}})
    assert unnamed["error"] == "UnknownResource"
    bad_attempt = qinling_entry.run_task(
        "instance_tasks",
        {"payload": {}, "task": {"resource": "fn:instance_tasks.mark_active", "attempt": -1}},
    )
    assert bad_attempt["error"] == "InvalidTaskInput"


def test_settings_are_packaged_but_secrets_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('profile = "openstack"\nregion = "RegionTwo"\n')
    result = CliRunner().invoke(
        app,
        ["package", "--target", "qinling", "--out", str(tmp_path / "out"), "--settings", str(good)],
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "out" / "troveless-backup-scheduler.zip") as archive:
        assert archive.read("troveless.toml") == good.read_bytes()
    secret = tmp_path / "secret.toml"
    secret.write_text('master_key = "c2VjcmV0"\n')
    with pytest.raises(PackagingError, match="master_key"):
        checked_settings(secret)
    broken = tmp_path / "broken.toml"
    broken.write_text("profile = \n")
    with pytest.raises(PackagingError, match="TOML"):
        checked_settings(broken)
