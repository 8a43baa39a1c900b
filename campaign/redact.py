"""Secrets out of everything the program prints: messages, log lines, tracebacks.

The secrets are the database password (under every reading of the DSN, see
`campaign.db.dsn`, and PGPASSWORD), the Aculab API access key, the service passwords,
the webhook secret and the dashboard's password, and the HTTP Basic tokens built from
them. Printing code should never hold them, but drivers and libraries echo what they
were given (asyncpg quotes the piece of a DSN it could not parse), so every line is
scrubbed on its way out as well.

A `Scrubber` replaces, longest first:

* each secret, and each piece of it between characters where a parser may cut it
  (`/ ? # @ : & = , ;` quotes, backslashes, spaces, ...): a driver that misreads a DSN
  echoes such pieces, never arbitrary slices;
* those as they look once escaped: JSON (a log line), Python repr (an exception),
  percent-encoded (a URL);
* the base64 of each secret at each of the three byte alignments, so an HTTP Basic
  token that carries it is caught whatever login precedes it.

Strings shorter than `MIN_LENGTH` are left alone: they turn up in ordinary text by
chance, and scrubbing them would garble every line.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from campaign.db.dsn import dsn_passwords

if TYPE_CHECKING:
    from campaign.settings import Settings

REDACTED = "***"
MIN_LENGTH = 4

# Where a parser may cut a secret: URI and keyword/value delimiters, quoting, spaces.
_CUTS = frozenset(" \t\n\r\f\v'\"\\=:/?#@&,;[]%+")
# Beyond this many cut points, only the pieces between neighbouring cuts, prefixes
# and suffixes are kept (a quadratic number of pieces would slow every log line).
_MAX_CUTS = 48


def pieces(secret: str) -> set[str]:
    """`secret` and every piece of it that starts and ends at a cut point."""
    cuts = {0, len(secret)}
    for i, char in enumerate(secret):
        if char in _CUTS or not char.isprintable():
            cuts.update((i, i + 1))
    points = sorted(cuts)
    pairs: list[tuple[int, int]]
    if len(points) <= _MAX_CUTS:
        pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1 :]]
    else:
        pairs = [(0, b) for b in points] + [(a, len(secret)) for a in points]
        pairs += itertools.pairwise(points)
    return {secret[a:b] for a, b in pairs if b - a >= MIN_LENGTH}


def _escaped(text: str) -> set[str]:
    """`text` as it looks inside a JSON string, a Python repr, or a URL."""
    python = text.encode("unicode_escape").decode("ascii")
    return {
        text,
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        python,
        python.replace("'", "\\'"),
        text.replace("\\", "\\\\").replace("'", "\\'"),
        quote(text, safe=""),
    }


def base64_cores(secret: str) -> set[str]:
    """The base64 characters that encode only `secret`, at each of the 3 alignments.

    A Basic token is base64("login:secret"); whatever the login, the secret starts at
    one of three offsets within a 3-byte group, and the characters of the groups
    entirely inside it are the same for every login of that length modulo 3.
    """
    raw = secret.encode("utf-8", "surrogatepass")
    cores = set()
    for lead in range(3):
        encoded = base64.b64encode(b"\0" * lead + raw).decode("ascii")
        start = 4 if lead else 0
        end = len(encoded) - (4 if (lead + len(raw)) % 3 else 0)
        core = encoded[start:end]
        if len(core) >= MIN_LENGTH:
            cores.add(core)
    return cores


def basic_token(login: str, password: str) -> str:
    """The base64 part of an HTTP Basic Authorization header (RFC 7617, UTF-8)."""
    return base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


class Scrubber:
    """Replaces every form of the given secrets in a text with `***`."""

    def __init__(self, secrets: Iterable[str] = (), exact: Iterable[str] = ()) -> None:
        """`secrets` are scrubbed with their pieces and escaped forms; `exact` as given."""
        found: set[str] = {s for s in exact if len(s) >= MIN_LENGTH}
        for secret in secrets:
            if not secret:
                continue
            found |= base64_cores(secret)
            for piece in pieces(secret):
                found |= _escaped(piece)
        found.discard(REDACTED)
        self._candidates = sorted((s for s in found if len(s) >= MIN_LENGTH), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._candidates)

    def __call__(self, text: str) -> str:
        for candidate in self._candidates:
            if candidate in text:
                text = text.replace(candidate, REDACTED)
        return text

    @classmethod
    def for_dsn(cls, dsn: str, environ: Mapping[str, str] | None = None) -> Scrubber:
        """Scrubs the password of `dsn` (every reading of it) and PGPASSWORD."""
        return cls([*dsn_passwords(dsn), *environment_secrets(environ)])

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> Scrubber:
        """Scrubs every secret the settings (and PGPASSWORD) hold."""
        return cls(*settings_secrets(settings, environ))


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secrets the PostgreSQL driver reads from the environment."""
    env = os.environ if environ is None else environ
    return [value for value in (env.get("PGPASSWORD", ""),) if value]


def settings_secrets(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """(secrets, exact strings) to scrub: passwords, keys, and their Basic tokens."""
    secrets = [*dsn_passwords(settings.database.dsn.get_secret_value())]
    secrets += environment_secrets(environ)
    aculab = settings.aculab
    login = f"{aculab.cloud_id}/{aculab.username}"
    tokens: list[str] = []
    key = aculab.api_access_key.get_secret_value()
    if key:
        secrets.append(key)
        tokens.append(basic_token(login, key))
    for service, password in aculab.service_passwords.items():
        value = password.get_secret_value()
        if value:
            secrets.append(value)
            tokens.append(basic_token(f"{login}/{service}", value))
    webhook = settings.listener.webhook_secret.get_secret_value()
    if webhook:
        secrets.append(webhook)
    # Any user name goes with it: its Basic tokens are caught by their base64 cores.
    dashboard = settings.dashboard.password.get_secret_value()
    if dashboard:
        secrets.append(dashboard)
    return secrets, tokens
