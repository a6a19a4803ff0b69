"""The durable driver: executions as records in the StateStore, steps as queue messages.

Storage (StateStore keys):

    executions/<state machine>/<execution>      the execution record (compare-and-swap)
        {"version", "definition": digest, "state": ExecutionState, "pending_events": [...],
         "chunks": [[first_id, last_id], ...]}
    execution-history/<state machine>/<execution>/<first>-<last>   immutable history pages
    state-machine-definitions/<digest>          definitions, by content
    idempotency/<execution>/<run>               task-attempt claims and outcomes, one record
                                                per run (idempotency.py); the local wiring
                                                keeps them in a second store without fsync

New history events ride in the record (`pending_events`) and are moved to an immutable page once
there are FLUSH_EVENTS of them, so a step costs one compare-and-swap, and one page write now and
then. A page is written *before* the record that lists it; event ids are assigned only by a
successful compare-and-swap, so the page for ids a..b has the same content whoever writes it,
and a page whose record write then lost its race is an unlisted orphan that no reader looks at.

Queue `engine-steps` carries two kinds of message:

    {"kind": "event",  "execution": key, "event": {...}}     apply one event (begin, timer...)
    {"kind": "invoke", "execution": key, "run": r, "wait": w} call the task run r waits on (w)

Processing a message: load the record, apply the event with the pure core, write the record
back by compare-and-swap (on conflict: reload and apply again — the core is deterministic given
the record), then perform the effects: send `invoke` messages, send timer events as delayed
messages (a Wait state holds no worker), and then acknowledge the message. One task effect may
be run *inline* by the same worker right away (saving a queue round trip); the rest go to the
queue so other workers run them in parallel. A worker that receives several `invoke` messages
of one execution in one batch (a Map's items) runs those tasks one after another and applies
all their outcomes in a single compare-and-swap: a fan-out does not rewrite its (large) record
once per item.

Why a worker killed (SIGKILL) at any point loses nothing and repeats no side effect:

- *Before the record write*: nothing was stored; the message (or the whole batch) is
  redelivered after its visibility timeout and processed from the start. Tasks it already ran
  return their recorded outcomes (next point) instead of running again.
- *After the record write, before the effects were sent* (or halfway through sending them):
  the redelivered message finds its event already applied — the wait it answers is gone, so the
  core reports it *stale*. A stale message that is a redelivery (receive count > 1) makes the
  worker *reconcile*: it re-derives every effect the stored state is waiting on
  (`Interpreter.pending_effects`: tasks not yet invoked, timers not yet fired) and sends them
  all again. Duplicates are harmless: an event for a wait that has ended is stale, and a timer
  that fires early re-arms itself. A first delivery that is stale (a duplicate some reconcile
  sent) is simply acknowledged, so duplicates never multiply.
- *After invoking a task, before recording its result*: the `invoke` message is redelivered and
  the task is invoked again with the *same idempotency key* (execution, state, entry, attempt).
  The idempotency guard (idempotency.py) claims an attempt before calling and records its
  outcome after, so the redelivery gets the recorded outcome without calling the function
  again; a duplicate that arrives while the attempt runs elsewhere waits for the claim. Only if
  the worker died *inside* the function does it run again (once the claim expires), with the
  same key — a function whose effect must happen once keys that effect on the key; nothing
  weaker is possible for an at-least-once queue.
- *Inline task chains*: the message being processed stays unacknowledged; if the worker dies,
  its redelivery is stale and reconciles, which re-sends `invoke` messages for the pending task.
- *Between sending a start's record and its `begin` message*: `start` with the same name again
  re-sends `begin` (starting is idempotent), and `recover()` re-sends the pending effects of
  every running execution (what a worker does at start-up).

A message that keeps failing for another reason (a store outage) is redelivered until the
queue's receive limit moves it to the dead-letter queue `engine-steps-dead`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from shared.engine import core, errors
from shared.engine.core import (
    ExecutionFinished,
    ExecutionState,
    Interpreter,
    InvokeTask,
    ScheduleTimer,
    Step,
)
from shared.engine.definition import Definition, load_definition
from shared.engine.idempotency import (
    Outcome,
    StaleAttemptError,
    TaskIdempotency,
    TaskInProgressError,
)
from shared.engine.invoker import ContextInvoker, TaskContext, describe_exception
from shared.engine.memory import json_copy
from shared.engine.names import split_execution_arn
from shared.errors import ConflictError
from shared.models.base import reject_plaintext_secrets
from shared.observability import get_logger
from shared.ports import Clock, Invoker, Message, Queue, StateStore

QUEUE = "engine-steps"
DEAD_LETTER_QUEUE = "engine-steps-dead"
RECORD_VERSION = 1
FLUSH_EVENTS = 100
MAX_DELAY_SECONDS = 900.0  # SQS's limit; longer timers re-arm themselves when they fire early
MAX_CAS_ATTEMPTS = 200
EXECUTIONS = "executions"
HISTORY = "execution-history"
DEFINITIONS = "state-machine-definitions"

log = get_logger("engine")

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}$")


def key_segment(name: str) -> str:
    """A store-key segment for a state machine or execution name (names allow characters keys
    do not; those are replaced by a digest — the record keeps the real name)."""
    if _SAFE_SEGMENT.fullmatch(name) and ".." not in name:
        return name
    return "h." + hashlib.sha256(name.encode("utf-8")).hexdigest()[:40]


def execution_key(state_machine: str, name: str) -> str:
    return f"{EXECUTIONS}/{key_segment(state_machine)}/{key_segment(name)}"


def key_for_arn(arn: str) -> str | None:
    parts = split_execution_arn(arn)
    return execution_key(*parts) if parts is not None else None


class PlaintextSecretError(ValueError):
    """A value bound for the store carries a plaintext secret."""


def check_secret_free(value: Any, what: str) -> None:
    try:
        reject_plaintext_secrets(value)
    except ValueError as exc:
        raise PlaintextSecretError(f"{what}: {exc}") from None


@dataclass
class LoadedExecution:
    key: str
    revision: int
    state: ExecutionState
    definition: Definition
    data: dict[str, Any]


CrashHook = Callable[[str], None]


class DurableDriver:
    """Applies events to stored executions and performs their effects through the queue."""

    def __init__(
        self,
        store: StateStore,
        queue: Queue,
        invoker: Invoker | ContextInvoker,
        clock: Clock,
        *,
        queue_name: str = QUEUE,
        visibility_timeout: float = 30.0,
        max_receives: int = 50,
        idempotency: TaskIdempotency | None = None,
        inline_seconds: float | None = None,
        crash_hook: CrashHook | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.invoker = invoker
        self.clock = clock
        self.queue_name = queue_name
        self.visibility_timeout = visibility_timeout
        self.idempotency = idempotency if idempotency is not None else TaskIdempotency(store, clock)
        # Inline task chains stop well before the message's claim runs out.
        self.inline_seconds = visibility_timeout / 3 if inline_seconds is None else inline_seconds
        self.crash_hook = crash_hook
        self._definitions: dict[str, Definition] = {}
        # Per worker thread: the record this thread wrote last, for the inline task after it.
        self._local = threading.local()
        queue.ensure_queue(DEAD_LETTER_QUEUE)
        queue.ensure_queue(
            queue_name, max_receives=max_receives, dead_letter_queue=DEAD_LETTER_QUEUE
        )

    def _point(self, name: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(name)

    # ----------------------------------------------------------------- definitions

    def save_definition(self, definition: Definition) -> None:
        key = f"{DEFINITIONS}/{definition.digest}"
        if definition.digest in self._definitions:
            return
        # Content-addressed: whoever wrote it first wrote the same thing.
        with contextlib.suppress(ConflictError):
            self.store.put(key, {"definition": definition.source}, 0)
        self._definitions[definition.digest] = definition

    def definition(self, digest: str) -> Definition:
        found = self._definitions.get(digest)
        if found is not None:
            return found
        record = self.store.get(f"{DEFINITIONS}/{digest}")
        if record is None:
            raise errors.EngineError(f"state machine definition {digest} is missing from the store")
        definition = load_definition(record.data["definition"])
        if len(self._definitions) > 256:
            self._definitions.clear()
        self._definitions[digest] = definition
        return definition

    # ----------------------------------------------------------------- records

    def load(self, key: str) -> LoadedExecution | None:
        record = self.store.get(key)
        if record is None:
            return None
        data = record.data
        state = ExecutionState.from_json(data["state"])
        return LoadedExecution(
            key, record.revision, state, self.definition(data["definition"]), data
        )

    def encode(
        self,
        loaded_data: dict[str, Any] | None,
        state: ExecutionState,
        digest: str,
        new_events: list[dict[str, Any]],
        key: str,
    ) -> dict[str, Any]:
        pending = list(loaded_data["pending_events"]) if loaded_data else []
        chunks = [list(c) for c in loaded_data["chunks"]] if loaded_data else []
        pending.extend(new_events)
        if len(pending) >= FLUSH_EVENTS:
            first, last = pending[0]["id"], pending[-1]["id"]
            page_key = f"{HISTORY}/{key[len(EXECUTIONS) + 1 :]}/{first:09d}-{last:09d}"
            # The same event ids always hold the same events, so losing this race is fine.
            with contextlib.suppress(ConflictError):
                self.store.put(page_key, {"events": pending}, 0)
            chunks.append([first, last])
            pending = []
        return {
            "version": RECORD_VERSION,
            "definition": digest,
            "state": state.to_json(),
            "pending_events": pending,
            "chunks": chunks,
        }

    def history(self, key: str) -> list[dict[str, Any]]:
        record = self.store.get(key)
        if record is None:
            raise errors.ExecutionDoesNotExistError(key)
        events: list[dict[str, Any]] = []
        for first, last in record.data["chunks"]:
            page = self.store.get(f"{HISTORY}/{key[len(EXECUTIONS) + 1 :]}/{first:09d}-{last:09d}")
            if page is None:
                raise errors.EngineError(f"history page {first}-{last} of {key} is missing")
            events.extend(page.data["events"])
        events.extend(record.data["pending_events"])
        return events

    def create(self, key: str, definition: Definition, state: ExecutionState, step: Step) -> bool:
        """Store a new execution; False if the key already exists."""
        self.save_definition(definition)
        data = self.encode(None, state, definition.digest, step.events, key)
        try:
            self.store.put(key, data, 0)
        except ConflictError:
            return False
        self.dispatch(key, step.effects, inline=False)
        return True

    # ----------------------------------------------------------------- applying events

    def deliver(
        self,
        key: str,
        event: dict[str, Any],
        *,
        redelivered: bool = False,
        inline: bool = True,
        basis: LoadedExecution | None = None,
    ) -> tuple[Step, InvokeTask | None]:
        """Apply `event` to the stored execution and perform the effects.

        Returns the step and, when inline invocation applies, one task effect the caller should
        run now instead of sending it. Raises ExecutionDoesNotExistError."""
        return self.deliver_all(key, [event], redelivered=redelivered, inline=inline, basis=basis)

    def deliver_all(
        self,
        key: str,
        events: list[dict[str, Any]],
        *,
        redelivered: bool = False,
        inline: bool = True,
        basis: LoadedExecution | None = None,
    ) -> tuple[Step, InvokeTask | None]:
        """Apply several events to one execution with a single compare-and-swap (the outcomes
        of a batch of its tasks); events that turn out stale are skipped. The returned step
        is stale only if all of them were."""
        for _attempt in range(MAX_CAS_ATTEMPTS):
            # A record loaded earlier may be current; if not, the compare-and-swap says so.
            loaded = basis if basis is not None and basis.key == key else self.load(key)
            basis = None
            if loaded is None:
                raise errors.ExecutionDoesNotExistError(key)
            now = self.clock.time()
            interpreter = Interpreter(loaded.definition)
            step = Step(stale=True, reason="no events")
            applied = Step()
            for event in events:
                try:
                    step = interpreter.apply(loaded.state, event, now)
                except Exception as exc:  # an engine bug must end the execution, not loop
                    log.exception("engine error applying an event", extra={"execution": key})
                    loaded.state = ExecutionState.from_json(loaded.data["state"])
                    applied = Step()
                    step = self.internal_failure(interpreter, loaded.state, now, exc)
                    applied.events.extend(step.events)
                    applied.effects.extend(step.effects)
                    break
                if not step.stale:
                    applied.events.extend(step.events)
                    applied.effects.extend(step.effects)
            if not applied.events and not applied.effects and step.stale:
                if redelivered:
                    self.reconcile(loaded)
                return step, None
            data = self.encode(
                loaded.data, loaded.state, loaded.definition.digest, applied.events, key
            )
            self._point("before_persist")
            try:
                record = self.store.put(key, data, loaded.revision)
            except ConflictError:
                continue
            self._point("after_persist")
            kept = self.dispatch(key, applied.effects, inline=inline)
            self._point("after_dispatch")
            if kept is not None:
                # The inline task that follows starts from the record just written.
                self._local.written = LoadedExecution(
                    key,
                    record.revision,
                    ExecutionState.from_json(data["state"]),
                    loaded.definition,
                    data,
                )
            return applied, kept
        raise errors.EngineError(f"gave up applying events to {key}: too much contention")

    def internal_failure(
        self, interpreter: Interpreter, state: ExecutionState, now: float, exc: Exception
    ) -> Step:
        cause = f"internal engine error: {type(exc).__name__}: {exc}"
        return interpreter.apply(
            state, {"type": "fail", "error": errors.RUNTIME, "cause": cause}, now
        )

    def dispatch(self, key: str, effects: list[core.Effect], *, inline: bool) -> InvokeTask | None:
        """Send messages for `effects`; keep one task for the caller to run inline."""
        kept: InvokeTask | None = None
        invokes: list[dict[str, Any]] = []
        now = self.clock.time()
        for effect in effects:
            if isinstance(effect, InvokeTask):
                if inline and kept is None:
                    kept = effect
                    continue
                invokes.append(
                    {"kind": "invoke", "execution": key, "run": effect.run, "wait": effect.wait}
                )
            elif isinstance(effect, ScheduleTimer):
                delay = min(max(0.0, effect.at - now), MAX_DELAY_SECONDS)
                self.queue.send(
                    self.queue_name,
                    {"kind": "event", "execution": key, "event": effect.event},
                    delay_seconds=delay,
                )
            elif isinstance(effect, ExecutionFinished):
                self.finished(key)
        if invokes:
            self.queue.send_batch(self.queue_name, invokes)
        return kept

    def finished(self, key: str) -> None:
        loaded = self.load(key)
        if loaded is not None and loaded.state.status in core.TERMINAL:
            try:
                self.idempotency.forget_execution(loaded.state.arn)
            except Exception:  # cleanup is best effort; the records are harmless
                log.exception("could not remove idempotency records", extra={"execution": key})

    def reconcile(self, loaded: LoadedExecution) -> None:
        """Re-send every effect the stored state waits on (after a possible lost dispatch)."""
        effects = Interpreter(loaded.definition).pending_effects(loaded.state, self.clock.time())
        if effects:
            log.info(
                "re-sending pending effects after a redelivery",
                extra={"execution": loaded.key, "effects": len(effects)},
            )
            self.dispatch(loaded.key, effects, inline=False)

    def recover(self) -> int:
        """Re-send the pending effects of every running execution (worker start-up, or after
        the queue lost messages). Returns how many executions were running."""
        count = 0
        for key in self.store.list(f"{EXECUTIONS}/"):
            loaded = self.load(key)
            if loaded is None or loaded.state.status != core.RUNNING:
                continue
            count += 1
            if not loaded.state.begun:
                self.queue.send(self.queue_name, begin_message(key))
            self.reconcile(loaded)
        return count

    # ----------------------------------------------------------------- tasks

    def invoke(
        self, key: str, run_id: str, wait_id: int, *, redelivered: bool = False
    ) -> tuple[Step | None, InvokeTask | None]:
        """Call the task a run waits on and apply its outcome."""
        loaded = self.load(key)
        if loaded is None:
            return None, None
        effect = self.task_effect(loaded, run_id, wait_id)
        if effect is None:
            if redelivered:
                self.reconcile(loaded)
            return None, None
        return self.run_task(key, effect, basis=loaded)

    def task_effect(self, loaded: LoadedExecution, run_id: str, wait_id: int) -> InvokeTask | None:
        return Interpreter(loaded.definition).task_effect(loaded.state, run_id, wait_id)

    def run_task(
        self, key: str, effect: InvokeTask, *, basis: LoadedExecution | None = None
    ) -> tuple[Step | None, InvokeTask | None]:
        """Invoke a task (once per idempotency key) and apply its outcome. `basis`, the record
        as loaded before the call, saves a read when nobody wrote it meanwhile."""
        event = self.task_outcome(key, effect)
        if event is None:
            return None, None
        return self.deliver(key, event, basis=basis)

    def task_outcome(self, key: str, effect: InvokeTask) -> dict[str, Any] | None:
        """The `task_result` event for a task attempt: invoked now, or recorded earlier. None
        when the attempt is running elsewhere (then it is looked at again later) or over."""
        try:
            outcome = self.idempotency.run(
                effect.execution_arn,
                effect.idempotency_key,
                lambda: self.call(effect),
                slot=effect.run,
                sequence=effect.wait,
                lease_seconds=effect.timeout_seconds,
                check_outcome=secret_free_outcome,
            )
        except StaleAttemptError:
            return None
        except TaskInProgressError as busy:
            # Someone else runs this attempt: look again once their claim could have expired.
            delay = min(max(1.0, busy.expires_at - self.clock.time()), MAX_DELAY_SECONDS)
            self.queue.send(
                self.queue_name,
                {"kind": "invoke", "execution": key, "run": effect.run, "wait": effect.wait},
                delay_seconds=delay,
            )
            return None
        self._point("after_invoke")
        return {"type": "task_result", "run": effect.run, "wait": effect.wait, **outcome}

    def call(self, effect: InvokeTask) -> Outcome:
        """Invoke the function; every failure becomes an outcome, never an exception."""
        try:
            payload = json_copy(effect.payload)
            if isinstance(self.invoker, ContextInvoker):
                context = TaskContext(
                    resource=effect.function,
                    idempotency_key=effect.idempotency_key,
                    task_token=effect.token,
                    execution_arn=effect.execution_arn,
                    state_name=effect.state,
                    attempt=effect.attempt,
                )
                result = self.invoker.invoke_task(effect.function, payload, context)
            else:
                result = self.invoker.invoke(
                    effect.function, payload, idempotency_key=effect.idempotency_key
                )
        except Exception as exc:
            error, cause = describe_exception(exc)
            return {"ok": False, "error": error, "cause": cause}
        try:
            return {"ok": True, "output": json_copy(result)}
        except (TypeError, ValueError) as exc:
            return {
                "ok": False,
                "error": "Runtime.MarshalError",
                "cause": f"the function returned a value that is not JSON: {exc}",
            }

    # ----------------------------------------------------------------- messages

    def process(self, message: Message) -> None:
        """Handle one `engine-steps` message, then acknowledge it."""
        body = message.body
        key = body.get("execution")
        redelivered = message.receive_count > 1
        if not isinstance(key, str):
            log.error("dropping a malformed engine message", extra={"message_id": message.id})
            self.queue.ack(self.queue_name, message.receipt)
            return
        try:
            if body.get("kind") == "invoke":
                _step, inline = self.invoke(
                    key, str(body.get("run")), int(body.get("wait", -1)), redelivered=redelivered
                )
            else:
                _step, inline = self.deliver(
                    key, dict(body.get("event") or {}), redelivered=redelivered
                )
            self.run_inline(key, inline)
        except errors.ExecutionDoesNotExistError:
            log.warning("message for an execution that does not exist", extra={"execution": key})
        self._point("before_ack")
        self.queue.ack(self.queue_name, message.receipt)

    def run_inline(self, key: str, effect: InvokeTask | None) -> None:
        deadline = time.monotonic() + self.inline_seconds
        while effect is not None:
            basis = getattr(self._local, "written", None)
            self._local.written = None
            if time.monotonic() >= deadline:
                self.queue.send(
                    self.queue_name,
                    {"kind": "invoke", "execution": key, "run": effect.run, "wait": effect.wait},
                )
                return
            _step, effect = self.run_task(key, effect, basis=basis)

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[Message]:
        return self.queue.receive(
            self.queue_name,
            max_messages=max_messages,
            visibility_timeout=self.visibility_timeout,
            wait_seconds=wait_seconds,
        )

    def process_batch(self, messages: list[Message]) -> None:
        """Handle received messages; `invoke` messages of one execution are handled together:
        their tasks run one after the other and all outcomes land in one compare-and-swap."""
        invokes: dict[str, list[Message]] = {}
        for message in messages:
            key = message.body.get("execution")
            if message.body.get("kind") == "invoke" and isinstance(key, str):
                invokes.setdefault(key, []).append(message)
            else:
                self.process(message)
        for key, group in invokes.items():
            if len(group) == 1:
                self.process(group[0])
            else:
                self.process_invokes(key, group)

    def process_invokes(self, key: str, group: list[Message]) -> None:
        redelivered = any(message.receive_count > 1 for message in group)
        loaded = self.load(key)
        events: list[dict[str, Any]] = []
        stale = False
        if loaded is not None:
            seen: set[tuple[str, int]] = set()
            for message in group:
                run_id = str(message.body.get("run"))
                wait_id = int(message.body.get("wait", -1))
                effect = self.task_effect(loaded, run_id, wait_id)
                if effect is None or (run_id, wait_id) in seen:
                    stale = True
                    continue
                seen.add((run_id, wait_id))
                event = self.task_outcome(key, effect)
                if event is not None:
                    events.append(event)
            if stale and redelivered:
                self.reconcile(loaded)
            if events:
                try:
                    _step, inline = self.deliver_all(key, events, basis=loaded)
                    self.run_inline(key, inline)
                except errors.ExecutionDoesNotExistError:
                    pass
        self._point("before_ack")
        for message in group:
            self.queue.ack(self.queue_name, message.receipt)

    def work(
        self,
        should_stop: Callable[[], bool],
        *,
        wait_seconds: float = 0.5,
        batch: int = 10,
    ) -> int:
        """Process messages until `should_stop()`; returns how many were processed."""
        done = 0
        while not should_stop():
            messages = self.receive(batch, wait_seconds)
            try:
                self.process_batch(messages)
            except Exception:  # e.g. the store is unreachable: the messages come back later
                log.exception(
                    "engine step failed; it will be redelivered",
                    extra={"message_ids": [m.id for m in messages]},
                )
            done += len(messages)
        return done

    def drain(
        self, budget_seconds: float, *, wait_seconds: float = 0.0, batch: int = 10
    ) -> DrainReport:
        """Claim and process messages until the queue has none visible or `budget_seconds`
        have passed: one invocation of the engine-steps function.

        `wait_seconds` (at most the budget) is how long after the start an empty queue is
        still waited on (a long-poll receive) before giving up: a doorbell that arrives before
        its message is claimable, or announces a delayed one, is answered by the same call.
        The budget is checked before each execution's messages of a batch; messages claimed
        but not started when it runs out are released at once (visibility 0) for another
        worker instead of waiting out their claim. A step already started finishes (its
        inline task chain is bounded by `inline_seconds`), so a caller keeps its function's
        timeout that much above the budget. Safe to run in any number of processes at once:
        the queue hands each visible message to one claimant, and a redelivered step repeats
        no side effect (see the module docstring)."""
        if not budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0, got {budget_seconds!r}")
        if not wait_seconds >= 0:
            raise ValueError(f"wait_seconds must be >= 0, got {wait_seconds!r}")
        start = self.clock.monotonic()
        deadline = start + budget_seconds
        wait_until = start + min(wait_seconds, budget_seconds)
        report = DrainReport()
        while True:
            now = self.clock.monotonic()
            if now >= deadline:
                report.out_of_budget = True
                break
            messages = self.receive(batch, max(0.0, min(wait_until, deadline) - now))
            if not messages:
                break  # nothing became visible for the whole wait that was left
            report.received += len(messages)
            units = drain_units(messages)
            for index, unit in enumerate(units):
                # The first unit always runs: the budget was left when it was claimed.
                if index > 0 and self.clock.monotonic() >= deadline:
                    report.released += self._release([m for u in units[index:] for m in u])
                    report.out_of_budget = True
                    break
                try:
                    if len(unit) > 1:
                        self.process_invokes(str(unit[0].body.get("execution")), unit)
                    else:
                        self.process(unit[0])
                    report.handled += len(unit)
                except Exception:  # the store or queue failed: the messages come back later
                    log.exception(
                        "engine step failed; it will be redelivered",
                        extra={"message_ids": [m.id for m in unit]},
                    )
                    report.failed += len(unit)
            if report.out_of_budget:
                break
        report.seconds = self.clock.monotonic() - start
        return report

    def _release(self, messages: list[Message]) -> int:
        """End the claims on unstarted messages; returns how many were handed back."""
        released = 0
        for message in messages:
            try:
                self.queue.change_visibility(self.queue_name, message.receipt, 0)
                released += 1
            except Exception:  # the claim runs out on its own; nothing is lost
                log.warning("could not release an engine step", extra={"message_id": message.id})
        return released


@dataclass
class DrainReport:
    """What one `DurableDriver.drain` did: messages claimed (`received`), processed and
    acknowledged (`handled`), failed (left for redelivery), handed back unstarted because the
    budget ran out (`released`), and whether the budget (not an empty queue) ended it."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    released: int = 0
    out_of_budget: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "handled": self.handled,
            "failed": self.failed,
            "released": self.released,
            "out_of_budget": self.out_of_budget,
            "seconds": round(self.seconds, 3),
        }


