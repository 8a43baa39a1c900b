"""PostgreSQL connection strings, read as libpq and as asyncpg read them: for messages only.

asyncpg reads a DSN with `urllib.parse`; libpq (psql and every other tool an operator
may have tested the DSN with) has its own parser, and accepts a keyword/value form
(`host=db password='it''s'`) that asyncpg does not. A password with an unencoded `/`,
`#`, `?` or `@` is cut at different places by the two, and either may echo a piece of it
in an error. So this module never guesses:

* `describe_dsn(dsn)` names `host:port/database` only when the DSN is understood: a
  keyword/value string libpq would accept, or a URI that libpq and asyncpg read alike.
  Anything else is `<DSN>`; no text that was not understood is ever echoed.
* `dsn_passwords(dsn)` lists every string that may be the password under any of those
  readings, as written and decoded, for the redactor (`campaign.redact`) to scrub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, unquote_plus, urlparse

UNKNOWN = "<DSN>"
"""What a message says instead of a DSN it does not fully understand."""

URI_SCHEMES = ("postgresql://", "postgres://")
SECRET_KEYWORDS = frozenset({"password", "sslpassword"})

# libpq's connection keywords (PQconninfoOptions): libpq refuses any other, so a DSN
# with another "keyword" is not understood here either (it may be a cut-up password).
KEYWORDS = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "dbname",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "options",
        "passfile",
        "password",
        "port",
        "replication",
        "require_auth",
        "requirepeer",
        "requiressl",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    }
)

_SPACE = " \t\n\r\f\v"  # C isspace() in the "C" locale, as libpq uses it
_LENIENT_SECRET = re.compile(r"password\s*=\s*")  # sslpassword too
# A host name, an IPv4 or IPv6 address, or a unix-socket directory: what a host can be.
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?|/[^\s@#?]*")


@dataclass(frozen=True)
class Target:
    """What a DSN points at, decoded; None where the DSN says nothing."""

    hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    dbname: str | None = None
    user: str | None = None
    password: str | None = None


def is_uri(dsn: str) -> bool:
    return dsn[:16].lower().startswith(URI_SCHEMES)


# --- keyword/value form (libpq's conninfo_parse) -----------------------------------------


@dataclass(frozen=True)
class Setting:
    keyword: str
    value: str
    """Unquoted and unescaped, as libpq passes it on."""
    written: str
    """As it stands in the DSN, quotes and backslashes included."""


def parse_keywords(dsn: str) -> list[Setting] | None:
    """The settings of a keyword/value DSN; None where libpq would refuse the string."""
    settings: list[Setting] = []
    i, n = 0, len(dsn)
    while i < n:
        if dsn[i] in _SPACE:
            i += 1
            continue
        start = i
        while i < n and dsn[i] != "=" and dsn[i] not in _SPACE:
            i += 1
        keyword = dsn[start:i]
        while i < n and dsn[i] in _SPACE:
            i += 1
        if i >= n or dsn[i] != "=" or keyword not in KEYWORDS:
            return None
        i += 1
        while i < n and dsn[i] in _SPACE:
            i += 1
        value_start = i
        value: list[str] = []
        quoted = i < n and dsn[i] == "'"
        if quoted:
            i += 1
        while True:
            if i >= n:
                if quoted:
                    return None  # unterminated quoted string
                break
            char = dsn[i]
            if char == "\\":
                # A backslash takes the next character literally, quoted or not.
                i += 1
                if i < n:
                    value.append(dsn[i])
                    i += 1
                continue
            if quoted and char == "'":
                i += 1
                break
            if not quoted and char in _SPACE:
                break
            value.append(char)
            i += 1
        settings.append(Setting(keyword, "".join(value), dsn[value_start:i]))
    return settings


def _keyword_target(settings: list[Setting]) -> Target:
    found = {s.keyword: s.value for s in settings}  # the last one wins, as in libpq
    hosts = found.get("host") or found.get("hostaddr") or ""
    return Target(
        hosts=tuple(hosts.split(",")) if hosts else (),
        ports=tuple(found["port"].split(",")) if found.get("port") else (),
        dbname=found.get("dbname") or None,
        user=found.get("user") or None,
        password=found.get("password"),
    )


# --- URI form ---------------------------------------------------------------------------------


def _libpq_unquote(text: str) -> str | None:
    """libpq's percent-decoding: a '%' not followed by two hex digits, or %00, is refused."""
    if "%" not in text:
        return text
    out = bytearray()
    raw = text.encode("utf-8", "surrogatepass")
    i = 0
    while i < len(raw):
        if raw[i] == ord("%"):
            pair = raw[i + 1 : i + 3].decode("ascii", "replace")
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                return None
            if pair == "00":
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _netlocs(text: str, decode: bool) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Hosts and ports of `host[:port],[v6]:port,...`; None when it is not that."""
    hosts: list[str] = []
    ports: list[str] = []
    for part in text.split(","):
        if part.startswith("["):
            addr, bracket, after = part[1:].partition("]")
            if not bracket or not addr or (after and not after.startswith(":")):
                return None
            port = after[1:]
        else:
            addr, _, port = part.partition(":")
        if decode:
            decoded_addr, decoded_port = _libpq_unquote(addr), _libpq_unquote(port)
            if decoded_addr is None or decoded_port is None:
                return None
            addr, port = decoded_addr, decoded_port
        hosts.append(addr)
        ports.append(port)
    return tuple(hosts), tuple(ports)


def _uri_libpq(dsn: str) -> Target | None:
    """The URI as libpq's conninfo_uri_parse_options reads it; None where libpq refuses it."""
    scheme = next(s for s in URI_SCHEMES if dsn.lower().startswith(s))
    rest = dsn[len(scheme) :]
    user = password = None
    # The user information ends at the first '@', unless a '/' comes before any '@'.
    at = re.search(r"[@/]", rest)
    if at is not None and at.group() == "@":
        name, colon, secret = rest[: at.start()].partition(":")
        user = _libpq_unquote(name) if name else None
        password = _libpq_unquote(secret) if colon and secret else None
        if (name and user is None) or (colon and secret and password is None):
            return None
        rest = rest[at.end() :]
    netloc, sep, after = _split_once(rest, "/?")
    hosts_ports = _netlocs(netloc, decode=True) if netloc else ((), ())
    if hosts_ports is None:
        return None
    dbname: str | None = None
    query = ""
    if sep == "/":
        path, _, query = after.partition("?")
        dbname = _libpq_unquote(path) if path else None
        if path and dbname is None:
            return None
    elif sep == "?":
        query = after
    options: dict[str, str] = {}
    if query:
        for piece in query.split("&"):
            key, eq, value = piece.partition("=")
            if not eq or "=" in value:
                return None
            decoded_key, decoded_value = _libpq_unquote(key), _libpq_unquote(value)
            if decoded_key is None or decoded_value is None:
                return None
            # Other keys are refused by libpq but passed on by asyncpg as server
            # settings: neither reading is in doubt about them.
            options[decoded_key] = decoded_value
    hosts, ports = hosts_ports
    if "host" in options:
        hosts = tuple(options["host"].split(","))
    if "port" in options:
        ports = tuple(options["port"].split(","))
    return Target(
        hosts=hosts if any(hosts) else (),
        ports=ports if any(ports) else (),
        dbname=options.get("dbname", dbname) or None,
        user=options.get("user", user) or None,
        password=options.get("password", password),
    )


