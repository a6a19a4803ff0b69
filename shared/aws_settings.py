"""The aws profile's settings: `Settings.aws`, read from TROVELESS_AWS_<FIELD> variables.

The SAM template (infra/aws/template.py) sets these on every function; each field `x` is read
from `TROVELESS_AWS_X` (mappings and lists as JSON, as for the other settings). A TOML file may
give them instead in an `[aws]` table, and `load_settings(aws=...)` too; when it does, the
variables still override single fields (environment over file, as for every setting).

When no TROVELESS_AWS_* variable is set and nothing else gives the table, `Settings.aws` is None
(the local and OpenStack profiles); the aws wiring then refuses to start and says what to set.
An invalid or unknown variable fails `load_settings` with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "TROVELESS_AWS_"
# Lambda and SQS names: the queue prefix leaves 64 of SQS's 80 characters to our queue names.
QUEUE_PREFIX_PATTERN = r"^[A-Za-z0-9_-]{0,16}$"
STATE_MACHINE_ARN_PREFIX_PATTERN = r"^arn:aws[a-z-]*:states:[a-z0-9-]*:[0-9]*:stateMachine:"
SECRET_ARN_PATTERN = r"^arn:aws[a-z-]*:secretsmanager:.+$"


def check_endpoint_url(value: str) -> str:
    """An AWS-compatible endpoint: http(s) to a host, nothing that could carry credentials
    (user:password@) or be ignored (query, fragment). ValueError says what is wrong."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (user:password@)")
    if parts.query or parts.fragment:
        raise ValueError("must have no query or fragment")
    return value


EndpointUrl = Annotated[str, AfterValidator(check_endpoint_url)]
"""An http(s) endpoint URL for boto3's `endpoint_url` (moto, S3-compatible stores)."""


class AwsSettings(BaseSettings):
    """Where the aws profile keeps things, and how it reaches AWS."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    # Key prefixes in the bucket; the stores add their own namespaces (records/, blobs/...).
    state_prefix: str = "state/"
    blob_prefix: str = "backups/"
    queue_prefix: Annotated[str, Field(pattern=QUEUE_PREFIX_PATTERN)] = "troveless-"
    # A definition's state machine ARN is this prefix + its name ("provision_instance").
    state_machine_arn_prefix: Annotated[str, Field(pattern=STATE_MACHINE_ARN_PREFIX_PATTERN)]
    # Task function `fn:module.func` is the Lambda function `<lambda_prefix>module-func`.
    lambda_prefix: str = ""
    region: str | None = Field(default=None, description="Else AWS_REGION (set by Lambda)")
    endpoint_url: EndpointUrl | None = Field(
        default=None, description="One endpoint for every service (moto, S3-compatible stores)"
    )
    # The Secrets Manager secret holding the base64 master key; else TROVELESS_MASTER_KEY.
    master_key_secret_arn: Annotated[str, Field(pattern=SECRET_ARN_PATTERN)] | None = None
    # EC2 compute: AMI per "<datastore>:<version>" or "<datastore>", instance type per flavor
    # name, optionally a subnet per availability zone, security groups and an SSH key pair.
    images: dict[str, str] = Field(default_factory=dict)
    instance_types: dict[str, str] = Field(default_factory=dict)
    subnets: dict[str, str] = Field(default_factory=dict)
    security_group_ids: list[str] = Field(default_factory=list)
    key_name: str | None = None
    # The instance profile (ARN or name) every EC2 guest is launched with: its credentials
    # come from the instance metadata service, never from user-data.
    guest_instance_profile: Annotated[str, Field(min_length=1)] | None = None


def aws_variables() -> dict[str, str]:
    """The TROVELESS_AWS_* variables set now, by upper-case name."""
    return {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def variable_for(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_environment(value: Any) -> Any:
    """Settings.aws's value: what was given, completed and overridden by the variables."""
    variables = aws_variables()
    if value is None and not variables:
        return None
    if isinstance(value, AwsSettings):
        return value
    known = {variable_for(name) for name in AwsSettings.model_fields}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown (known: {', '.join(sorted(known))})")
    given = {} if value is None else value
    if not isinstance(given, dict):
        raise ValueError(f"must be a table of {', '.join(sorted(AwsSettings.model_fields))}")
    try:
        # BaseSettings: the init values, then the environment's over them (see the docstring).
        return AwsSettings(**{k: v for k, v in given.items() if variable_for(k) not in variables})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            named = f"aws.{field} ({variable_for(field)})" if field else "aws"
            problems.append(f"{named}: {err['msg']}")
        raise ValueError("; ".join(problems)) from None
    except SettingsError as exc:  # a variable that is not JSON where a mapping or list is due
        found = re.search(r'field "(\w+)"', str(exc))
        variable = variable_for(found.group(1)) if found else f"{ENV_PREFIX}*"
        raise ValueError(f"{variable}: not valid JSON") from None


OptionalAwsSettings = Annotated[AwsSettings | None, BeforeValidator(_from_environment)]
"""The type of `Settings.aws` (None outside the aws profile)."""
