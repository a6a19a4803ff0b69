"""The `troveless` client commands against a real `troveless up`, as a user runs them: only the
`OS_CLIENT_CONFIG_FILE` that `up` printed, each command a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.e2e.up_process import REPO, Up, running_up

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

POOL = "127.10.57.0/24"
PASSWORD = "Cli-pass-123"
LRU = '{"maxmemory-policy": "allkeys-lru"}'


@pytest.fixture(scope="module")
def cli_up() -> Iterator[Up]:
    with running_up(None, POOL, "--stop-servers") as running:
        yield running


def troveless(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OS_", "TROVELESS_")) or k == "OS_CLIENT_CONFIG_FILE"
    }
    env["OS_CLIENT_CONFIG_FILE"] = str(up.clouds)
    return subprocess.run(
        [sys.executable, "-m", "infra.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def ok(up: Up, *args: str) -> Any:
    """Run a command that must succeed; its stdout parsed as JSON when `-f json` was given."""
    done = troveless(up, *args)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return json.loads(done.stdout) if "json" in args else done


def test_catalog_lists(cli_up: Up) -> None:
    assert "tl.tiny" in [f["name"] for f in ok(cli_up, "flavor", "list", "-f", "json")]
    assert "redis" in [d["name"] for d in ok(cli_up, "datastore", "list", "-f", "json")]
    table = ok(cli_up, "flavor", "list").stdout
    assert "tl.tiny" in table


def test_instance_lifecycle_through_the_cli(cli_up: Up) -> None:
    created = ok(
        cli_up,
        "instance",
        "create",
        "cli-redis",
        "--flavor",
        "tl.tiny",
        "--size",
        "1",
        "--datastore",
        "redis",
        "--wait",
        "--timeout",
        "90",
        "-f",
        "json",
    )
    instance_id = created["id"]
    try:
        assert created["status"] == "ACTIVE"
        assert created["port"] == 6379 and created["addresses"]
        listed = ok(cli_up, "instance", "list", "-f", "json")
        assert [(i["name"], i["status"]) for i in listed if i["id"] == instance_id] == [
            ("cli-redis", "ACTIVE")
        ]
        # By name, as a user types it.
        shown = ok(cli_up, "instance", "show", "cli-redis", "-f", "json")
        assert shown["id"] == instance_id and shown["volume"]["size"] == 1

        ok(cli_up, "database", "create", "cli-redis", "4")
        ok(cli_up, "user", "create", "cli-redis", "app", PASSWORD, "--databases", "4")
        users = ok(cli_up, "user", "list", "cli-redis", "-f", "json")
        assert [u["name"] for u in users if u["name"] == "app"] == ["app"]
        client = redis.Redis(
            host=created["addresses"].split(",")[0],
            port=created["port"],
            username="app",
            password=PASSWORD,
            db=4,
            socket_timeout=10,
        )
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        group = ok(
            cli_up,
            "configuration",
            "create",
            "cli-attach",
            LRU,
            "--datastore",
            "redis",
            "-f",
            "json",
        )
        ok(cli_up, "configuration", "attach", "cli-redis", "cli-attach")
        shown = ok(cli_up, "instance", "show", instance_id, "-f", "json")
        assert shown["configuration"]["id"] == group["id"]
        ok(cli_up, "user", "delete", "cli-redis", "app")
        assert "app" not in [
            u["name"] for u in ok(cli_up, "user", "list", "cli-redis", "-f", "json")
        ]
    finally:
        deleted = troveless(cli_up, "instance", "delete", instance_id, "--wait", "--timeout", "90")
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert "deleted" in deleted.stderr
    assert instance_id not in [i["id"] for i in ok(cli_up, "instance", "list", "-f", "json")]
    ok(cli_up, "configuration", "delete", "cli-attach")  # free once its instance is gone


def test_configuration_groups_through_the_cli(cli_up: Up) -> None:
    created = ok(
        cli_up,
        "configuration",
        "create",
        "cli-cfg",
        LRU,
        "--datastore",
        "redis",
        "--description",
        "evict least recently used",
        "-f",
        "json",
    )
    listed = ok(cli_up, "configuration", "list", "-f", "json")
    assert [c["name"] for c in listed if c["id"] == created["id"]] == ["cli-cfg"]
    shown = ok(cli_up, "configuration", "show", "cli-cfg", "-f", "json")
    assert shown["values"] == {"maxmemory-policy": "allkeys-lru"}
    refused = troveless(
        cli_up,
        "configuration",
        "create",
        "cli-bad",
        '{"maxmemory-policy": "sometimes"}',
        "--datastore",
        "redis",
    )
    assert refused.returncode == 1 and "maxmemory-policy" in refused.stderr
    ok(cli_up, "configuration", "delete", "cli-cfg")
    left = ok(cli_up, "configuration", "list", "-f", "json")
    assert created["id"] not in [c["id"] for c in left]
    assert "cli-bad" not in [c["name"] for c in left]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("instance", "create", "bad", "--flavor", "999", "--size", "1", "--datastore", "redis"),
            "999",
        ),
        (
            ("instance", "create", "bad", "--flavor", "1", "--size", "1", "--datastore", "nosql"),
            "nosql",
        ),
        (("instance", "show", "no-such-instance"), "no-such-instance"),
    ],
)
def test_errors_print_the_message_and_exit_non_zero(
    cli_up: Up, args: tuple[str, ...], words: str
) -> None:
    done = troveless(cli_up, *args)
    assert done.returncode == 1
    assert "error:" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_unknown_cloud_is_an_error_not_a_traceback(cli_up: Up) -> None:
    done = troveless(cli_up, "instance", "list", "--os-cloud", "elsewhere")
    assert done.returncode == 1
    assert "no cloud 'elsewhere'" in done.stderr
    assert "Traceback" not in done.stderr