def _split_once(text: str, separators: str) -> tuple[str, str, str]:
    for i, char in enumerate(text):
        if char in separators:
            return text[:i], char, text[i + 1 :]
    return text, "", ""


def _uri_asyncpg(dsn: str) -> Target | None:
    """The URI as asyncpg 0.29-0.32 reads it (urllib.parse); None where it would fail."""
    try:
        parts = urlparse(dsn)
        query = parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError:
        return None
    if parts.scheme not in ("postgresql", "postgres"):
        return None
    auth, at, hostspec = parts.netloc.partition("@")
    if not at:
        auth, hostspec = "", parts.netloc
    name, _, secret = auth.partition(":")
    hosts_ports = _netlocs(hostspec, decode=False) if hostspec else ((), ())
    if hosts_ports is None:
        return None
    hosts = tuple(unquote(h) for h in hosts_ports[0])
    ports = tuple(unquote(p) for p in hosts_ports[1])
    last = {key: values[-1] for key, values in query.items()}
    if not any(hosts) and "host" in last:
        hosts = tuple(last["host"].split(","))
    if not any(ports) and "port" in last:
        ports = tuple(last["port"].split(","))
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return Target(
        hosts=hosts if any(hosts) else (),
        ports=ports if any(ports) else (),
        dbname=unquote(path) or last.get("dbname") or last.get("database") or None,
        user=unquote(name) or last.get("user") or None,
        password=unquote(secret) or last.get("password"),
    )


