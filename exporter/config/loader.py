"""Configuration loading: a TOML file plus `EXPORTER_<SECTION>__<KEY>` overrides, into `Settings`.

Precedence: command-line flag > environment variable > file > default. Nothing here reads
`os.environ` or the working directory on its own: callers pass `env` and `cwd`. Every problem
becomes one `ConfigError` line naming the key and the fix; secret values never appear in it.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import stat
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from exporter.config.proxies import PROXY_VARIABLES
from exporter.config.settings import SECTIONS, Settings, env_var_name
from exporter.config.urls import masked_url
from exporter.errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"
CONFIG_ENV_VAR = "EXPORTER_CONFIG"
_SECRET_KEYS = frozenset({("tapkey", "client_secret")})
_URL_KEYS = frozenset({("database", "url")})
# Settings holding a path; a relative one is resolved at load time (see load_settings).
_PATH_KEYS = (
    "database.url",
    "tapkey.client_secret_file",
    "tapkey.ca_bundle",
    "privacy.hash_key_file",
)
_ENV_RE = re.compile(r"EXPORTER_(?P<section>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)__(?P<key>\w+)")


class _Origin(NamedTuple):
    kind: Literal["file", "env", "cli"]
    label: str


def resolve_config_path(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """Pick the config file: --config, else $EXPORTER_CONFIG, else ./config.toml, else None."""
    if explicit is not None:
        return _existing_file(cwd / explicit, "--config")
    named = env.get(CONFIG_ENV_VAR, "").strip()
    if named:
        return _existing_file(cwd / named, CONFIG_ENV_VAR)
    default = cwd / DEFAULT_CONFIG_NAME
    return default if default.is_file() else None


def _existing_file(path: Path, via: str) -> Path:
    if path.is_file():
        return path
    problem = "is a directory" if path.is_dir() else "does not exist"
    raise ConfigError(f"config file {path} (from {via}) {problem}; check the path")


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str],
    cwd: Path,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from `path` (optional), `EXPORTER_<SECTION>__<KEY>` and CLI overrides.

    Of the rest of `env`, only the standard proxy variables are kept (`Settings.proxy_env`).

    `overrides` maps "section.key" to a command-line value; None values are skipped. A relative
    path (SQLite file, secret file, CA bundle) is resolved against the config file's folder (`cwd`
    without a file), except one given on the command line, which is relative to `cwd`.
    """
    if path is not None and not path.is_absolute():
        path = cwd / path
    data: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    origins: dict[tuple[str, str], _Origin] = {}
    if path is not None:
        for section, key, value in _file_values(path):
            data[section][key] = value
            origins[section, key] = _Origin("file", str(path))
    for name, section, key, value in _env_values(env):
        data[section][key] = value
        origins[section, key] = _Origin("env", name)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or key not in SECTIONS[section].model_fields:
            raise ConfigError(f"unknown setting {dotted!r} in command-line overrides")
        if isinstance(value, str) and not _utf8(value):
            # As for environment values: a driver or URL parser failed on it with a traceback.
            raise ConfigError(
                f"[{section}] {key} given on the command line is not UTF-8 text; type it in a "
                "UTF-8 terminal (e.g. LANG=C.UTF-8)"
            )
        data[section][key] = value
        origins[section, key] = _Origin("cli", dotted)
    base = path.parent if path is not None else cwd
    from_cli = {f"{s}.{k}" for (s, k), origin in origins.items() if origin.kind == "cli"}
    base_dirs = {key: cwd if key in from_cli else base for key in _PATH_KEYS}
    try:
        proxy_env = {name: env[name] for name in PROXY_VARIABLES if env.get(name, "").strip()}
        settings = Settings.model_validate(
            {**data, "source": path, "proxy_env": proxy_env}, context={"base_dirs": base_dirs}
        )
    except ValidationError as exc:
        message = _describe(exc, origins, path)
    else:
        return settings
    # Raised outside the except block so the ValidationError, which holds the raw input
    # (secrets included), is not chained to this exception.
    raise ConfigError(message)


