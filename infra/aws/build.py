"""Prepare what infra/aws/template.yaml points at, before `sam build` (no make needed):

    python -m infra.aws.build [--out build/aws]

writes
- `build/aws/state_machines/*.asl.json`: state_machines/ rewritten for Step Functions
  (infra/aws/definitions.py), with `${...Arn}` placeholders the template substitutes;
- `build/aws/src/`: the Lambda code (the functions, shared and infra packages) and a
  `requirements.txt` holding pyproject.toml's runtime dependencies, which `sam build` installs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from infra.aws.definitions import write_step_functions_definitions

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "build" / "aws"
# What a Lambda function imports: handlers, services/adapters, and the composition root.
CODE_PACKAGES = ("functions", "shared", "infra")


def runtime_requirements(pyproject: Path) -> list[str]:
    """pyproject.toml's `[project] dependencies`, one requirement each."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [str(requirement) for requirement in project.get("dependencies", [])]


def build(out: Path, repo_root: Path = REPO_ROOT) -> list[Path]:
    """Write the definitions and the code tree under `out`; returns the files written at top."""
    definitions = write_step_functions_definitions(
        repo_root / "state_machines", out / "state_machines"
    )
    source = out / "src"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in CODE_PACKAGES:
        shutil.copytree(repo_root / package, source / package, ignore=ignore)
    requirements = source / "requirements.txt"
    requirements.write_text("\n".join(runtime_requirements(repo_root / "pyproject.toml")) + "\n")
    return [*definitions, requirements]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.aws.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in build(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
