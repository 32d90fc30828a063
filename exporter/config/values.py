"""The pieces the settings sections are built from: the `Section` base, `Conflict`, and the
checks of single values (durations, http URLs, listen addresses, paths relative to the file).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo

from exporter.config.urls import http_url_problem

__all__ = [
    "Conflict",
    "Section",
    "base_dir",
    "blank_to_none",
    "check_duration",
    "check_http_url",
    "parse_duration",
    "resolve_path",
    "split_listen",
]

_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0)
_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "30s", "15m", "2h", "1d" or "1h30m"."""
    cleaned = text.strip().lower()
    match = _DURATION_RE.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"expected a duration such as 30s, 15m, 2h, 1d or 1h30m (got {text!r})")
    return sum(float(v) * unit for v, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if v)


class Conflict(ValueError):
    """A rule between several keys of one section; `keys` lets the error say where each was set."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


def blank_to_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def base_dir(info: ValidationInfo, key: str) -> Path | None:
    context = info.context
    bases = context.get("base_dirs") if isinstance(context, Mapping) else None
    base = bases.get(key) if isinstance(bases, Mapping) else None
    return base if isinstance(base, Path) else None


def resolve_path(value: Path | None, info: ValidationInfo, key: str) -> Path | None:
    base = base_dir(info, key)
    if value is None or value.is_absolute() or base is None:
        return value
    return base / value


def check_http_url(value: str) -> str:
    """`value` stripped, if it is https or plain http to a loopback host (`http_url_problem`)."""
    problem = http_url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value.strip()


def check_duration(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a duration string such as "30s" or "15m" (got {value!r})')
    if parse_duration(value) <= 0:
        raise ValueError(f"must be longer than zero (got {value!r})")
    return value.strip()


def split_listen(value: str) -> tuple[str, int]:
    text = value.strip()
    problem = f"must be host:port such as 127.0.0.1:9464, 0.0.0.0:9464 or [::]:9464 (got {value!r})"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ok = bool(sep) and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    else:
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and _HOSTNAME_RE.fullmatch(host) is not None
    if not ok or not port.isdigit() or int(port) > 65535:
        raise ValueError(problem)
    return host, int(port)


class Section(BaseModel):
    """A settings section: unknown keys refused, frozen, defaults checked too."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )
