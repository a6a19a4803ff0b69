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
#   TROVELESS_ENGINE_STEPS_WEBHOOK     (optional: URL of the engine-steps function's webhook;
#                                       Zaqar rings it when a step is posted to engine-steps)
#   TROVELESS_ENGINE_STEPS_FUNCTION    (optional: the engine-steps function's name or id; a
#                                       Qinling job runs it every minute, the backstop that
#                                       runs the steps a lost push left; made once)
#   OPENSTACK                          (optional: the openstack command to run)
set -euo pipefail

openstack_cli=${OPENSTACK:-openstack}
state_container=${TROVELESS_STATE_CONTAINER:-troveless-state}
backups_container=${TROVELESS_BACKUPS_CONTAINER:-troveless-backups}
guest_events_max_receives=${TROVELESS_GUEST_EVENTS_MAX_RECEIVES:-5}
engine_steps_max_receives=${TROVELESS_ENGINE_STEPS_MAX_RECEIVES:-50}
guest_events_webhook=${TROVELESS_GUEST_EVENTS_WEBHOOK:-}
engine_steps_webhook=${TROVELESS_ENGINE_STEPS_WEBHOOK:-}
engine_steps_function=${TROVELESS_ENGINE_STEPS_FUNCTION:-}
# infra/openstack/deployment.py's ENGINE_STEPS_JOB and ENGINE_STEPS_PATTERN
engine_steps_job=troveless-engine-steps
engine_steps_pattern='* * * * *'

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

if [[ -n $engine_steps_webhook ]]; then
    "$openstack_cli" messaging subscription create engine-steps "$engine_steps_webhook" 31536000 \
        >/dev/null
    echo "subscription engine-steps -> $engine_steps_webhook"
fi

if [[ -n $engine_steps_function ]]; then
    # Jobs have no unique name in Qinling: look for ours before making another (grep reads
    # the whole listing: with pipefail, a listing cut short by SIGPIPE would count as none).
    if "$openstack_cli" job list -f value -c Name | grep -xF "$engine_steps_job" >/dev/null; then
        echo "job $engine_steps_job: exists"
    else
        "$openstack_cli" job create "$engine_steps_function" --name "$engine_steps_job" \
            --pattern "$engine_steps_pattern" >/dev/null
        echo "job $engine_steps_job: $engine_steps_function every minute"
    fi
fi
