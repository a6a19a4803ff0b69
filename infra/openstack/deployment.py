"""What an OpenStack deployment of troveless needs before its functions run: the Swift
containers the state and backup stores live in. (The queues are the wiring's own: the
guest-events queue of `shared.services.guest_channel` and the engine's steps queue of
`shared.engine.durable`, each with its dead-letter queue.) The OpenStack wiring and
infra/openstack/heat.yaml and bootstrap.sh use these names; tests/unit/infra checks they agree.
"""

from __future__ import annotations

STATE_CONTAINER = "troveless-state"  # StateStore records and leases
BACKUPS_CONTAINER = "troveless-backups"  # BlobStore: backups (SLO segments beside them), logs

# The engine's step worker (functions/engine_steps.py) on Qinling: its function name as
# docs/openstack.md creates it, and the job that runs it every minute as the backstop for a
# lost Zaqar push (bootstrap.sh creates the job; the push is the engine queue's subscription).
ENGINE_STEPS_FUNCTION = "troveless-engine-steps"
ENGINE_STEPS_JOB = "troveless-engine-steps"
ENGINE_STEPS_PATTERN = "* * * * *"
SUBSCRIPTION_TTL_SECONDS = 31536000  # a year: Zaqar subscriptions expire; re-run to renew
