"""`troveless package --target qinling`: build the function packages of a cloud home."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from infra.openstack.qinling_packages import ENTRY, PackagingError, build_all

DEFAULT_OUT = Path("dist/qinling")


class Target(StrEnum):
    QINLING = "qinling"


def package(
    target: Annotated[Target, typer.Option(help="Which function platform to package for.")],
    out: Annotated[
        Path, typer.Option("--out", help="Directory the zips are written to.")
    ] = DEFAULT_OUT,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            help="A troveless.toml (no secrets) to package with every function.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Build one zip per function (API, guest events, task modules, timers) for `target`."""
    try:
        built = build_all(out, settings_file=settings)
    except PackagingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for item in built:
        size_kb = item.path.stat().st_size / 1024
        typer.echo(
            f"{item.path}  ({item.spec.kind}, entry {ENTRY}, {len(item.modules)} modules, "
            f"{size_kb:.0f} KiB, {len(item.requirements)} requirements)"
        )
    typer.echo(f"{len(built)} packages for {target.value} in {out}; see docs/openstack.md")
