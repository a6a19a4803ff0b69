"""What an OpenStack deployment of troveless needs before its functions run: the Swift
containers the state and backup stores live in. (The queues are the wiring's own: the
guest-events queue of `shared.services.guest_channel` and the engine's steps queue of
`shared.engine.durable`, each with its dead-letter queue.) The OpenStack wiring and
infra/openstack/heat.yaml and bootstrap.sh use these names; tests/unit/infra checks they agree.
"""

from __future__ import annotations

STATE_CONTAINER = "troveless-state"  # StateStore records and leases
BACKUPS_CONTAINER = "troveless-backups"  # BlobStore: backups (SLO segments beside them), logs
