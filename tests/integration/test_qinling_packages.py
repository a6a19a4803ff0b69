"""Qinling packages run as Qinling runs them: each zip is unzipped into its own directory and
its `main.main` called with keyword arguments (plus Qinling's own `context`) in a fresh Python
process whose import path is only that directory and the venv's third-party packages (no
`site`, so the editable install of this repository cannot leak in). The functions work on a
local state directory given through TROVELESS_* variables, and the tests check what they did
there."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.openstack.qinling_packages import (
    BuiltPackage,
    build_all,
    build_package,
    checked_settings,
    function_specs,
)
from infra.wiring import build_local
from shared.adapters.local.state_store import DirectoryStateStore
from shared.clock import SystemClock
from shared.engine.durable import QUEUE as ENGINE_QUEUE
from shared.engine.service import ExecutionService
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance, InstanceStatus
from shared.models.volume import Volume, VolumeKind
from shared.services.backup_schedules import (
    BackupSchedule,
    instance_index_key,
    schedule_key,
)
from shared.services.instances import InstanceRecords
from shared.settings import load_settings

PROJECT = "0123456789abcdef0123456789abcdef"
MASTER_KEY = base64.b64encode(b"k" * 32).decode()
# Calls the package's entry as Qinling's python3 runtime does (`func(**input)`, with its
# `context` added), once per call given, and proves where the code came from.
RUNNER = """
import json, sys
package_dir, site_packages, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path[:0] = [package_dir]
sys.path.append(site_packages)
import main
results = [main.main(**call, context={"os_session": None}) for call in calls]
import functions, infra, shared
origins = [m.__file__ for m in (main, functions, infra, shared)]
print(json.dumps({"results": results, "origins": origins,
                  "guest_agent_loaded": any(n.startswith("guest_agent") for n in sys.modules)}))