def read_dsn(dsn: str) -> Target | None:
    """What `dsn` points at, when that is certain; None when it is not understood.

    A URI is understood when libpq and asyncpg read it alike (a password with an
    unencoded delimiter makes them differ); a keyword/value string when libpq would
    accept it.
    """
    if is_uri(dsn):
        by_libpq = _uri_libpq(dsn)
        if by_libpq is None or by_libpq != _uri_asyncpg(dsn):
            return None
        return by_libpq
    settings = parse_keywords(dsn)
    if not settings:
        return None
    return _keyword_target(settings)


def describe_dsn(dsn: str, environ: Mapping[str, str] | None = None) -> str:
    """`host:port/database` of a DSN, never its password (for messages and logs).

    Mirrors libpq/asyncpg defaults (PG* environment variables, then built-in ones) so
    the description names the server a connection attempt actually targets. A DSN
    that is not understood is `<DSN>`: guessing could echo a piece of a password.
    """
    env = os.environ if environ is None else environ
    target = read_dsn(dsn)
    if target is None or "@" in (target.dbname or ""):
        # An '@' past the user information is a password's, cut at a '/' before it.
        return UNKNOWN
    hosts = list(target.hosts) or env.get("PGHOST", "").split(",")
    ports = list(target.ports) or env.get("PGPORT", "").split(",")
    if not all(_HOST.fullmatch(h) for h in hosts if h):
        return UNKNOWN
    if not all(p.isascii() and p.isdigit() for p in ports if p):
        return UNKNOWN
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return UNKNOWN
    places = []
    for host, port in zip(hosts, ports, strict=True):
        shown = host or "localhost"
        if ":" in shown and not shown.startswith("/"):
            shown = f"[{shown}]"  # an IPv6 address: keep host and port apart
        places.append(f"{shown}:{port or '5432'}")
    database = (
        target.dbname or env.get("PGDATABASE", "") or target.user or env.get("PGUSER", "") or "?"
    )
    return f"{','.join(places)}/{database}"


# --- every string that may be the password ----------------------------------------------------


def _decoded(text: str) -> list[str]:
    return [text, unquote(text), unquote_plus(text), _libpq_unquote(text) or text]


def _uri_passwords(dsn: str) -> list[str]:
    scheme = next(s for s in URI_SCHEMES if dsn.lower().startswith(s))
    rest = dsn[len(scheme) :]
    found: list[str] = []
    # Each '@' may be the one that ends the user information (libpq takes the first,
    # urllib the last before the path, a person the one before the host).
    for at in (i for i, c in enumerate(rest) if c == "@"):
        _, colon, secret = rest[:at].partition(":")
        if colon:
            found += _decoded(secret)
    # Each '?' may start the query; a parameter value runs to the next '&' that starts
    # another key=value parameter (libpq would refuse a piece without '=').
    for mark in (i for i, c in enumerate(rest) if c == "?"):
        pieces = rest[mark + 1 :].split("&")
        for index, piece in enumerate(pieces):
            key, eq, value = piece.partition("=")
            if not eq or (_libpq_unquote(key) or key) not in SECRET_KEYWORDS:
                continue
            values = [value]
            for more in pieces[index + 1 :]:
                name, is_setting, _ = more.partition("=")
                if is_setting and (_libpq_unquote(name) or name) in KEYWORDS:
                    break
                values.append(more)
            found += _decoded(value) + _decoded("&".join(values))
            # urllib ends the query at '#'.
            found += _decoded(value.partition("#")[0])
    return found


def _lenient_keyword_passwords(dsn: str) -> list[str]:
    # Not a string libpq accepts, so no reading is certain: everything after
    # `password=` may be the password.
    found: list[str] = []
    for match in _LENIENT_SECRET.finditer(dsn):
        tail = dsn[match.end() :]
        found += [tail, re.split(r"\s", tail, maxsplit=1)[0]]
        if tail.startswith("'"):
            found.append(tail[1:].partition("'")[0])
    return found


def dsn_passwords(dsn: str) -> list[str]:
    """Every string that may be (the written or decoded form of) the DSN's password.

    Under every reading: libpq's and asyncpg's, and, where the DSN is malformed, every
    place a password could end. Over-inclusive on purpose: the redactor scrubs what
    it is given, and a piece of a host name scrubbed by mistake costs less than a
    piece of a password printed.
    """
    found: list[str] = []
    if is_uri(dsn):
        found += _uri_passwords(dsn)
        target = _uri_libpq(dsn)
        if target is not None and target.password:
            found.append(target.password)
    else:
        settings = parse_keywords(dsn)
        if settings is None:
            found += _lenient_keyword_passwords(dsn)
        else:
            for setting in settings:
                if setting.keyword in SECRET_KEYWORDS:
                    found += [setting.value, setting.written]
    unique: dict[str, None] = dict.fromkeys(s for s in found if s)
    return list(unique)
