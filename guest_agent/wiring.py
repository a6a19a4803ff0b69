"""The agent's composition root: the Queue, BlobStore and datastore manager its user-data names.

Like `infra/`, this is the one place in the agent that imports concrete adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guest_agent.datastores import DatastoreManager, manager_for
from guest_agent.user_data import (
    AgentConfig,
    AwsBackends,
    GuestKeystone,
    OpenStackBackends,
    UserDataError,
)
from shared.ports import BlobStore, Clock, Queue
from shared.settings import Profile


@dataclass(frozen=True)
class Backends:
    queue: Queue
    blobs: BlobStore


def build_backends(config: AgentConfig, clock: Clock) -> Backends:
    """Queue and BlobStore adapters for the user-data's profile."""
    user_data = config.user_data
    if user_data.profile is Profile.LOCAL:
        from shared.adapters.local.blob_store import DirectoryBlobStore
        from shared.adapters.local.sqlite_queue import SqliteQueue

        local = user_data.local
        if local is None:  # the model refuses this already; keep mypy and readers sure
            raise UserDataError("local: the local profile needs queue_path and blob_dir")
        return Backends(
            queue=SqliteQueue(local.queue_path, clock),
            blobs=DirectoryBlobStore(local.blob_dir, clock=clock),
        )
    if user_data.profile is Profile.OPENSTACK:
        openstack = user_data.openstack
        if openstack is None:  # refused by the model already, as for local
            raise UserDataError(
                "openstack: the openstack profile needs its Zaqar and Swift section"
            )
        return _openstack_backends(openstack)
    if user_data.profile is Profile.AWS:
        aws = user_data.aws
        if aws is None:  # refused by the model already, as for local
            raise UserDataError("aws: the aws profile needs its SQS and S3 section")
        return _aws_backends(aws)
    raise UserDataError(f"profile: the guest agent has no {user_data.profile.value} backends")


def _openstack_backends(openstack: OpenStackBackends) -> Backends:
    """Zaqar and Swift: by the guests' application credential (Nova), or noauth + v1 (one
    machine)."""
    from zaqarclient.queues.v2 import client as zaqar_client

    from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
    from shared.adapters.openstack.zaqar_queue import ZaqarQueue

    session = None
    if openstack.keystone is not None:
        session, object_store = _keystone_object_store(openstack.keystone)
    else:
        from shared.adapters.openstack.swift_client import SwiftError, tempauth_connection

        assert openstack.swift_auth_url is not None and openstack.swift_user is not None
        assert openstack.swift_key is not None  # the model checked the v1 form is complete
        try:
            object_store = tempauth_connection(
                openstack.swift_auth_url,
                openstack.swift_user,
                openstack.swift_key.get_secret_value(),
            ).object_store
        except (SwiftError, OSError) as exc:  # the message names the URL, never the key
            raise UserDataError(f"openstack: cannot reach Swift: {exc}") from None
    if openstack.zaqar_url is not None:
        zaqar = zaqar_client.Client(
            openstack.zaqar_url,
            version=2,
            conf={
                "auth_opts": {
                    "backend": "noauth",
                    "options": {"os_project_id": openstack.zaqar_project_id},
                }
            },
        )
    else:
        assert session is not None and openstack.keystone is not None
        zaqar = zaqar_client.Client(
            _endpoint(session, openstack.keystone, "messaging"), version=2, session=session
        )
    return Backends(
        queue=ZaqarQueue(zaqar, poll_interval=openstack.queue_poll_interval),
        # The control plane made the container; the guest may only write objects into it.
        blobs=SwiftBlobStore(object_store, openstack.backups_container, create_container=False),
    )


def _aws_backends(aws: AwsBackends) -> Backends:
    """SQS and S3 as the control plane's wiring (infra/aws/wiring.py) makes them, so queue
    names and object keys are the same. Credentials: boto3's default chain (the instance
    profile on EC2); they are looked up on first use, and a guest whose profile is not ready
    yet logs failed heartbeats and keeps trying rather than exiting."""
    import boto3
    from botocore.config import Config

    from shared.adapters.aws.s3_blob_store import S3BlobStore
    from shared.adapters.aws.s3_client import make_s3_client
    from shared.adapters.aws.sqs_queue import SqsQueue

    sqs = boto3.client(
        "sqs",
        endpoint_url=aws.endpoint_url,
        config=Config(region_name=aws.region, retries={"mode": "standard", "max_attempts": 5}),
    )
    s3 = make_s3_client(aws.endpoint_url, region=aws.region)
    return Backends(
        queue=SqsQueue(sqs, aws.queue_prefix),
        # The stack made the bucket; the guest's role may only use objects under the prefix.
        blobs=S3BlobStore(s3, aws.bucket, aws.blob_prefix, create_bucket=False),
    )


def _keystone_object_store(keystone: GuestKeystone) -> tuple[Any, Any]:
    """The guest's Keystone session (its application credential) and Swift through it."""
    from keystoneauth1 import exceptions as ksa_exceptions
    from keystoneauth1 import session as ksa_session
    from keystoneauth1.identity import v3
    from openstack.connection import Connection
    from openstack.exceptions import SDKException

    auth = v3.ApplicationCredential(
        auth_url=keystone.auth_url,
        application_credential_id=keystone.application_credential_id,
        application_credential_secret=keystone.application_credential_secret.get_secret_value(),
    )
    session = ksa_session.Session(auth=auth)
    connection = Connection(
        session=session, region_name=keystone.region_name, interface=keystone.interface
    )
    try:
        return session, connection.object_store  # logs in and finds Swift in the catalog
    except (ksa_exceptions.ClientException, SDKException) as exc:  # never shows the secret
        raise UserDataError(
            f"openstack: cannot reach Swift through {keystone.auth_url}: {type(exc).__name__}"
        ) from None


def _endpoint(session: Any, keystone: GuestKeystone, service_type: str) -> str:
    from keystoneauth1 import exceptions as ksa_exceptions

    try:
        url = session.get_endpoint(
            service_type=service_type,
            interface=keystone.interface,
            region_name=keystone.region_name,
        )
    except ksa_exceptions.ClientException as exc:  # names the URL, never the secret
        raise UserDataError(f"openstack: cannot log in to {keystone.auth_url}: {exc}") from None
    if not url:
        raise UserDataError(f"openstack: the guest's catalog has no {service_type} endpoint")
    return str(url)


def build_manager(config: AgentConfig) -> DatastoreManager:
    """The datastore manager for the instance's datastore, on its volume and address."""
    manager_class = manager_for(config.user_data.datastore_type.value)
    return manager_class(
        config.volume_path,
        config.address,
        run_as=config.user_data.run_as,
        ram_mb=config.ram_mb,
        port=config.port,
    )


def close_backends(backends: Backends) -> None:
    """Release what the adapters hold open (database connections)."""
    close = getattr(backends.queue, "close", None)
    if callable(close):
        close()
