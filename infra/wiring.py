"""Composition root: builds the functions' Runtime for a profile from Settings.

The local profile is wired here, the aws profile (S3, SQS, EC2, Step Functions) in
infra/aws/wiring.py, the openstack profile in infra/openstack/wiring.py: its embedded cloud
(Swift, Zaqar, local compute) and its cloud runtime (Swift, Zaqar, Nova + Cinder, Keystone).
`build_embedded` is what `troveless up` runs on, for either the local or the openstack profile.
"""

from __future__ import annotations

import base64
import importlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from functions.runtime import Runtime
from infra.local.cloud import EmbeddedCloud, LocalCloud
from shared.adapters.local.workflows import EngineWorkflows
from shared.engine.durable import DurableDriver
from shared.engine.errors import UnknownResourceError
from shared.engine.invoker import InProcessInvoker, lookup_names
from shared.engine.service import ExecutionService
from shared.errors import TrovelessError
from shared.ports import FlavorSpec
from shared.settings import Profile, Settings

FUNCTIONS_PACKAGE = "functions"
MASTER_KEY_FILE = "master.key"


class WiringError(TrovelessError):
    """A profile cannot be wired (missing adapter or setting); the message says which."""


class FunctionsInvoker(InProcessInvoker):
    """Resolves `fn:module.function` to `functions.module.function`, imported on first use."""

    def resolve(self, resource: str) -> tuple[Callable[..., Any], bool]:
        try:
            return super().resolve(resource)
        except UnknownResourceError:
            pass
        for name in lookup_names(resource):
            bare = name.removeprefix("fn:")
            module_name, _, attr = bare.rpartition(".")
            if not module_name or name.startswith("arn:"):
                continue
            try:
                module = importlib.import_module(f"{FUNCTIONS_PACKAGE}.{module_name}")
            except ModuleNotFoundError:
                continue
            function = getattr(module, attr, None)
            if callable(function):
                self.register(resource, function)
                return super().resolve(resource)
        raise UnknownResourceError(resource)


def cloud_flavors_by_spec(
    settings: Settings, given: Mapping[str, str], variable: str, kind: str
) -> dict[FlavorSpec, str]:
    """A cloud's flavors (`kind`: "Nova flavors", "instance types"), `given` per troveless
    flavor name in `variable`, keyed by resources (ram_mb, vcpus) as the compute adapters
    look them up. Unknown names, and two flavors of the same resources given different cloud
    flavors, are refused naming `variable`."""
    flavors = {flavor.name: flavor for flavor in settings.flavors}
    unknown = sorted(set(given) - set(flavors))
    if unknown:
        raise WiringError(
            f"{variable}: unknown flavors {unknown} (the flavors are {sorted(flavors)})"
        )
    by_spec: dict[FlavorSpec, str] = {}
    for name, cloud_flavor in given.items():
        spec = FlavorSpec.of(flavors[name])
        if by_spec.get(spec, cloud_flavor) != cloud_flavor:
            raise WiringError(
                f"{variable}: flavors with {spec.ram_mb} MiB and {spec.vcpus} vCPUs are given "
                f"different {kind}"
            )
        by_spec[spec] = cloud_flavor
    return by_spec


def local_master_key(data_dir: Path) -> bytes:
    """The local profile's master key: created once (0600) beside the data it protects."""
    path = data_dir / MASTER_KEY_FILE
    try:
        return base64.b64decode(path.read_text().strip(), validate=True)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode())
    return key


def master_key(settings: Settings) -> bytes:
    if settings.master_key is not None:
        try:
            key = base64.b64decode(settings.master_key.get_secret_value(), validate=True)
        except ValueError:
            raise WiringError("master_key (TROVELESS_MASTER_KEY): not base64") from None
        if len(key) != 32:
            raise WiringError("master_key (TROVELESS_MASTER_KEY): must decode to 32 bytes")
        return key
    if settings.profile is Profile.LOCAL or _one_machine_openstack(settings):
        return local_master_key(settings.data_dir)
    raise WiringError("master_key (TROVELESS_MASTER_KEY) is required outside the local profile")


def _one_machine_openstack(settings: Settings) -> bool:
    """The openstack profile with local compute: one machine, like the local profile."""
    openstack = settings.openstack
    return (
        settings.profile is Profile.OPENSTACK
        and openstack is not None
        and openstack.compute.value == "local"
    )


def build_local(settings: Settings) -> tuple[Runtime, LocalCloud, DurableDriver]:
    """The embedded cloud's runtime, plus the pieces `troveless up` drives (queue triggers)."""
    cloud = LocalCloud.from_settings(settings)
    runtime, driver = _embedded_runtime(settings, cloud)
    return runtime, cloud, driver


def build_embedded(settings: Settings) -> tuple[Runtime, EmbeddedCloud, DurableDriver]:
    """`build_local` for the profile chosen: local adapters, or Swift + Zaqar (openstack)."""
    if settings.profile is Profile.LOCAL:
        return build_local(settings)
    if settings.profile is Profile.OPENSTACK:
        from infra.openstack.wiring import openstack_cloud, token_validator

        cloud = openstack_cloud(settings)
        try:
            runtime, driver = _embedded_runtime(settings, cloud)
            # api_auth keystone: callers bring Keystone tokens even on one machine.
            runtime.token_validator = token_validator(settings, cloud.clock)
        except BaseException:
            cloud.close()
            raise
        return runtime, cloud, driver
    raise WiringError(f"profile {settings.profile.value!r} has no embedded cloud")


def _embedded_runtime(settings: Settings, cloud: EmbeddedCloud) -> tuple[Runtime, DurableDriver]:
    driver = DurableDriver(cloud.state, cloud.queue, FunctionsInvoker(), cloud.clock)
    workflows = EngineWorkflows(ExecutionService(driver), settings.state_machines_dir)
    runtime = Runtime(
        settings=settings,
        clock=cloud.clock,
        store=cloud.state,
        blobs=cloud.blobs,
        queue=cloud.queue,
        compute=cloud.compute,
        workflows=workflows,
        master_key=master_key(settings),
    )
    return runtime, driver


def build_runtime(settings: Settings) -> Runtime:
    # Cloud profiles are imported only when chosen: a local run needs none of their SDKs.
    if settings.profile is Profile.LOCAL:
        return build_local(settings)[0]
    if settings.profile is Profile.AWS:
        from infra.aws.wiring import build_aws

        return build_aws(settings)
    if settings.profile is Profile.OPENSTACK:
        # Nova: the cloud runtime (no data dir, no local compute); local: the embedded form.
        if settings.openstack is not None and not _one_machine_openstack(settings):
            from infra.openstack.wiring import build_openstack

            return build_openstack(settings)
        return build_embedded(settings)[0]
    raise WiringError(f"profile {settings.profile.value!r} is not wired yet")
