"""Talking to the sandbox by hand over HTTP, for the sandbox's own tests."""

from __future__ import annotations

import re
from typing import Any

import requests

from exporter.sandbox.server import Sandbox
from support.helpers import SANDBOX_SECRET

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def get_token(fake: Sandbox, http: requests.Session, **form: str) -> str:
    """An access token from the sandbox's token endpoint (client credentials unless `form` says)."""
    form.setdefault("grant_type", "client_credentials")
    reply = http.post(fake.token_url, data=form, auth=("sandbox-client", SANDBOX_SECRET), timeout=5)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


def api(
    fake: Sandbox, http: requests.Session, path: str, token: str | None, **params: Any
) -> requests.Response:
    """GET an API path (below /api/v1) with `token` as bearer, if any."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.get(f"{fake.base_url}/api/v1{path}", headers=headers, params=params, timeout=5)
