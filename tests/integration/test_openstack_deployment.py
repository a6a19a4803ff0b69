"""infra/openstack/heat.yaml and bootstrap.sh create exactly the queues the wiring uses (found
by building the real local wiring and reading back the queues it declared, with their
dead-letter settings) and the containers infra/openstack/deployment.py names.

bootstrap.sh runs for real with a recording stand-in for the `openstack` command: no OpenStack
cloud is reachable here, so what is checked is the commands it issues, not a cloud's answer.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.openstack import deployment
from infra.wiring import build_local
from shared.adapters.openstack.zaqar_queue import QUEUE_MARKER
from shared.engine.durable import QUEUE as ENGINE_QUEUE
from shared.settings import REPO_ROOT, load_settings

HEAT = REPO_ROOT / "infra" / "openstack" / "heat.yaml"
BOOTSTRAP = REPO_ROOT / "infra" / "openstack" / "bootstrap.sh"


@pytest.fixture(scope="module")
def wiring_queues() -> Iterator[dict[str, tuple[int | None, str | None]]]:
    """queue name -> (max receives, dead-letter queue), as the wiring declares them."""
    root = Path(tempfile.mkdtemp(prefix="tl-deploy-", dir="/tmp"))
    try:
        _, cloud, _ = build_local(load_settings(data_dir=root))
        try:
            with sqlite3.connect(cloud.queue_path) as db:
                rows = db.execute("SELECT name, max_receives, dead_letter_queue FROM queues")
                yield {name: (max_receives, dlq) for name, max_receives, dlq in rows}
        finally:
            cloud.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _resolve(value: Any, template: dict[str, Any]) -> Any:
    """Parameter defaults and resource names in place of get_param / get_attr(queue_id)."""
    if isinstance(value, dict) and "get_param" in value:
        return template["parameters"][value["get_param"]]["default"]
    if isinstance(value, dict) and "get_attr" in value:
        resource, attribute = value["get_attr"]
        assert attribute == "queue_id"
        return template["resources"][resource]["properties"]["name"]
    if isinstance(value, dict):
        return {k: _resolve(v, template) for k, v in value.items()}
    return value


def test_heat_queues_are_the_wirings(wiring_queues: dict[str, Any]) -> None:
    template = yaml.safe_load(HEAT.read_text())
    queues = {}
    for resource in template["resources"].values():
        if resource["type"] == "OS::Zaqar::Queue":
            properties = _resolve(resource["properties"], template)
            queues[properties["name"]] = properties["metadata"]
    assert set(queues) == set(wiring_queues)
    for name, (max_receives, dead_letter_queue) in wiring_queues.items():
        metadata = queues[name]
        assert metadata[QUEUE_MARKER] == 1
        assert metadata.get("_max_claim_count") == max_receives, name
        assert metadata.get("_dead_letter_queue") == dead_letter_queue, name


def test_heat_containers_are_the_deployments() -> None:
    template = yaml.safe_load(HEAT.read_text())
    containers = {
        _resolve(resource["properties"]["name"], template)
        for resource in template["resources"].values()
        if resource["type"] == "OS::Swift::Container"
    }
    assert containers == {deployment.STATE_CONTAINER, deployment.BACKUPS_CONTAINER}


def _run_bootstrap(
    tmp_path: Path, *, jobs: tuple[str, ...] = (), **env: str
) -> tuple[subprocess.CompletedProcess[str], list]:
    """Run bootstrap.sh with a stand-in `openstack` that records its arguments; its
    `job list` prints the names in `jobs`, one a line (`-f value -c Name`)."""
    log = tmp_path / "calls.jsonl"
    stub = tmp_path / "openstack"
    stub.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['job', 'list']:\n"
        f"    print({chr(10).join(jobs)!r})\n"
    )
    stub.chmod(0o755)
    completed = subprocess.run(
        ["bash", str(BOOTSTRAP)],
        env={"PATH": "/usr/bin:/bin", "OPENSTACK": str(stub), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return completed, calls


def test_bootstrap_creates_the_wirings_queues_and_containers(
    tmp_path: Path, wiring_queues: dict[str, Any]
) -> None:
    completed, calls = _run_bootstrap(tmp_path)
    assert completed.returncode == 0, completed.stderr
    created = [c[3] for c in calls if c[:3] == ["messaging", "queue", "create"]]
    metadata = {
        c[4]: json.loads(c[5]) for c in calls if c[:4] == ["messaging", "queue", "set", "metadata"]
    }
    assert set(created) == set(metadata) == set(wiring_queues)
    for name, (max_receives, dead_letter_queue) in wiring_queues.items():
        assert metadata[name][QUEUE_MARKER] == 1
        assert metadata[name].get("_max_claim_count") == max_receives, name
        assert metadata[name].get("_dead_letter_queue") == dead_letter_queue, name
        if dead_letter_queue is not None:  # a dead-letter queue exists before its queue
            assert created.index(dead_letter_queue) < created.index(name)
    containers = [c[2] for c in calls if c[:2] == ["container", "create"]]
    assert containers == [deployment.STATE_CONTAINER, deployment.BACKUPS_CONTAINER]
    assert not [c for c in calls if c[:2] == ["messaging", "subscription"]]
    assert not [c for c in calls if c[:1] == ["job"]]


def test_bootstrap_settings_and_webhook(tmp_path: Path) -> None:
    completed, calls = _run_bootstrap(
        tmp_path,
        TROVELESS_STATE_CONTAINER="s1",
        TROVELESS_GUEST_EVENTS_MAX_RECEIVES="7",
        TROVELESS_GUEST_EVENTS_WEBHOOK="https://qinling.example/v1/webhooks/w1/invoke",
    )
    assert completed.returncode == 0, completed.stderr
    assert ["container", "create", "s1"] in calls
    guest = next(
        c for c in calls if c[:5] == ["messaging", "queue", "set", "metadata", "guest-events"]
    )
    assert json.loads(guest[5])["_max_claim_count"] == 7
    assert [
        "messaging",
        "subscription",
        "create",
        "guest-events",
        "https://qinling.example/v1/webhooks/w1/invoke",
        "31536000",
    ] in calls


def test_bootstrap_refuses_a_bad_number_before_touching_the_cloud(tmp_path: Path) -> None:
    completed, calls = _run_bootstrap(tmp_path, TROVELESS_ENGINE_STEPS_MAX_RECEIVES="0; rm")
    assert completed.returncode == 2
    assert "positive integer" in completed.stderr
    assert calls == []


def test_heat_subscribes_the_engine_queue_to_the_engine_steps_webhook() -> None:
    template = yaml.safe_load(HEAT.read_text())
    subscriptions = {
        _resolve(resource["properties"]["queue_name"], template): resource
        for resource in template["resources"].values()
        if resource["type"] == "OS::Zaqar::Subscription"
    }
    push = subscriptions[ENGINE_QUEUE]
    assert push["properties"]["subscriber"] == {"get_param": "engine_steps_webhook"}
    assert push["properties"]["ttl"] == deployment.SUBSCRIPTION_TTL_SECONDS
    # Only when a webhook is given: the condition compares that parameter with "".
    condition = template["conditions"][push["condition"]]
    assert condition == {"not": {"equals": [{"get_param": "engine_steps_webhook"}, ""]}}
    assert template["parameters"]["engine_steps_webhook"]["default"] == ""


ENGINE_WEBHOOK = "https://qinling.example/v1/webhooks/w2/invoke"


def test_bootstrap_subscribes_the_engine_queue_and_schedules_the_engine_steps_job(
    tmp_path: Path,
) -> None:
    completed, calls = _run_bootstrap(
        tmp_path,
        TROVELESS_ENGINE_STEPS_WEBHOOK=ENGINE_WEBHOOK,
        TROVELESS_ENGINE_STEPS_FUNCTION=deployment.ENGINE_STEPS_FUNCTION,
    )

    assert completed.returncode == 0, completed.stderr
    subscription = ["messaging", "subscription", "create", ENGINE_QUEUE, ENGINE_WEBHOOK]
    assert [*subscription, str(deployment.SUBSCRIPTION_TTL_SECONDS)] in calls
    jobs = [c for c in calls if c[:1] == ["job"]]
    assert jobs == [
        ["job", "list", "-f", "value", "-c", "Name"],
        [
            "job",
            "create",
            deployment.ENGINE_STEPS_FUNCTION,
            "--name",
            deployment.ENGINE_STEPS_JOB,
            "--pattern",
            deployment.ENGINE_STEPS_PATTERN,
        ],
    ]
    # The queue exists before anything is subscribed to it.
    assert calls.index(["messaging", "queue", "create", ENGINE_QUEUE]) < calls.index(
        [*subscription, str(deployment.SUBSCRIPTION_TTL_SECONDS)]
    )


def test_bootstrap_run_again_makes_no_second_engine_steps_job(tmp_path: Path) -> None:
    completed, calls = _run_bootstrap(
        tmp_path,
        jobs=("troveless-backup-scheduler", deployment.ENGINE_STEPS_JOB),
        TROVELESS_ENGINE_STEPS_FUNCTION="f3b6c1d2-0000-4000-8000-000000000000",
    )

    assert completed.returncode == 0, completed.stderr
    assert not [c for c in calls if c[:2] == ["job", "create"]]
    assert f"job {deployment.ENGINE_STEPS_JOB}: exists" in completed.stdout