"""


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltPackage]:
    out = tmp_path_factory.mktemp("qinling")
    return {item.spec.name: item for item in build_all(out)}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, not pytest's 0700 tmp_path: local compute insists its guests can reach it.
    root = Path(tempfile.mkdtemp(prefix="tl-qinling-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_package(
    package: BuiltPackage,
    data_dir: Path | None,
    workdir: Path,
    calls: list[dict[str, Any]],
) -> dict[str, Any]:
    """Run `calls` through the package's main.main; `data_dir=None` leaves the settings to
    the package's own troveless.toml."""
    unpacked = workdir / package.path.stem
    with zipfile.ZipFile(package.path) as archive:
        archive.extractall(unpacked)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TROVELESS_MASTER_KEY": MASTER_KEY,
        "TROVELESS_LOG_LEVEL": "WARNING",
    }
    if data_dir is not None:
        env.update({"TROVELESS_PROFILE": "local", "TROVELESS_DATA_DIR": str(data_dir)})
    completed = subprocess.run(
        [
            sys.executable,
            "-I",  # no PYTHON* variables, no user site, no script directory
            "-S",  # no site: the editable install's path hooks stay out
            "-c",
            RUNNER,
            str(unpacked),
            sysconfig.get_path("purelib"),
            json.dumps(calls),
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    answer: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    for origin in answer["origins"]:
        assert origin.startswith(str(unpacked)), f"{origin} is not from the package"
    assert answer["guest_agent_loaded"] is False
    return answer


def _schedule(instance_id: str, next_run: datetime) -> BackupSchedule:
    now = datetime.now(UTC)
    return BackupSchedule(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        instance_id=instance_id,
        name="nightly",
        cron="0 3 * * *",
        next_run=next_run,
        created=now,
        updated=now,
    )


@pytest.mark.slow
def test_backup_scheduler_package_fires_due_schedules(
    packages: dict[str, BuiltPackage], data_dir: Path, tmp_path: Path
) -> None:
    store = DirectoryStateStore(data_dir / "state", SystemClock())
    now = datetime.now(UTC)
    # Due, for an instance that no longer exists: the scheduler removes the schedule.
    gone = _schedule(str(uuid.uuid4()), now - timedelta(minutes=5))
    # Not due yet: left exactly as it is.
    later = _schedule(str(uuid.uuid4()), now + timedelta(days=1))
    for schedule in (gone, later):
        store.put(schedule_key(schedule.id), schedule.model_dump(mode="json"), 0)
        store.put(instance_index_key(schedule.instance_id, schedule.id), {}, 0)

    answer = run_package(packages["backup_scheduler"], data_dir, tmp_path, [{}])

    assert answer["results"] == [{"started": []}]
    assert store.get(schedule_key(gone.id)) is None
    assert store.get(instance_index_key(gone.instance_id, gone.id)) is None
    kept = store.get(schedule_key(later.id))
    assert kept is not None and kept.revision == 1


@pytest.mark.slow
def test_instance_tasks_package_runs_task_functions(
    packages: dict[str, BuiltPackage], data_dir: Path, tmp_path: Path
) -> None:
    store = DirectoryStateStore(data_dir / "state", SystemClock())
    now = datetime.now(UTC)
    instance = Instance(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        name="db1",
        flavor_id="2",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        port=3306,
        created=now,
        updated=now,
    )
    InstanceRecords(store).create(instance)
    task = {"execution_arn": "arn:test:execution:provision:e1", "state_name": "MarkError"}
    calls = [
        {
            "payload": {"instance_id": instance.id, "error": "ComputeError", "cause": "no host"},
            "task": {**task, "resource": "fn:instance_tasks.mark_error", "idempotency_key": "k1"},
        },
        {  # a step on an instance that is gone: the named error the flows stop on
            "payload": {"instance_id": str(uuid.uuid4())},
            "task": {**task, "resource": "fn:instance_tasks.mark_active"},
        },
        {  # another module's function is not this package's to run
            "payload": {"backup_id": "b"},
            "task": {"resource": "fn:backup_tasks.begin"},
        },
    ]

    marked, missing, foreign = run_package(packages["instance_tasks"], data_dir, tmp_path, calls)[
        "results"
    ]

    assert "no host" in marked["result"]["fault"]
    record = InstanceRecords(store).get(instance.id)
    assert record.status is InstanceStatus.ERROR
    assert record.fault is not None and "no host" in record.fault.message
    assert missing["error"] == "InstanceDeleted"
    assert foreign["error"] == "UnknownResource"


@pytest.mark.slow
def test_api_package_answers_proxy_events_with_packaged_settings(
    data_dir: Path, tmp_path: Path
) -> None:
    settings = tmp_path / "troveless.toml"
    settings.write_text(f'profile = "local"\ndata_dir = "{data_dir}"\n')
    (api,) = [s for s in function_specs() if s.name == "api"]
    package = build_package(api, tmp_path / "out", settings=checked_settings(settings))
    event = {
        "httpMethod": "GET",
        "path": "/",
        "headers": {"Host": "api.example:8779"},
        "queryStringParameters": None,
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {"identity": {"sourceIp": "192.0.2.1"}},
    }
    # A token to check makes the function build its runtime (a cold start) from the settings.
    unauthenticated = {
        **event,
        "path": f"/v1.0/{PROJECT}/instances",
        "headers": {**event["headers"], "X-Auth-Token": "forged.token"},
    }
    versions, refused = run_package(package, None, tmp_path, [event, unauthenticated])["results"]
    assert versions["statusCode"] == 200
    assert "v1.0" in json.dumps(json.loads(versions["body"]))
    assert refused["statusCode"] == 401
    assert (data_dir / "queues").is_dir()  # the packaged settings chose the data directory


def _instance(instance_id: str) -> Instance:
    now = datetime.now(UTC)
    return Instance(
        id=instance_id,
        project_id=PROJECT,
        name="db1",
        flavor_id="2",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        port=3306,
        created=now,
        updated=now,
    )


# A flow whose task is a real packaged task function: the engine package runs it in-process.
MARK_ERROR_FLOW = {
    "StartAt": "Settle",
    "States": {
        "Settle": {"Type": "Pass", "Result": "no host", "ResultPath": "$.cause", "Next": "Mark"},
        "Mark": {
            "Type": "Task",
            "Resource": "fn:instance_tasks.mark_error",
            "Parameters": {
                "instance_id.$": "$.instance_id",
                "error": "ComputeError",
                "cause.$": "$.cause",
            },
            "ResultSelector": {"marked.$": "$.fault"},
            "End": True,
        },
    },
}


@pytest.mark.slow
def test_engine_steps_package_runs_queued_steps_and_their_tasks(
    packages: dict[str, BuiltPackage], data_dir: Path, tmp_path: Path
) -> None:
    settings = load_settings(data_dir=data_dir, master_key=MASTER_KEY)
    _runtime, cloud, driver = build_local(settings)
    try:
        instance_id = str(uuid.uuid4())
        InstanceRecords(cloud.state).create(_instance(instance_id))
        service = ExecutionService(driver)
        arn = service.start("probe", MARK_ERROR_FLOW, {"instance_id": instance_id}, name="p1").arn
        queued = cloud.queue.count(ENGINE_QUEUE)
    finally:
        cloud.close()
    assert queued == 1  # the execution's `begin`: nothing ran it yet

    calls = [
        # Zaqar's notification from another queue's subscription: not this function's doorbell
        {"body": {}, "queue_name": "guest-events", "Message_Type": "Notification"},
        {"budget_seconds": 30},  # the every-minute job's input
        {},  # again: nothing left to do
    ]
    ignored, drained, idle = run_package(packages["engine_steps"], data_dir, tmp_path, calls)[
        "results"
    ]

    assert ignored == {"trigger": "push", "ignored": f"queue_name: not {ENGINE_QUEUE}"}
    assert drained["trigger"] == "timer" and drained["budget_seconds"] == 30
    assert drained["handled"] == drained["received"] >= 1 and drained["failed"] == 0
    assert (idle["received"], idle["handled"]) == (0, 0)
    _runtime, cloud, driver = build_local(settings)
    try:
        described = ExecutionService(driver).describe(arn)
        assert str(described.status) == "SUCCEEDED", (described.error, described.cause)
        assert described.output is not None and "no host" in described.output["marked"]
        assert cloud.queue.count(ENGINE_QUEUE) == 0
    finally:
        cloud.close()
    records = InstanceRecords(DirectoryStateStore(data_dir / "state", SystemClock()))
    record = records.get(instance_id)
    assert record.status is InstanceStatus.ERROR
    assert record.fault is not None and "no host" in record.fault.message


def test_engine_steps_package_holds_every_task_module(
    packages: dict[str, BuiltPackage],
) -> None:
    engine = packages["engine_steps"]
    task_packages = [p for p in packages.values() if p.spec.kind == "tasks"]
    assert task_packages
    for package in task_packages:
        assert f"functions.{package.spec.module}" in engine.modules
    with zipfile.ZipFile(engine.path) as archive:
        manifest = json.loads(archive.read("troveless-package.json"))
    assert (manifest["kind"], manifest["module"]) == ("engine", "functions.engine_steps")
