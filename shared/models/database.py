"""Databases and users inside an instance (Trove's /databases and /users resources).

Passwords. `User.password` is a SecretStr marked `exclude=True`: every dump leaves it out
(`model_dump`, `model_dump_json`, hence the store, the queues and the logs), and its repr
is masked. A password travels or persists only sealed, as `encrypted_password` (an
`EncryptedBlob`), which `User.sealed` fills from the crypto service's seal function.
The flip side: a User read back from JSON has `password=None`; whoever needs the
plaintext (the guest creating the user) unseals `encrypted_password` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field, SecretStr

from shared.models.base import DomainModel, EncryptedBlob

DbName = Annotated[str, Field(min_length=1, max_length=255)]


class Database(DomainModel):
    """A database (schema) in an instance. Unset character set / collation mean the
    datastore's default."""

    name: DbName
    character_set: str | None = None
    collate: str | None = None


class User(DomainModel):
    """A database user: `name@host` with access to `databases`."""

    name: DbName
    host: str = Field(default="%", min_length=1, max_length=255)
    password: SecretStr | None = Field(default=None, exclude=True)
    encrypted_password: EncryptedBlob | None = None
    databases: list[DbName] = Field(default_factory=list)

    def sealed(self, seal: Callable[[bytes], str]) -> User:
        """A copy whose `encrypted_password` is `seal(password)`; the plaintext stays only in
        this process's memory. Raises ValueError if there is no password to seal."""
        if self.password is None:
            raise ValueError("password: there is no password to seal")
        return self.replace(encrypted_password=seal(self.password.get_secret_value().encode()))
