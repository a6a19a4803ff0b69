"""Domain models: JSON round-trips, refusals that name the field, secrets kept out of
dumps, Trove's status strings, backup chains and guest-message signatures."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr, ValidationError

from shared.models import (
    Address,
    Backup,
    BackupChainError,
    BackupStatus,
    Cluster,
    ClusterNode,
    ClusterTask,
    Configuration,
    ConfigurationParameter,
    Database,
    Datastore,
    DatastoreManager,
    DatastoreRef,
    DatastoreVersion,
    Execution,
    ExecutionStatus,
    Fault,
    Flavor,
    GuestCommand,
    GuestCommandName,
    GuestError,
    GuestResult,
    Heartbeat,
    Instance,
    InstanceStatus,
    InstanceTask,
    NodeRole,
    ReplicaSet,
    ReplicationRole,
    ReplicationState,
    ServiceStatus,
    User,
    Volume,
    VolumeKind,
    canonical_json,
    parse_guest_message,
)

NOW = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
CIPHERTEXT = base64.b64encode(bytes(range(60))).decode()
MARIADB = DatastoreRef(type="mariadb", version="10.11")


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- samples
def make_instance(**changes: Any) -> Instance:
    fields: dict[str, Any] = {
        "id": new_id(),
        "project_id": "0f5b2c3d4e5f60718293a4b5c6d7e8f9",
        "name": "orders-db",
        "status": InstanceStatus.ACTIVE,
        "operating_status": ServiceStatus.HEALTHY,
        "operating_status_updated": NOW,
        "task": InstanceTask.NONE,
        "flavor_id": "2",
        "volume": Volume(kind=VolumeKind.LOOP, size_gb=10, used_gb=1.25, id="vol-1"),
        "datastore": MARIADB,
        "availability_zone": "az1",
        "addresses": [Address(address="127.10.0.5"), Address(address="::1", type="public")],
        "port": 3306,
        "configuration_id": new_id(),
        "replicas": [new_id(), new_id()],
        "server_id": "local-proc-7",
        "encrypted_guest_secret": CIPHERTEXT,
        "created": NOW,
        "updated": NOW + timedelta(seconds=5),
    }
    fields.update(changes)
    return Instance(**fields)


def make_backup(**changes: Any) -> Backup:
    fields: dict[str, Any] = {
        "id": new_id(),
        "project_id": "p1",
        "name": "nightly",
        "instance_id": new_id(),
        "status": BackupStatus.COMPLETED,
        "datastore": MARIADB,
        "location": "backups/abc/full.xbstream.zst.enc",
        "size_bytes": 1_048_576,
        "data_size_bytes": 8_388_608,
        "checksum": "ab" * 32,
        "replication_position": "0-1-42",
        "encryption_key_id": "master-1",
        "encrypted_data_key": CIPHERTEXT,
        "created": NOW,
        "updated": NOW,
    }
    fields.update(changes)
    return Backup(**fields)


def make_command(**changes: Any) -> GuestCommand:
    fields: dict[str, Any] = {
        "id": new_id(),
        "instance_id": new_id(),
        "name": GuestCommandName.CREATE_USER,
        "args": {"users": [{"name": "app", "host": "%", "encrypted_password": CIPHERTEXT}]},
        "sequence": 7,
        "timestamp": NOW,
        "deadline": NOW + timedelta(minutes=5),
        "task_token": "token-abc",
    }
    fields.update(changes)
    return GuestCommand(**fields)


def make_result(**changes: Any) -> GuestResult:
    fields: dict[str, Any] = {
        "command_id": new_id(),
        "command": GuestCommandName.LIST_DATABASES,
        "instance_id": new_id(),
        "ok": True,
        "result": {"databases": [{"name": "shop"}]},
        "sequence": 3,
        "timestamp": NOW,
        "task_token": "token-abc",
    }
    fields.update(changes)
    return GuestResult(**fields)


def make_heartbeat(**changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "instance_id": new_id(),
        "agent_version": "0.1.0",
        "sequence": 99,
        "timestamp": NOW,
        "datastore_status": ServiceStatus.HEALTHY,
        "disk_used_bytes": 10,
        "disk_total_bytes": 100,
        "replication": ReplicationState(
            role=ReplicationRole.REPLICA,
            position="0-1-40",
            lag_seconds=0.5,
            source_instance_id=new_id(),
        ),
    }
    fields.update(changes)
    return Heartbeat(**fields)


def make_execution(**changes: Any) -> Execution:
    fields: dict[str, Any] = {
        "arn": "arn:aws:states:local:000000000000:execution:provision:run-1",
        "state_machine_name": "provision",
        "name": "run-1",
        "status": ExecutionStatus.SUCCEEDED,
        "input": {"instance_id": new_id(), "flavor": {"ram": 512}, "users": []},
        "output": {"ok": True, "addresses": ["127.10.0.5"]},
        "start_date": NOW,
        "stop_date": NOW + timedelta(seconds=40),
    }
    fields.update(changes)
    return Execution(**fields)


def all_samples() -> list[BaseModel]:
    version = DatastoreVersion(
        id=new_id(), name="10.11", version="10.11.6", packages=["mariadb-server"], default=True
    )
    return [
        make_instance(),
        make_instance(replica_of=new_id(), replicas=[], cluster_id=new_id()),
        make_instance(
            status=InstanceStatus.ERROR,
            task=InstanceTask.BUILDING,
            fault=Fault(message="no space left", details="ENOSPC", created=NOW),
        ),
        Flavor(id="2", name="m1.small", ram_mb=2048, vcpus=1, disk_gb=20),
        Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        MARIADB,
        version,
        Datastore(
            id=new_id(),
            name="mariadb",
            manager=DatastoreManager.MARIADB,
            versions=[version, DatastoreVersion(id=new_id(), name="10.6", version="10.6.18")],
        ),
        Database(name="shop", character_set="utf8mb4", collate="utf8mb4_general_ci"),
        User(name="app", host="10.%", encrypted_password=CIPHERTEXT, databases=["shop"]),
        make_backup(),
        make_backup(status=BackupStatus.NEW, location=None, checksum=None),
        make_backup(incremental=True, parent_id=new_id()),
        make_backup(status=BackupStatus.FAILED, fail_reason="disk full", checksum=None),
        Configuration(
            id=new_id(),
            project_id="p1",
            name="big-buffers",
            datastore=MARIADB,
            values={"max_connections": 200, "innodb_flush": 1.5, "sql_mode": "", "log": True},
            instance_ids=[new_id()],
            created=NOW,
            updated=NOW,
        ),
        ConfigurationParameter(
            name="max_connections", type="integer", min=1, max=100_000, restart_required=False
        ),
        ConfigurationParameter(
            name="binlog_format", type="string", allowed_values=["ROW", "MIXED"]
        ),
        Cluster(
            id=new_id(),
            project_id="p1",
            name="galera",
            datastore=MARIADB,
            task=ClusterTask.BUILDING_INITIAL,
            nodes=[
                ClusterNode(instance_id=new_id(), availability_zone="az1"),
                ClusterNode(instance_id=new_id(), availability_zone="az2"),
                ClusterNode(instance_id=new_id(), role=NodeRole.ARBITER),
            ],
            created=NOW,
            updated=NOW,
        ),
        ReplicaSet(
            id=new_id(),
            project_id="p1",
            primary_id=new_id(),
            replica_ids=[new_id()],
            epoch=3,
            created=NOW,
            updated=NOW,
        ),
        make_execution(),
        make_execution(status=ExecutionStatus.RUNNING, stop_date=None, output=None),
        make_execution(
            status=ExecutionStatus.FAILED,
            output=None,
            error="States.TaskFailed",
            cause="server quota exceeded",
        ),
        make_command(),
        make_command(deadline=None, task_token=None, args={}).sign(SECRET),
        make_result(),
        make_result(ok=False, result=None, error=GuestError(type="DiskFull", message="full")),
        make_heartbeat().sign(SECRET),
    ]


def sample_id(model: BaseModel) -> str:
    return type(model).__name__


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("model", all_samples(), ids=sample_id)
def test_json_round_trip(model: BaseModel) -> None:
    again = type(model).model_validate_json(model.model_dump_json())
    assert again == model


@pytest.mark.parametrize("model", all_samples(), ids=sample_id)
def test_store_round_trip_through_plain_json(model: BaseModel) -> None:
    # What the StateStore does: dump to JSON types, write text, read, validate.
    stored = json.loads(json.dumps(model.model_dump(mode="json")))
    assert type(model).model_validate(stored) == model


def test_every_model_is_covered_by_the_samples() -> None:
    from shared import models

    model_classes = {
        obj
        for obj in vars(models).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ != "pydantic"
    }
    abstract = {models.DomainModel, models.SignedMessage}
    covered = {type(m) for m in all_samples()}
    nested = {Address, Fault, ClusterNode, GuestError, ReplicationState}
    assert model_classes - abstract - covered - nested == set()


def test_timestamps_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    instance = make_instance(created=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two))
    assert instance.created == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert instance.created.utcoffset() == timedelta(0)
    assert '"created":"2026-03-01T12:00:00Z"' in instance.model_dump_json()


def test_uuids_and_addresses_are_canonicalised() -> None:
    raw = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"
    instance = make_instance(id=raw, addresses=[Address(address="0:0:0:0:0:0:0:1")])
    assert instance.id == raw.lower()
    assert instance.addresses[0].address == "::1"


def test_replace_validates_and_keeps_secrets() -> None:
    instance = make_instance()
    changed = instance.replace(status=InstanceStatus.RESIZE, task=InstanceTask.RESIZING)
    assert changed.status is InstanceStatus.RESIZE
    assert instance.status is InstanceStatus.ACTIVE  # the original revision is untouched
    with pytest.raises(ValidationError, match="replica_of"):
        instance.replace(replica_of=instance.id)
    user = User(name="app", password=SecretStr("pw-kept-in-memory"))
    assert user.replace(host="10.%").password == SecretStr("pw-kept-in-memory")


def test_models_are_immutable() -> None:
    instance = make_instance()
    with pytest.raises(ValidationError, match="frozen"):
        instance.status = InstanceStatus.ERROR  # type: ignore[misc]


# --------------------------------------------------------------------------- hypothesis
uuids = st.uuids().map(str)
aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
names = st.text(min_size=1, max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20)
# Keys avoid secret-looking names, which the models refuse (tested separately).
json_keys = st.text(max_size=12).filter(
    lambda k: "password" not in k.lower() and "secret" not in k.lower()  # as the model: any case
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def instances(draw: st.DrawFn) -> Instance:
    instance_id = draw(uuids)
    created = draw(aware_datetimes)
    return Instance(
        id=instance_id,
        project_id=draw(names),
        name=draw(names),
        status=draw(st.sampled_from(InstanceStatus)),
        operating_status=draw(st.sampled_from(ServiceStatus)),
        task=draw(st.sampled_from(InstanceTask)),
        flavor_id=draw(names),
        volume=Volume(
            kind=draw(st.sampled_from(VolumeKind)),
            size_gb=draw(st.integers(1, 16_384)),
            used_gb=draw(st.none() | st.floats(0, 20_000)),
        ),
        datastore=DatastoreRef(type=draw(names), version=draw(names)),
        addresses=[Address(address=str(a)) for a in draw(st.lists(st.ip_addresses(), max_size=3))],
        port=draw(st.none() | st.integers(1, 65535)),
        replica_of=draw(st.none() | uuids.filter(lambda u: u != instance_id)),
        replicas=draw(st.lists(uuids.filter(lambda u: u != instance_id), unique=True, max_size=3)),
        created=created,
        updated=created + draw(st.timedeltas(timedelta(0), timedelta(days=30))),
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_instance_round_trip_property(instance: Instance) -> None:
    assert Instance.model_validate_json(instance.model_dump_json()) == instance


@settings(max_examples=60)
@given(
    values=st.dictionaries(
        st.text(min_size=1, max_size=30),
        st.booleans() | st.integers() | finite_floats | st.text(max_size=30),
        max_size=8,
    )
)
def test_configuration_values_keep_their_types(values: dict[str, Any]) -> None:
    group = Configuration(
        id=new_id(),
        project_id="p",
        name="g",
        datastore=MARIADB,
        values=values,
        created=NOW,
        updated=NOW,
    )
    again = Configuration.model_validate_json(group.model_dump_json())
    assert again == group
    # True must not come back as 1, nor 1 as 1.0
    assert {k: type(v) for k, v in again.values.items()} == {k: type(v) for k, v in values.items()}


@settings(max_examples=60)
@given(
    args=st.dictionaries(json_keys, json_values, max_size=5),
    sequence=st.integers(0, 2**62),
    timestamp=aware_datetimes,
    name=st.sampled_from(GuestCommandName),
)
def test_signed_command_survives_the_wire(
    args: dict[str, Any], sequence: int, timestamp: datetime, name: GuestCommandName
) -> None:
    command = make_command(
        args=args, sequence=sequence, timestamp=timestamp, name=name, deadline=None
    ).sign(SECRET)
    received = parse_guest_message(command.model_dump_json())
    assert received == command
    assert received.verify(SECRET)
    assert not received.verify(OTHER_SECRET)


# --------------------------------------------------------------------------- refusals
def field_errors(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: make_instance(id="not-a-uuid"), "id"),
        (lambda: make_instance(status="RUNNING"), "status"),
        (lambda: make_instance(operating_status="ACTIVE"), "operating_status"),
        (lambda: make_instance(name=""), "name"),
        (lambda: make_instance(port=0), "port"),
        (lambda: make_instance(created=datetime(2026, 1, 1)), "created"),
        (lambda: make_instance(volume={"kind": "nfs", "size_gb": 1}), "volume.kind"),
        (lambda: make_instance(volume={"kind": "loop", "size_gb": 0}), "volume.size_gb"),
        (
            lambda: make_instance(volume={"kind": "loop", "size_gb": 1, "used_gb": -1}),
            "volume.used_gb",
        ),
        (lambda: make_instance(addresses=[{"address": "10.0.0.300"}]), "addresses.0.address"),
        (lambda: make_instance(encrypted_guest_secret="hunter2"), "encrypted_guest_secret"),
        (lambda: make_instance(encrypted_guest_secret="aGVsbG8="), "encrypted_guest_secret"),
        (lambda: make_instance(colour="blue"), "colour"),
        (lambda: Flavor(id="1", name="tiny", ram_mb=0, vcpus=1), "ram_mb"),
        (lambda: Flavor(id="1", name="tiny", ram_mb=64, vcpus=0), "vcpus"),
        (lambda: make_backup(checksum="XYZ"), "checksum"),
        (lambda: make_backup(size_bytes=-1), "size_bytes"),
        (lambda: make_backup(status="DONE"), "status"),
        (lambda: make_heartbeat(datastore_status="GREAT"), "datastore_status"),
        (lambda: make_heartbeat(signature="not-hex"), "signature"),
        (
            lambda: make_heartbeat(replication={"role": "primary", "lag_seconds": -1}),
            "replication.lag_seconds",
        ),
        (lambda: make_command(name="drop_everything"), "name"),
        (lambda: make_command(sequence=-1), "sequence"),
        (lambda: make_command(args={"password": "hunter2"}), "args"),
        (lambda: make_command(args={"users": [{"name": "a", "password": "x"}]}), "args"),
        (lambda: make_result(result={"root": {"root_password": "x"}}), "result"),
        (lambda: make_execution(name="has space"), "name"),
        (lambda: make_execution(arn="provision:run-1"), "arn"),
        (lambda: make_execution(input={"admin_password": "x"}), "input"),
        (lambda: make_execution(input={"x": float("nan")}), "input"),
        (
            lambda: Cluster(
                id=new_id(),
                project_id="p",
                name="c",
                datastore=MARIADB,
                nodes=[],
                created=NOW,
                updated=NOW,
            ),
            "nodes",
        ),
    ],
)
def test_invalid_field_is_refused_by_name(build: Callable[[], BaseModel], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert any(loc == field or loc.startswith(field + ".") for loc in field_errors(caught.value))
    assert field.split(".", maxsplit=1)[0] in str(caught.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_backup(incremental=True, parent_id=None), "parent_id: an incremental"),
        (lambda: make_backup(incremental=False, parent_id=new_id()), "parent_id: a full"),
        (lambda: make_backup(checksum=None), "checksum: required once"),
        (lambda: make_backup(location=None, size_bytes=None), "location, size_bytes: required"),
        (
            lambda: make_instance(replicas=["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"] * 2),
            "replicas: an instance is listed twice",
        ),
        (lambda: ConfigurationParameter(name="x", type="integer", min=10, max=1), "min: 10"),
        (lambda: ConfigurationParameter(name="x", type="string", min=1), "min, max: only"),
        (
            lambda: ConfigurationParameter(name="x", type="string", allowed_values=[]),
            "allowed_values: an empty list",
        ),
        (
            lambda: make_execution(status=ExecutionStatus.RUNNING, output=None),
            "stop_date: must be empty",
        ),
        (
            lambda: make_execution(status=ExecutionStatus.FAILED, output=None, stop_date=None),
            "stop_date: required once",
        ),
        (lambda: make_execution(status=ExecutionStatus.FAILED), "output: only a SUCCEEDED"),
        (lambda: make_heartbeat(disk_used_bytes=101), "disk_used_bytes: 101 exceeds"),
        (
            lambda: make_heartbeat(replication={"role": "primary", "source_instance_id": new_id()}),
            "source_instance_id: only a replica",
        ),
        (lambda: make_command(deadline=NOW), "deadline: must be later"),
        (lambda: make_result(ok=True, error={"type": "X", "message": "y"}), "error: a successful"),
        (lambda: make_result(ok=False, result=None), "error: a failed result must say why"),
        (lambda: make_result(ok=False, error={"type": "X", "message": "y"}), "result: a failed"),
    ],
)
def test_inconsistent_model_is_refused_naming_the_field(
    build: Callable[[], BaseModel], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        build()


def test_replica_set_refuses_primary_among_replicas() -> None:
    primary = new_id()
    with pytest.raises(ValidationError, match="replica_ids: the primary"):
        ReplicaSet(
            id=new_id(),
            project_id="p",
            primary_id=primary,
            replica_ids=[primary],
            created=NOW,
            updated=NOW,
        )


def test_datastore_refuses_two_defaults_and_finds_versions() -> None:
    first = DatastoreVersion(id=new_id(), name="16", version="16.4", default=True)
    second = DatastoreVersion(id=new_id(), name="15", version="15.8", default=True)
    with pytest.raises(ValidationError, match="versions: only one may be the default"):
        Datastore(id=new_id(), name="postgresql", manager="postgresql", versions=[first, second])
    datastore = Datastore(
        id=new_id(),
        name="postgresql",
        manager="postgresql",
        versions=[first, second.replace(default=False)],
    )
    assert datastore.default_version == first
    assert datastore.find_version("15") == second.replace(default=False)
    assert datastore.find_version(first.id) == first
    assert datastore.find_version("9.6") is None


def test_cluster_counts_nodes_per_zone() -> None:
    cluster = Cluster(
        id=new_id(),
        project_id="p",
        name="c",
        datastore=MARIADB,
        created=NOW,
        updated=NOW,
        nodes=[
            ClusterNode(instance_id=new_id(), availability_zone="az1"),
            ClusterNode(instance_id=new_id(), availability_zone="az1"),
            ClusterNode(instance_id=new_id(), availability_zone="az2"),
        ],
    )
    assert cluster.zones() == {"az1": 2, "az2": 1}


# --------------------------------------------------------------------------- secrets
PLAINTEXT = "correct-horse-battery-staple"


def test_user_password_never_reaches_a_dump() -> None:
    user = User(name="app", password=SecretStr(PLAINTEXT), databases=["shop"])
    assert user.password is not None
    assert user.password.get_secret_value() == PLAINTEXT
    assert PLAINTEXT not in user.model_dump_json()
    assert PLAINTEXT not in json.dumps(user.model_dump(mode="json"))
    assert "password" not in user.model_dump()
    assert PLAINTEXT not in repr(user)
    assert PLAINTEXT not in str(user)


def test_user_password_persists_only_sealed() -> None:
    def seal(plaintext: bytes) -> str:  # stands in for the crypto service
        return base64.urlsafe_b64encode(b"\x00" * 28 + plaintext[::-1]).decode()

    user = User(name="app", password=SecretStr(PLAINTEXT)).sealed(seal)
    dumped = user.model_dump_json()
    assert PLAINTEXT not in dumped
    stored = User.model_validate_json(dumped)
    assert stored.password is None
    assert stored.encrypted_password == seal(PLAINTEXT.encode())
    with pytest.raises(ValueError, match="password: there is no password"):
        stored.sealed(seal)


def test_plaintext_secret_keys_are_refused_but_sealed_ones_pass() -> None:
    sealed = make_command(args={"encrypted_password": CIPHERTEXT, "users": [{"password": None}]})
    assert sealed.args["encrypted_password"] == CIPHERTEXT
    with pytest.raises(ValidationError, match=r"'users\[0\]\.db_secret' looks like"):
        make_command(args={"users": [{"db_secret": "x"}]})


# --------------------------------------------------------------------------- Trove's strings
def test_instance_statuses_are_troves() -> None:
    assert {s.value for s in InstanceStatus} == {
        "BUILD", "ACTIVE", "HEALTHY", "BLOCKED", "FAILED", "ERROR", "REBOOT", "RESIZE",
        "BACKUP", "SHUTDOWN", "RESTART_REQUIRED", "PROMOTE", "EJECT", "UPGRADE", "DETACH",
        "LOGGING", "UNKNOWN",
    }  # fmt: skip


def test_service_statuses_map_to_troves_api_strings() -> None:
    expected = {
        "NEW": "NEW", "BUILDING": "BUILD", "INSTANCE_READY": "BUILD", "RUNNING": "ACTIVE",
        "HEALTHY": "HEALTHY", "BLOCKED": "BLOCKED", "PAUSED": "SHUTDOWN",
        "SHUTDOWN": "SHUTDOWN", "CRASHED": "SHUTDOWN", "FAILED": "FAILED",
        "FAILED_TIMEOUT_GUESTAGENT": "ERROR", "PROMOTING": "PROMOTE", "EJECTING": "EJECT",
        "LOGGING": "LOGGING", "RESTART_REQUIRED": "RESTART_REQUIRED",
        "RESTARTING": "RESTARTING", "UPGRADING": "UPGRADING", "DELETED": "DELETED",
        "UNKNOWN": "ERROR",
    }  # fmt: skip
    assert {s.value: s.api_status for s in ServiceStatus} == expected


def test_backup_statuses_are_troves() -> None:
    assert {s.value for s in BackupStatus} == {
        "NEW", "BUILDING", "SAVING", "COMPLETED", "FAILED", "DELETE_FAILED", "RESTORED",
    }  # fmt: skip
    assert {s for s in BackupStatus if s.is_running} == {"NEW", "BUILDING", "SAVING"}


def test_execution_statuses_are_step_functions() -> None:
    assert {s.value for s in ExecutionStatus} == {
        "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE",
    }  # fmt: skip


def test_enums_serialise_as_their_strings() -> None:
    data = json.loads(make_instance().model_dump_json())
    assert data["status"] == "ACTIVE"
    assert data["operating_status"] == "HEALTHY"
    assert data["volume"]["kind"] == "loop"


# --------------------------------------------------------------------------- backup chains
def test_backup_chain_walks_back_to_the_full_backup() -> None:
    full = make_backup()
    first = make_backup(incremental=True, parent_id=full.id)
    second = make_backup(incremental=True, parent_id=first.id)
    by_id = {b.id: b for b in (full, first, second)}
    assert second.chain(by_id.get) == [full, first, second]
    assert full.chain(by_id.get) == [full]


def test_backup_chain_with_missing_parent_is_broken() -> None:
    lost = new_id()
    orphan = make_backup(incremental=True, parent_id=lost)
    with pytest.raises(BackupChainError, match=f"parent '{lost}'.*does not exist"):
        orphan.chain(lambda _id: None)


def test_backup_chain_loop_is_broken() -> None:
    a_id, b_id = new_id(), new_id()
    a = make_backup(id=a_id, incremental=True, parent_id=b_id)
    b = make_backup(id=b_id, incremental=True, parent_id=a_id)
    by_id = {a_id: a, b_id: b}
    with pytest.raises(BackupChainError, match="a loop"):
        a.chain(by_id.get)


def test_backup_chain_refuses_a_lookup_returning_the_wrong_backup() -> None:
    other = make_backup()
    child = make_backup(incremental=True, parent_id=new_id())
    with pytest.raises(BackupChainError, match="looked up"):
        child.chain(lambda _id: other)


# --------------------------------------------------------------------------- signatures
def test_canonical_json_is_sorted_compact_and_unsigned() -> None:
    heartbeat = make_heartbeat(agent_version="0.1.0-é").sign(SECRET)
    raw = canonical_json(heartbeat)
    assert raw == heartbeat.canonical_json()
    text = raw.decode("utf-8")
    assert "signature" not in text
    assert " " not in text and "\n" not in text
    assert "0.1.0-é" in text
    decoded = json.loads(text)
    assert list(decoded) == sorted(decoded)
    assert list(decoded["replication"]) == sorted(decoded["replication"])
    # The same message built in another field order has the same canonical bytes.
    reordered = Heartbeat(**dict(reversed(list(heartbeat.model_dump().items()))))
    assert canonical_json(reordered) == raw


@pytest.mark.parametrize(
    "message", [make_command(), make_result(), make_heartbeat()], ids=sample_id
)
def test_signed_messages_verify_and_tampering_fails(message: GuestCommand) -> None:
    signed = message.sign(SECRET)
    assert signed.signature is not None and len(signed.signature) == 64
    assert signed.verify(SECRET)
    assert not message.verify(SECRET)  # unsigned
    assert not signed.verify(OTHER_SECRET)
    assert not signed.replace(sequence=signed.sequence + 1).verify(SECRET)
    assert not signed.replace(instance_id=new_id()).verify(SECRET)
    assert not signed.replace(timestamp=NOW + timedelta(microseconds=1)).verify(SECRET)
    forged = "0" * 64 if signed.signature != "0" * 64 else "1" * 64
    assert not signed.replace(signature=forged).verify(SECRET)


def test_tampered_wire_bytes_fail_verification() -> None:
    signed = make_command(args={"databases": [{"name": "shop"}]}).sign(SECRET)
    wire = signed.model_dump_json().replace('"shop"', '"shap"')
    received = parse_guest_message(wire)
    assert isinstance(received, GuestCommand)
    assert received.args == {"databases": [{"name": "shap"}]}
    assert not received.verify(SECRET)


def test_signature_cannot_move_to_another_kind_of_message() -> None:
    heartbeat = make_heartbeat().sign(SECRET)
    data = heartbeat.model_dump(mode="json")
    data["kind"] = "result"
    with pytest.raises(ValidationError):
        parse_guest_message(data)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret: at least 32 bytes"):
        make_heartbeat().sign(b"short")


def test_parse_guest_message_picks_the_kind() -> None:
    for message in (make_command(), make_result(), make_heartbeat()):
        parsed = parse_guest_message(message.model_dump_json().encode())
        assert type(parsed) is type(message)
        assert parsed == message
    with pytest.raises(ValidationError, match="kind"):
        parse_guest_message({"kind": "gossip", "instance_id": new_id()})


def test_command_expiry() -> None:
    command = make_command()
    assert command.deadline is not None
    assert not command.is_expired(NOW)
    assert command.is_expired(command.deadline)
    assert not make_command(deadline=None).is_expired(NOW + timedelta(days=365))


def test_real_ciphertexts_are_accepted_as_encrypted_blobs() -> None:
    fernet_token = Fernet(Fernet.generate_key()).encrypt(b"pw").decode()
    nonce = os.urandom(12)
    gcm = base64.b64encode(nonce + AESGCM(AESGCM.generate_key(128)).encrypt(nonce, b"", None))
    for blob in (fernet_token, gcm.decode()):
        user = User(name="app", encrypted_password=blob)
        assert User.model_validate_json(user.model_dump_json()).encrypted_password == blob
