"""`GET /instances` bodies: the same JSON as rendering every view, with each unchanged
instance rendered once per process."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from functions import instance_list_views
from functions.trove_views import ApiUrls, instance_view
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance, InstanceStatus
from shared.models.volume import Volume, VolumeKind

PROJECT = "0123456789abcdef0123456789abcdef"
URLS = ApiUrls("http://api.test:8779", PROJECT)


def an_instance(n: int) -> Instance:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Instance(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        name=f"db-{n}",
        flavor_id="1",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="redis", version="7.0"),
        created=now,
        updated=now,
    )


@pytest.mark.parametrize("detail", [False, True])
def test_the_body_is_every_view_in_order(detail: bool) -> None:
    instances = [an_instance(n) for n in range(3)]
    body = instance_list_views.instance_list_body(instances, URLS, "R1", detail=detail)
    expected = [instance_view(i, URLS, "R1", detail=detail) for i in instances]
    assert json.loads(body) == {"instances": expected}


def test_unchanged_instances_are_rendered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[str] = []

    def counting_view(instance: Instance, urls: ApiUrls, region: str, *, detail: bool) -> dict:
        rendered.append(instance.name)
        return instance_view(instance, urls, region, detail=detail)

    monkeypatch.setattr(instance_list_views, "instance_view", counting_view)
    first, second = an_instance(1), an_instance(2)
    instance_list_views.instance_list_body([first, second], URLS, "R1", detail=False)
    changed = second.replace(status=InstanceStatus.ACTIVE)  # a new copy: rendered again
    body = instance_list_views.instance_list_body([first, changed], URLS, "R1", detail=False)
    assert rendered == ["db-1", "db-2", "db-2"]
    assert [v["status"] for v in json.loads(body)["instances"]] == ["BUILD", "ACTIVE"]
    other_host = ApiUrls("http://other:1", PROJECT)  # links differ: rendered for that host
    instance_list_views.instance_list_body([first], other_host, "R1", detail=False)
    assert rendered[-1] == "db-1"
