#!/usr/bin/env bash
# Create the Zaqar queues and Swift containers troveless needs, with the `openstack` CLI
# (python-openstackclient with python-zaqarclient's `messaging` commands). The plain-script
# alternative to heat.yaml: the same names and queue metadata. Safe to run again: creating an
# existing queue or container changes nothing, and the metadata is set to the same values.
#
# Credentials come the usual way (OS_CLOUD, or the OS_* variables). Settings:
#   TROVELESS_STATE_CONTAINER          (default troveless-state)
#   TROVELESS_BACKUPS_CONTAINER        (default troveless-backups)
#   TROVELESS_GUEST_EVENTS_MAX_RECEIVES (default 5, settings.queue_max_receives)
#   TROVELESS_ENGINE_STEPS_MAX_RECEIVES (default 50, the engine's own)
#   TROVELESS_GUEST_EVENTS_WEBHOOK     (optional: URL Zaqar pushes guest events to)
#   OPENSTACK                          (optional: the openstack command to run)
set -euo pipefail

openstack_cli=${OPENSTACK:-openstack}
state_container=${TROVELESS_STATE_CONTAINER:-troveless-state}
backups_container=${TROVELESS_BACKUPS_CONTAINER:-troveless-backups}
guest_events_max_receives=${TROVELESS_GUEST_EVENTS_MAX_RECEIVES:-5}
engine_steps_max_receives=${TROVELESS_ENGINE_STEPS_MAX_RECEIVES:-50}
guest_events_webhook=${TROVELESS_GUEST_EVENTS_WEBHOOK:-}

for number in "$guest_events_max_receives" "$engine_steps_max_receives"; do
    if ! [[ $number =~ ^[1-9][0-9]*$ ]]; then
        echo "bootstrap: max receives must be a positive integer, got '$number'" >&2
        exit 2
    fi
done

# queue NAME [MAX_RECEIVES DEAD_LETTER_QUEUE]: create it and set the metadata the Zaqar
# adapter expects (its marker; a 1 s default delay so per-message delays are allowed).
queue() {
    local name=$1 metadata='{"troveless_queue": 1, "_default_message_delay": 1'
    if [[ $# -eq 3 ]]; then
        metadata+=", \"_max_claim_count\": $2, \"_dead_letter_queue\": \"$3\""
    fi
    metadata+='}'
    "$openstack_cli" messaging queue create "$name" >/dev/null
    "$openstack_cli" messaging queue set metadata "$name" "$metadata"
    echo "queue $name: $metadata"
}

# Dead-letter queues first: a queue names its dead-letter queue.
queue guest-events-dlq
queue guest-events "$guest_events_max_receives" guest-events-dlq
queue engine-steps-dead
queue engine-steps "$engine_steps_max_receives" engine-steps-dead

for container in "$state_container" "$backups_container"; do
    "$openstack_cli" container create "$container" >/dev/null
    echo "container $container"
done

if [[ -n $guest_events_webhook ]]; then
    "$openstack_cli" messaging subscription create guest-events "$guest_events_webhook" 31536000 \
        >/dev/null
    echo "subscription guest-events -> $guest_events_webhook"
fi
