"""infra/openstack/heat.yaml is a HOT template Heat would accept: known resource types with
their own properties, and every reference (parameter, resource, attribute, condition) resolves.
(That it names the wiring's queues is tests/integration/test_openstack_deployment.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from shared.settings import REPO_ROOT

HEAT = REPO_ROOT / "infra" / "openstack" / "heat.yaml"
# Heat's resource types used here, with their properties and attributes (Heat's resource
# type reference, Rocky onwards).
KNOWN_TYPES: dict[str, tuple[set[str], set[str]]] = {
    "OS::Zaqar::Queue": ({"name", "metadata"}, {"queue_id", "href"}),
    "OS::Zaqar::Subscription": ({"queue_name", "subscriber", "ttl", "options"}, set()),
    "OS::Swift::Container": (
        {
            "name",
            "PurgeOnDelete",
            "X-Account-Meta",
            "X-Container-Meta",
            "X-Container-Read",
            "X-Container-Write",
        },
        {"DomainName", "WebsiteURL", "RootURL", "ObjectCount", "BytesUsed", "HeadContainer"},
    ),
}
HOT_VERSIONS = {"2016-10-14", "2017-02-24", "2017-09-01", "2018-03-02", "2018-08-31"}
RESOURCE_KEYS = {"type", "properties", "deletion_policy", "depends_on", "condition", "metadata"}


def _template() -> dict[str, Any]:
    loaded = yaml.safe_load(HEAT.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _intrinsics(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("get_") or key in ("equals", "not"):
                yield key, value
            yield from _intrinsics(value)
    elif isinstance(node, list):
        for item in node:
            yield from _intrinsics(item)


def test_template_parses_as_hot() -> None:
    template = _template()
    assert str(template["heat_template_version"]) in HOT_VERSIONS
    assert set(template) <= {
        "heat_template_version",
        "description",
        "parameters",
        "parameter_groups",
        "conditions",
        "resources",
        "outputs",
    }
    for name, parameter in template["parameters"].items():
        assert parameter["type"] in {"string", "number", "boolean", "json", "comma_delimited_list"}
        assert "default" in parameter, f"{name}: every parameter has a default"


def test_only_known_resource_types_and_properties() -> None:
    for name, resource in _template()["resources"].items():
        assert resource["type"] in KNOWN_TYPES, name
        properties, _ = KNOWN_TYPES[resource["type"]]
        assert set(resource) <= RESOURCE_KEYS, name
        assert set(resource.get("properties", {})) <= properties, name


def test_every_reference_resolves() -> None:
    template = _template()
    resources, parameters = template["resources"], template["parameters"]
    conditions = template.get("conditions", {})
    for function, argument in _intrinsics(template):
        if function == "get_param":
            assert argument in parameters
        elif function == "get_resource":
            assert argument in resources
        elif function == "get_attr":
            resource, attribute = argument
            assert attribute in KNOWN_TYPES[resources[resource]["type"]][1]
    for resource in resources.values():
        if "condition" in resource:
            assert resource["condition"] in conditions


def test_tenant_data_outlives_the_stack() -> None:
    for name, resource in _template()["resources"].items():
        if resource["type"] in ("OS::Swift::Container", "OS::Zaqar::Queue"):
            assert resource.get("deletion_policy") == "Retain", name
        if resource["type"] == "OS::Swift::Container":
            assert resource["properties"]["PurgeOnDelete"] is False
