"""`troveless sfn`: validate and run Amazon States Language definitions with the embedded engine.

    troveless sfn validate FILE
        exit 0 when valid; otherwise every problem (JSON pointer: message) on stderr, exit 1.

    troveless sfn run FILE --input JSON [--resource NAME=module:callable]... [--durable]
        runs one execution to its end and prints its output JSON on stdout (exit 0 when it
        SUCCEEDED); otherwise prints {"status", "error", "cause"} JSON and exits 1. Usage errors
        (unreadable file, invalid definition or input JSON, bad --resource) exit 2.

In-memory runs use virtual time (Wait states do not sleep; `--real-time` makes them sleep).
`--durable` runs the execution through the local state store and queue (under `--data-dir`, or a
temporary directory), one queue message per step, with in-process worker threads.

    troveless sfn worker --data-dir DIR [--resource NAME=module:callable]...
        runs durable-engine workers on that store and queue until SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.clock import SystemClock
from shared.engine import DefinitionError, load_definition, run_in_memory
from shared.engine.definition import Definition
from shared.engine.durable import DurableDriver
from shared.engine.errors import EngineError
from shared.engine.idempotency import TaskIdempotency
from shared.engine.invoker import InProcessInvoker, ResourceSpecError, parse_resource_specs
from shared.engine.memory import ExecutionResult
from shared.engine.service import ExecutionService

sfn_app = typer.Typer(
    name="sfn",
    help="Validate and run state-machine definitions (Amazon States Language).",
    no_args_is_help=True,
    add_completion=False,
)


def _fail_usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _read_definition(path: Path) -> Definition:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail_usage(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _fail_usage(f"{path} is not UTF-8 text") from None
    return load_definition(text)


def _print_problems(path: Path, exc: DefinitionError) -> None:
    count = len(exc.problems)
    typer.echo(f"{path}: invalid definition ({count} problem{'s' if count != 1 else ''})", err=True)
    for pointer, message in exc.problems:
        typer.echo(f"  {pointer or '/'}: {message}", err=True)


@sfn_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Definition file (JSON)")],
) -> None:
    """Check a definition; list every problem with its JSON pointer."""
    try:
        definition = _read_definition(file)
    except DefinitionError as exc:
        _print_problems(file, exc)
        raise typer.Exit(1) from None
    states = sum(len(m.states) for m in definition.machines.values())
    typer.echo(f"{file}: valid ({states} state{'s' if states != 1 else ''})")


def _parse_input(text: str | None, input_file: Path | None) -> Any:
    if text is not None and input_file is not None:
        raise _fail_usage("give --input or --input-file, not both")
    source = "--input"
    if input_file is not None:
        source = str(input_file)
        try:
            text = input_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise _fail_usage(f"cannot read {input_file}: {exc.strerror or exc}") from None
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail_usage(
            f"the input ({source}) is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from None


def _report(result: ExecutionResult, pretty: bool) -> None:
    indent = 2 if pretty else None
    if result.status == "SUCCEEDED":
        sys.stdout.write(json.dumps(result.output, indent=indent, ensure_ascii=False) + "\n")
        return
    report = {"status": result.status, "error": result.error, "cause": result.cause}
    sys.stdout.write(json.dumps(report, indent=indent, ensure_ascii=False) + "\n")
    raise typer.Exit(1)


@sfn_app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="Definition file (JSON)")],
    *,
    input_text: Annotated[
        str | None, typer.Option("--input", "-i", help="Execution input as JSON text")
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", help="Read the execution input from a file")
    ] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource",
            "-r",
            help="Bind a Task Resource to a function: NAME=module:callable (repeatable)",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Execution name")] = None,
    durable: Annotated[
        bool, typer.Option("--durable", help="Run through the local state store and queue")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where --durable keeps its store and queue"),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=16)] = 2,
    state_machine: Annotated[
        str | None,
        typer.Option("--state-machine", help="State machine name (default: from the file name)"),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            help="--durable: stop the execution after this many seconds (0: never)",
        ),
    ] = 0.0,
    real_time: Annotated[
        bool, typer.Option("--real-time", help="In-memory: really sleep in Wait states")
    ] = False,
    history: Annotated[
        bool, typer.Option("--history", help="Print the event history on stderr")
    ] = False,
    pretty: Annotated[bool, typer.Option("--pretty", help="Indent the JSON output")] = False,
) -> None:
    """Run one execution to its end and print its output."""
    try:
        definition = _read_definition(file)
    except DefinitionError as exc:
        _print_problems(file, exc)
        raise typer.Exit(2) from None
    input_value = _parse_input(input_text, input_file)
    try:
        functions = parse_resource_specs(resource or [])
    except ResourceSpecError as exc:
        raise _fail_usage(f"--resource: {exc}") from None
    try:
        if durable:
            result = _run_durable(
                definition,
                input_value,
                functions,
                name=name,
                data_dir=data_dir,
                workers=workers,
                state_machine=state_machine or _state_machine_name(file),
                timeout=timeout,
            )
        else:
            result = run_in_memory(
                definition, input_value, functions, name=name, real_time=real_time
            )
    except EngineError as exc:
        raise _fail_usage(str(exc)) from None
    if history:
        for event in result.history:
            typer.echo(json.dumps(event, ensure_ascii=False), err=True)
    _report(result, pretty)


def local_engine(
    data_dir: Path,
    invoker: InProcessInvoker,
    *,
    visibility_timeout: float = 30.0,
    task_lease: float = 300.0,
) -> tuple[DurableDriver, ExecutionService]:
    """The durable engine on the local adapters: a directory state store and a SQLite queue.

    Execution records are fsynced (the store's default); task-attempt claims live in a second
    store without fsync — they guard against process crashes, which fsync does not affect, and
    a claim lost to a power loss only lets that attempt run again (see idempotency.py)."""
    from shared.adapters.local.sqlite_queue import SqliteQueue
    from shared.adapters.local.state_store import DirectoryStateStore, Durability

    data_dir.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    store = DirectoryStateStore(data_dir / "state", clock=clock)
    claims = DirectoryStateStore(data_dir / "task-claims", clock=clock, durability=Durability.NONE)
    queue = SqliteQueue(data_dir / "queues.db", clock=clock)
    driver = DurableDriver(
        store,
        queue,
        invoker,
        clock,
        visibility_timeout=visibility_timeout,
        idempotency=TaskIdempotency(claims, clock, lease_seconds=task_lease),
    )
    return driver, ExecutionService(driver)


def _state_machine_name(path: Path) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name.removesuffix(".json")).strip("-")
    return cleaned[:80] or "state-machine"


def _run_durable(
    definition: Definition,
    input_value: Any,
    functions: dict[str, Any],
    *,
    name: str | None,
    data_dir: Path | None,
    workers: int,
    state_machine: str,
    timeout: float,
) -> ExecutionResult:
    if data_dir is not None:
        return _run_durable_in(
            definition,
            input_value,
            functions,
            name=name,
            data_dir=data_dir,
            workers=workers,
            state_machine=state_machine,
            timeout=timeout,
        )
    with tempfile.TemporaryDirectory(prefix="troveless-sfn-") as tmp:
        return _run_durable_in(
            definition,
            input_value,
            functions,
            name=name,
            data_dir=Path(tmp),
            workers=workers,
            state_machine=state_machine,
            timeout=timeout,
        )


def _run_durable_in(
    definition: Definition,
    input_value: Any,
    functions: dict[str, Any],
    *,
    name: str | None,
    data_dir: Path,
    workers: int,
    state_machine: str,
    timeout: float,
) -> ExecutionResult:
    driver, service = local_engine(data_dir, InProcessInvoker(functions))
    started = service.start(state_machine, definition, input_value, name=name)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=driver.work, args=(stop.is_set,), kwargs={"wait_seconds": 0.2}, daemon=True
        )
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while True:
            described = service.describe(started.arn)
            if described.status.is_terminal:
                break
            if deadline is not None and time.monotonic() > deadline:
                service.stop(started.arn, "Troveless.CliTimeout", f"--timeout {timeout:g} s passed")
                continue
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return ExecutionResult(
        status=described.status.value,
        output=described.output,
        error=described.error,
        cause=described.cause,
        history=service.history(started.arn),
        arn=described.arn,
        name=described.name,
    )


@sfn_app.command("worker")
def worker(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The local store and queue")],
    resource: Annotated[
        list[str] | None,
        typer.Option("--resource", "-r", help="NAME=module:callable (repeatable)"),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, max=64)] = 1,
    visibility_timeout: Annotated[
        float, typer.Option("--visibility-timeout", min=0.1, help="Seconds a step is claimed")
    ] = 30.0,
    task_lease: Annotated[
        float,
        typer.Option(
            "--task-lease",
            min=0.1,
            help="Seconds before a task claimed by a dead worker is retried",
        ),
    ] = 300.0,
) -> None:
    """Run durable-engine workers on the local store and queue until SIGTERM/SIGINT."""
    try:
        functions = parse_resource_specs(resource or [])
    except ResourceSpecError as exc:
        raise _fail_usage(f"--resource: {exc}") from None
    driver, _service = local_engine(
        data_dir,
        InProcessInvoker(functions),
        visibility_timeout=visibility_timeout,
        task_lease=task_lease,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    driver.recover()
    pool = [
        threading.Thread(target=driver.work, args=(stop.is_set,), kwargs={"wait_seconds": 0.2})
        for _ in range(threads)
    ]
    for thread in pool:
        thread.start()
    typer.echo(f"engine worker ready ({threads} thread{'s' if threads != 1 else ''})", err=True)
    for thread in pool:
        thread.join()