def drain_units(messages: list[Message]) -> list[list[Message]]:
    """A received batch in `process_batch`'s order and grouping: each `event` (or malformed)
    message alone, then the `invoke` messages of each execution together."""
    units: list[list[Message]] = []
    invokes: dict[str, list[Message]] = {}
    for message in messages:
        key = message.body.get("execution")
        if message.body.get("kind") == "invoke" and isinstance(key, str):
            invokes.setdefault(key, []).append(message)
        else:
            units.append([message])
    units.extend(invokes.values())
    return units


def begin_message(key: str) -> dict[str, Any]:
    return {"kind": "event", "execution": key, "event": {"type": "begin"}}


def secret_free_outcome(outcome: Outcome) -> Outcome:
    """A task result with a plaintext secret is not stored: the task fails instead."""
    if outcome.get("ok"):
        try:
            check_secret_free(outcome.get("output"), "the task's result")
        except PlaintextSecretError as exc:
            return {"ok": False, "error": "Troveless.PlaintextSecret", "cause": str(exc)}
    return outcome


def new_execution_name() -> str:
    return str(uuid.uuid4())


def iter_execution_keys(store: StateStore, state_machine: str | None = None) -> Iterator[str]:
    prefix = f"{EXECUTIONS}/" + (f"{key_segment(state_machine)}/" if state_machine else "")
    yield from store.list(prefix)