def _file_values(path: Path) -> Iterator[tuple[str, str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for section, table in document.items():
        if not isinstance(table, dict):
            owners = [s for s, model in SECTIONS.items() if section in model.model_fields]
            hint = (
                f"it belongs under [{owners[0]}]"
                if owners
                else f"settings go in sections: {', '.join(f'[{s}]' for s in SECTIONS)}"
            )
            raise ConfigError(f"unknown key {section} at the top level of {path}; {hint}")
        if section not in SECTIONS:
            hint = _suggest(section, {s: f"[{s}]" for s in SECTIONS})
            raise ConfigError(f"unknown section [{section}] in {path}; {hint}")
        fields = SECTIONS[section].model_fields
        for key, value in table.items():
            if key not in fields:
                hint = _suggest(key, {k: k for k in fields})
                raise ConfigError(f"unknown key [{section}] {key} in {path}; {hint}")
            yield section, key, value


def _env_values(env: Mapping[str, str]) -> Iterator[tuple[str, str, str, str]]:
    for name, value in sorted(env.items()):
        match = _ENV_RE.fullmatch(name)
        if match is None:
            continue
        section, key = match["section"].lower(), match["key"].lower()
        if section not in SECTIONS:
            hint = _suggest(
                section,
                {s: env_var_name(s, key) for s in SECTIONS},
                listing=", ".join(env_var_name(s, "*") for s in SECTIONS),
            )
            raise ConfigError(
                f"unknown environment variable {name}: no [{section}] section; {hint}"
            )
        fields = SECTIONS[section].model_fields
        if key not in fields:
            hint = _suggest(key, {k: env_var_name(section, k) for k in fields})
            raise ConfigError(
                f"unknown environment variable {name}: [{section}] has no key {key}; {hint}"
            )
        if not _utf8(value):
            # Bytes of another encoding reach Python as lone surrogates, which failed later with
            # a traceback (the client secret's HMAC, a request body). Not shown: may be a secret.
            raise ConfigError(
                f"environment variable {name} is not UTF-8 text; set it as UTF-8, as the config "
                "file must be"
            )
        yield name, section, key, value


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _suggest(word: str, choices: Mapping[str, str], listing: str | None = None) -> str:
    """A "did you mean" hint; `choices` maps each valid name to how it is shown, `listing` (by
    default those) is what is shown when nothing is close."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {choices[close[0]]}?"
    return "valid choices: " + (listing or ", ".join(choices.values()))


def _describe(
    exc: ValidationError, origins: Mapping[tuple[str, str], _Origin], path: Path | None
) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    section, key = loc[0], (loc[1] if len(loc) > 1 else None)
    where = f"[{section}] {key}" if key else f"[{section}]"
    problem = _problem(first, SECTIONS.get(section), key)
    if key and first["type"] != "value_error" and (section, key) not in _SECRET_KEYS:
        shown = first["input"]
        if (section, key) in _URL_KEYS and isinstance(shown, str):
            shown = masked_url(shown)
        problem += f" (got {_show(shown)})"
    origin = origins.get((section, key)) if key else None
    if key is None and (involved := _conflict_origins(first, section, origins)):
        # A rule between keys (both set, ...): name where those keys came from, not the file.
        prefix = " and ".join(dict.fromkeys(o.label for o in involved))
        kinds = {o.kind for o in involved}
        plural = "s" if len(involved) > 1 else ""
        fix = f"; fix the environment variable{plural}" if kinds == {"env"} else ""
    elif origin is None:
        prefix = str(path) if path is not None else "configuration"
        fix = f"; set it in the config file or {env_var_name(section, key)}" if key else ""
    elif origin.kind == "file":
        prefix, fix = (
            origin.label,
            f"; fix the value in the file or set {env_var_name(section, key or '')}",
        )
    elif origin.kind == "env":
        prefix, fix = origin.label, "; fix the environment variable"
    else:
        prefix, fix = "command line", "; fix the command-line option"
    more = len({tuple(error["loc"]) for error in errors}) - 1
    return f"{prefix}: {where}: {problem}{fix}" + (f" (+{more} more)" if more else "")


def _conflict_origins(
    error: Mapping[str, Any], section: str, origins: Mapping[tuple[str, str], _Origin]
) -> list[_Origin]:
    """Where the keys of a `Conflict` between keys of `section` were set (none: defaults)."""
    keys = getattr((error.get("ctx") or {}).get("error"), "keys", ())
    return [origins[section, k] for k in keys if (section, k) in origins]


def _problem(error: Mapping[str, Any], model: type[BaseModel] | None, key: str | None) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    bounded = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    if bounded and model is not None and key in model.model_fields:
        return _bounds(model.model_fields[key].metadata)
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "finite_number": "must be a finite number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "path_type": "must be a file path",
        "model_type": "must be a table of settings",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"must be {context['expected']}"
    if kind == "value_error":
        return str(context["error"])
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _bounds(metadata: Iterable[Any]) -> str:
    low = high = None
    exclusive = False
    for item in metadata:
        if getattr(item, "ge", None) is not None:
            low = item.ge
        if getattr(item, "gt", None) is not None:
            low, exclusive = item.gt, True
        if getattr(item, "le", None) is not None:
            high = item.le
    if low is not None and high is not None and not exclusive:
        return f"must be between {_show(low)} and {_show(high)}"
    if low is not None:
        return (
            f"must be greater than {_show(low)}" if exclusive else f"must be at least {_show(low)}"
        )
    return f"must be at most {_show(high)}"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def file_permissions_warning(settings: Settings) -> str | None:
    """Warn when a file holding a secret (config or secret file) is readable by too many users.

    See `secret_file_warning` for the rule; the advice keeps this process able to read the file.
    """
    if sys.platform == "win32":
        return None
    warnings = []
    files = []
    if settings.source is not None and _holds_secret(settings.source):
        files.append(settings.source)
    if settings.tapkey.client_secret_file is not None:
        files.append(settings.tapkey.client_secret_file)
    if settings.privacy.hash_key_file is not None:
        files.append(settings.privacy.hash_key_file)
    for path in files:
        try:
            info = path.stat()
        except OSError:
            continue
        # Not a regular file (a folder given by mistake): its own error says so; chmod would not.
        if not stat.S_ISREG(info.st_mode):
            continue
        warning = secret_file_warning(
            path,
            mode=stat.S_IMODE(info.st_mode),
            owner=info.st_uid,
            group=info.st_gid,
            uid=os.geteuid(),
            groups=[os.getegid(), *os.getgroups()],
            projected=_projected(path),
        )
        if warning:
            warnings.append(warning)
    return "; ".join(warnings) or None


def secret_file_warning(
    path: Path,
    *,
    mode: int,
    owner: int,
    group: int,
    uid: int,
    groups: Sequence[int],
    projected: bool = False,
) -> str | None:
    """Why a file holding a secret is readable by too many users, with a fix that keeps this
    process (`uid`; `groups`, its own first) reading it; None when the file is fine.

    Fine are mode 0600 and less, and, for a file owned by root, group read too (0640, 0440):
    root handing the file to a service's group is how a systemd unit and a Kubernetes Secret
    volume (fsGroup) give it to a service that must not own it. Readable by all is never fine.
    `projected`: a file of a Kubernetes volume, which only the pod spec can change.
    """
    by_others = bool(mode & 0o004)
    by_group = bool(mode & 0o040) and owner != 0
    if not (by_others or by_group):
        return None
    whom = "every user" if by_others else f"group {_group_name(group)}"
    problem = (
        f"{path} holds a secret and is readable by {whom} (mode {mode:04o}, owner "
        f"{_user_name(owner)})"
    )
    quoted = shlex.quote(str(path))
    # Whether this process still reads the file once the permissions in question are gone.
    keeps_access = uid in (0, owner) or (group in groups and not by_group)
    if projected:
        fix = (
            "set the volume's defaultMode to 0440 and the pod's securityContext.fsGroup to the "
            "exporter's group"
        )
    elif keeps_access:
        fix = f"run: chmod {'o-r' if owner == 0 else '600'} {quoted}"
    else:
        mine = group if group in groups else groups[0]
        fix = f"run as root: chown root:{_group_name(mine)} {quoted} && chmod 640 {quoted}"
    return f"{problem}; {fix}"


def _projected(path: Path) -> bool:
    """A file of a Kubernetes Secret/ConfigMap volume: a link into the volume's `..data`."""
    try:
        target = os.readlink(path)
    except OSError:
        return False
    return target.startswith("..data/")


def _user_name(uid: int) -> str:
    import pwd  # not on Windows, where no permissions are checked

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    import grp  # not on Windows, where no permissions are checked

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _holds_secret(path: Path) -> bool:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    tapkey, database = document.get("tapkey"), document.get("database")
    secret = tapkey.get("client_secret") if isinstance(tapkey, dict) else None
    if isinstance(secret, str) and secret.strip():
        return True
    if isinstance(database, dict) and isinstance(database.get("url"), str):
        try:
            return bool(make_url(database["url"]).password)
        except (ArgumentError, ValueError):
            return False
    return False
