"""User-data sections a compute adapter adds to every guest it makes.

The wiring tells an adapter how its guests reach their queues and blob store (`openstack`,
`aws`: user-data sections the agent reads, guest_agent/user_data.py); the adapter adds them
when it makes the server, so what they hold (a guest credential) never passes through the
engine or the state store.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.ports import JSON


def with_guest_sections(user_data: JSON, sections: Mapping[str, JSON]) -> JSON:
    """`user_data` with `sections` added; user-data that is not a JSON object is returned as
    it is (the adapter refuses it and says why)."""
    if sections and isinstance(user_data, dict):
        return {**user_data, **sections}
    return user_data
