"""The sandbox's token endpoint and bearer check: client credentials in, expiring tokens with
scopes out (RFC 6749 client_credentials, client_secret_basic or client_secret_post)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from exporter.sandbox.protocol import Response, error_response, unauthorized

__all__ = ["TokenIssuer"]


@dataclass(frozen=True)
class _Token:
    expires_at: float
    scopes: frozenset[str]


class TokenIssuer:
    """Issues tokens to one client and checks them; thread-safe."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        lifetime: float,
        granted: tuple[str, ...],
        clock: Callable[[], float],
    ) -> None:
        self._lock = threading.Lock()
        self._client_id = client_id
        self._client_secret = client_secret
        self._lifetime = lifetime
        self._granted = granted
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._issued: list[str] = []  # every token ever issued, for leak checks in tests

    @property
    def issued(self) -> tuple[str, ...]:
        """Every token issued so far, revoked and expired ones included."""
        with self._lock:
            return tuple(self._issued)

    def revoke_all(self) -> None:
        """Invalidate every issued token."""
        with self._lock:
            self._tokens.clear()

    def token_response(self, form: dict[str, str], authorization: str | None) -> Response:
        """RFC 6749 client-credentials grant with client_secret_basic or client_secret_post."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        challenge: dict[str, str] = {}
        if authorization and authorization[:6].lower() == "basic ":
            challenge = {"WWW-Authenticate": 'Basic realm="tapkey-sandbox"'}
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                basic_id, _, basic_secret = decoded.partition(":")
            except ValueError:
                return error_response(
                    401, "invalid_client", "malformed Basic credentials", challenge
                )
            if client_id is not None and unquote_plus(basic_id) != client_id:
                return error_response(401, "invalid_client", "two different client ids", challenge)
            # RFC 6749 form-encodes both before Base64; many clients do not: accept both.
            if (basic_id, basic_secret) != (self._client_id, self._client_secret):
                basic_id, basic_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
            client_id, secret = basic_id, basic_secret
        if client_id != self._client_id or secret != self._client_secret:
            return error_response(
                401, "invalid_client", "unknown client or wrong secret", challenge
            )
        if form.get("grant_type") != "client_credentials":
            return error_response(
                400, "unsupported_grant_type", "only client_credentials is supported"
            )
        requested = tuple(dict.fromkeys(form.get("scope", "").split())) or self._granted
        refused = [scope for scope in requested if scope not in self._granted]
        if refused:
            return error_response(400, "invalid_scope", f"scope not allowed: {' '.join(refused)}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._tokens = {t: v for t, v in self._tokens.items() if v.expires_at > now}
            self._tokens[token] = _Token(now + self._lifetime, frozenset(requested))
            self._issued.append(token)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self._lifetime),
            "scope": " ".join(requested),
        }
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return Response(200, json.dumps(payload, separators=(",", ":")).encode(), no_store)

    def check_bearer(self, authorization: str | None, scope: str) -> Response | None:
        """None if the bearer token is valid and has `scope`, else the 401/403 to send."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return unauthorized("a bearer token is required")
        with self._lock:
            token = self._tokens.get(authorization[7:].strip())
            now = self._clock()
        if token is None:
            return unauthorized("unknown or revoked token")
        if now >= token.expires_at:
            return unauthorized("the token has expired")
        if scope not in token.scopes:
            challenge = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'}
            return error_response(403, "insufficient_scope", f"the token lacks {scope}", challenge)
        return None
