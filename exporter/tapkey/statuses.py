"""What an API answer means: the status -> outcome decision, and the error a failed GET raises.

Pure functions of the status, the request's `Target` and what is known of the token (its granted
scopes): `Transport` sends the requests and asks here what each answer means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from exporter.errors import ApiError, PayloadError, PermissionDeniedError

__all__ = [
    "LOGS_SCOPE",
    "Outcome",
    "Target",
    "exhausted_error",
    "status_error",
    "status_outcome",
]

OWNERS_SCOPE: Final = "read:owneraccounts"
LOCKS_SCOPE: Final = "read:core:entities"
LOGS_SCOPE: Final = "read:logs"
#: Statuses worth repeating a GET for.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Target:
    """What is being fetched: the path for URLs and messages, the owner and scope for 403
    advice (the scope defaults to the owner list's or the bound locks')."""

    path: str
    owner_id: str | None = None
    scope: str | None = None  # the route's scope, when it is not the lock list's


Outcome = Literal["ok", "retry", "reauth", "forbidden", "fail"]


def status_outcome(status: int) -> Outcome:
    """The one place that decides what an API status means."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRY_STATUSES:
        return "retry"
    if status == 401:
        return "reauth"
    if status == 403:
        return "forbidden"
    return "fail"


def exhausted_error(
    target: Target,
    status: int | None,
    failure: str,
    cause: str,
    attempts: int,
    truncated: bool,
    hint: str,
) -> Exception:
    """The error once retries are used up (count or time)."""
    where = f"GET {target.path}"
    if truncated:
        return PayloadError(
            f"{where}: the response body was cut off {attempts} times ({cause}); the "
            "connection or a proxy drops large responses: lower [tapkey] page_size or try "
            "again later"
        )
    if status == 429:
        return ApiError(
            f"{where}: still rate-limited (HTTP 429) after {attempts} attempts; lower "
            "[tapkey] workers or raise the retry limits",
            status=status,
        )
    if status is not None:
        return ApiError(
            f"{where}: HTTP {status} after {attempts} attempts; the Tapkey API is failing, "
            "try again later",
            status=status,
        )
    return ApiError(
        f"{where}: {failure} after {attempts} attempts ({cause}); check [tapkey] "
        f"api_base_url, {hint} and [tapkey] read_timeout",
    )


def status_error(
    target: Target, status: int, *, answered: bool, granted: frozenset[str] | None
) -> ApiError:
    """The error for a status that is not retried (403 and other 4xx)."""
    where = f"GET {target.path}"
    if status == 404 and target.owner_id is not None and answered:
        # The base URL and routes answered before (the owner list came from them).
        return ApiError(
            f"{where}: HTTP 404: owner account {target.owner_id} is gone although the API "
            "answered this run's other requests: the owner account was probably removed, or "
            "the OAuth client lost access to it, during the run; the next run no longer "
            "lists it",
            status=status,
        )
    if status != 403:
        hint = {
            400: "the API rejected the query; check [tapkey] page_size",
            404: "not found; check [tapkey] api_base_url",
        }.get(status, "check [tapkey] api_base_url")
        return ApiError(f"{where}: HTTP {status}: {hint}", status=status)
    needed = target.scope or (LOCKS_SCOPE if target.owner_id is not None else OWNERS_SCOPE)
    if granted is not None and needed not in granted:
        message = (
            f"{where} was refused (403): the token lacks scope {needed} (granted: "
            f"{' '.join(sorted(granted)) or 'none'}); add it to [tapkey] scopes and allow it "
            "for the OAuth client"
        )
    elif target.owner_id is not None and target.scope == LOGS_SCOPE:
        message = (
            f"{where} was refused (403): the OAuth client's service account may not read "
            f"the logs of owner {target.owner_id} (not co-admin, or an account role limited "
            "to less than logs); make it co-admin with a role that may read logs in the "
            "Tapkey portal" + ("" if granted is not None else f" (and check scope {needed})")
        )
    elif target.scope is not None and target.owner_id is not None:
        message = (
            f"{where} was refused (403) although the token has scope {needed}: the OAuth "
            f"client's service account lacks the co-admin right to read this list of owner "
            f"{target.owner_id} (not co-admin, or a role limited to other data); make it "
            "co-admin with a role that may read it in the Tapkey portal"
        )
    elif target.owner_id is not None:
        message = (
            f"{where} was refused (403): the OAuth client's service account is probably not "
            f"co-admin of owner {target.owner_id}; make it co-admin in the Tapkey portal"
            + ("" if granted is not None else f" (and check it has scope {needed})")
        )
    elif granted is None:
        message = (
            f"{where} was refused (403): the OAuth client probably lacks scope {needed}; "
            "check [tapkey] scopes and the scopes allowed for the client"
        )
    else:
        message = (
            f"{where} was refused (403) although the token has scope {needed}; check the "
            "OAuth client's permissions in the Tapkey portal"
        )
    return PermissionDeniedError(message, status=403)
