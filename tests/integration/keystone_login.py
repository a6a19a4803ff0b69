"""A password login to a Keystone v3 endpoint (our subset in the tests), returning the token."""

from __future__ import annotations

import json
import urllib.request


def password_login(auth_url: str, user: str, password: str) -> str:
    """POST /auth/tokens for `user` of the default domain; the X-Subject-Token answered."""
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": "default"}, "password": password}
                },
            }
        }
    }
    request = urllib.request.Request(
        f"{auth_url}/auth/tokens",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return str(response.headers["X-Subject-Token"])
