"""Typed client for the Aculab Cloud web services the engine uses.

One instance owns one aiohttp ClientSession for the whole process. Every
failure surfaces as an AculabError subclass that says whether trying again can
help (TransientError) or not (PermanentError, AuthenticationError).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import quote

import aiohttp

from campaign import assumptions
from campaign.destinations import classify
from campaign.settings import AccountType, AculabSettings, HttpSettings

MAX_TOKEN_LENGTH = 5000  # [doc] service_start: token of up to 5000 characters
MAX_RAW_ANSWER = 10_000
INCOMPLETE_REQUEST = "Can not write request body"
"""How aiohttp's error starts when it could not finish writing the request."""
"""Characters of an unusable answer kept for the operator."""
CALL_FIELDS = assumptions.CALL_OBJECT_KEYS


class AculabError(Exception):
    """A request to Aculab did not succeed.

    `status` is the HTTP status (None when no answer arrived), `code`, `text`
    and `details` come from Aculab's error JSON when it sent one.
    """

    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        text: str | None = None,
        details: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.text = text
        self.details = list(details)

    @property
    def reason(self) -> str:
        """One line for an operator: Aculab's own words when it gave any."""
        parts = [self.text or str(self)]
        if self.code:
            parts.insert(0, f"[{self.code}]")
        if self.details:
            parts.append("; ".join(str(d) for d in self.details[:5]))
        return " ".join(parts)


class TransientError(AculabError):
    """Timeout, dropped connection, HTTP 5xx, 408 or 429: the same request may be sent again.

    `may_have_started` says whether this request can have started calls
    (docs/aculab.md, in doubt): False when it never reached Aculab (no connection, DNS or
    TLS failure, a connect timeout) or was answered 429; True when it was written
    and no usable answer came back (a read timeout, a reset, a 5xx, a body that is
    not JSON). `outage` says whether it counts towards Aculab being unreachable
    (every failure but a 429, which is Aculab answering "slow down").
    """

    transient = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        may_have_started: bool = True,
        outage: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.may_have_started = may_have_started
        self.outage = outage


class PermanentError(AculabError):
    """HTTP 4xx (other than 429): sending the same request again gives the same answer."""


class AuthenticationError(PermanentError):
    """HTTP 401/403, or no password configured for the service."""


class NotFoundError(PermanentError):
    """HTTP 404: unknown instance id or service."""


class CallValidationError(PermanentError):
    """A call object was refused before anything was sent; `details` names the list index."""


class UnusableAnswer(AculabError):
    """HTTP 200 whose body is JSON but not a list of references: the calls started.

    `raw` is the body as received, for the operator who resolves the batch.
    """

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message, status=200, text=message)
        self.raw = raw


def sip_headers_problem(value: Any) -> str | None:
    """Why `value` is not a valid extra_sip_headers list, or None when it is."""
    if not isinstance(value, list):
        return "extra_sip_headers must be a list of {name, value} objects"
    seen: set[str] = set()
    for i, header in enumerate(value):
        if not isinstance(header, Mapping) or set(header) != {"name", "value"}:
            return f"extra_sip_headers[{i}] must be an object with exactly 'name' and 'value'"
        name, val = header["name"], header["value"]
        if not isinstance(name, str) or not isinstance(val, str):
            return f"extra_sip_headers[{i}]: name and value must be strings"
        if not name or any(c.isspace() or c == ":" for c in name):
            return f"extra_sip_headers[{i}]: header name must be a non-empty token"
        if any(c in "\r\n" for c in val):
            return f"extra_sip_headers[{i}]: header value must be one line"
        if name.casefold() in seen:
            return f"extra_sip_headers[{i}]: header {name!r} appears twice"
        seen.add(name.casefold())
    return None


def call_problem(call: Mapping[str, Any]) -> str | None:
    """Why Aculab would refuse this call object, as far as we can tell locally."""
    unknown = set(call) - CALL_FIELDS
    if unknown:
        return f"unknown call field(s): {', '.join(sorted(unknown))}"
    to = call.get("to")
    if not isinstance(to, str) or not to.strip():
        return "'to' is required"
    if classify(to) == "tel" and not call.get("from"):
        return "'from' (a validated caller ID) is required when 'to' is a telephone number"
    for key in ("from", "token", "outbound_parameters"):
        if key in call and not isinstance(call[key], str):
            return f"'{key}' must be a string"
    token = call.get("token")
    if isinstance(token, str) and len(token) > MAX_TOKEN_LENGTH:
        return f"'token' is {len(token)} characters; Aculab accepts at most {MAX_TOKEN_LENGTH}"
    if "extra_sip_headers" in call:
        return sip_headers_problem(call["extra_sip_headers"])
    return None


def encode_rest_calls(calls: Sequence[Mapping[str, Any]], account_type: AccountType) -> str:
    """The exact `rest_calls` string: a JSON list, or one object for Trial accounts.

    Raises CallValidationError naming every bad index before anything is sent.
    """
    if not calls:
        raise CallValidationError("no calls to send", code="0001", text="rest_calls is empty")
    details = []
    for i, call in enumerate(calls):
        problem = call_problem(call)
        if problem is not None:
            details.append(assumptions.object_detail(i, problem))
    if details:
        raise CallValidationError(
            "call objects refused before sending", code="0002", text="invalid call", details=details
        )
    if account_type == "trial":
        if len(calls) != 1:
            raise CallValidationError(
                "Trial accounts start one call per request",
                code=assumptions.TRIAL_LIST_CODE,
                text=assumptions.TRIAL_LIST_TEXT,
            )
        return json.dumps(dict(calls[0]), separators=(",", ":"), ensure_ascii=False)
    return json.dumps([dict(c) for c in calls], separators=(",", ":"), ensure_ascii=False)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


async def _error_from_response(resp: aiohttp.ClientResponse, what: str) -> AculabError:
    body = await resp.text(errors="replace")
    code = text = None
    details: list[Any] = []
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        code = str(err["code"]) if "code" in err else None
        text = str(err["text"]) if "text" in err else None
        if isinstance(err.get("details"), list):
            details = err["details"]
    if text is None:
        snippet = " ".join(body.split())[:200]
        text = snippet or resp.reason or f"HTTP {resp.status}"
    message = f"{what}: HTTP {resp.status} {text}"
    kw: dict[str, Any] = {"status": resp.status, "code": code, "text": text, "details": details}
    # 408: a proxy on the way may have passed the request on before it gave up,
    # so the calls may have started: re-send with the same id, as for a timeout.
    if resp.status == assumptions.THROTTLED_STATUS:
        # [assumed] a 429 started nothing.
        return TransientError(
            message,
            retry_after=_retry_after(resp.headers),
            may_have_started=not assumptions.THROTTLED_STARTS_NOTHING,
            outage=False,
            **kw,
        )
    if resp.status == 408 or resp.status >= 500:
        return TransientError(message, retry_after=_retry_after(resp.headers), **kw)
    if resp.status in (401, 403):
        return AuthenticationError(message, **kw)
    if resp.status == 404:
        return NotFoundError(message, **kw)
    return PermanentError(message, **kw)


class AculabClient:
    """The engine's only way to Aculab. Use as `async with AculabClient(...) as client`."""

    def __init__(self, aculab: AculabSettings, http: HttpSettings) -> None:
        self._aculab = aculab
        self._http = http
        self._base = str(aculab.base_url).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        url = self._aculab.base_url
        tls: ssl.SSLContext | bool
        if url.scheme == "http":
            # Settings allow plain http only on loopback or with allow_plain_http.
            tls = False
        else:
            tls = ssl.create_default_context()
            tls.minimum_version = ssl.TLSVersion.TLSv1_2  # [doc] TLS 1.2+ only
        timeout = aiohttp.ClientTimeout(
            # A body that trickles in must not hold a request open past both
            # timeouts: each read would be within sock_read, the whole would not.
            total=self._http.connect_timeout + self._http.read_timeout,
            connect=self._http.connect_timeout,
            sock_connect=self._http.connect_timeout,
            sock_read=self._http.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._http.max_connections, ssl=tls),
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": self._http.user_agent},
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AculabClient used outside `async with`")
        return self._session

    def _account_auth(self) -> str:
        key = self._aculab.api_access_key.get_secret_value()
        if not key:
            raise AuthenticationError(
                "no API access key configured (set aculab.api_access_key)",
                text="no API access key configured",
            )
        return _basic_auth(f"{self._aculab.cloud_id}/{self._aculab.username}", key)

    def _service_auth(self, service: str) -> str:
        password = self._aculab.service_password(service)
        if password is None or not password.get_secret_value():
            raise AuthenticationError(
                f"no outbound password configured for service {service!r}",
                text=f"no password for service {service!r} in aculab.service_passwords",
            )
        login = f"{self._aculab.cloud_id}/{self._aculab.username}/{service}"
        return _basic_auth(login, password.get_secret_value())

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        auth: str,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        url = f"{self._base}{path}"
        try:
            async with self.session.request(
                method, url, headers={"Authorization": auth}, data=data, params=params
            ) as resp:
                if resp.status != 200:
                    raise await _error_from_response(resp, what)
                body = await resp.read()
        except AculabError:
            raise
        # Before the request was written: it cannot have reached Aculab. A connect
        # timeout fires before the total timeout, which is connect + read.
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientError(
                f"{what}: no connection within {self._http.connect_timeout:g}s",
                text="connect timeout",
                may_have_started=False,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Refused, unreachable, DNS and TLS handshake failures all land here.
            raise TransientError(
                f"{what}: cannot connect: {exc}", text="cannot connect", may_have_started=False
            ) from exc
        # After the request was (perhaps) written: in doubt.
        except TimeoutError as exc:
            raise TransientError(f"{what}: no answer in time", text="timeout") from exc
        except aiohttp.ClientConnectionError as exc:
            detail = f"connection failed: {type(exc).__name__}: {exc}"
            raise TransientError(
                f"{what}: {detail}",
                text=detail[:300],
                # aiohttp's words when the request body could not be written: an
                # incomplete request starts nothing. A reset or a close before any
                # answer may follow a complete one, so those stay in doubt.
                may_have_started=not str(exc).startswith(INCOMPLETE_REQUEST),
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"{what}: {exc}", text="client error") from exc
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise TransientError(
                f"{what}: HTTP 200 with a body that is not JSON", status=200, text="bad body"
            ) from exc

    async def service_start(
        self, service: str, rest_calls: str, unique_id: str | None = None
    ) -> list[str]:
        """Start the calls in `rest_calls` (sent as given, byte for byte).

        Returns the reference ids in request order.
        """
        form = {"rest_calls": rest_calls}
        if unique_id is not None:
            form["unique_id"] = unique_id
        auth = self._service_auth(service)
        body = await self._request("POST", "/service_start", "service_start", auth=auth, data=form)
        if not isinstance(body, list) or not all(isinstance(r, str) and r for r in body):
            # Aculab answered 200, so the calls started; a replay would give the same
            # answer. The dispatcher parks the batch with this body for an operator.
            raise UnusableAnswer(
                "service_start: HTTP 200 but the body is not a list of reference strings",
                raw=json.dumps(body, ensure_ascii=False)[:MAX_RAW_ANSWER],
            )
        return body

    async def application_status(self, reference: str) -> dict[str, Any]:
        body = await self._request(
            "GET",
            "/application_status",
            "application_status",
            auth=self._account_auth(),
            params={"application_instance_id": reference},
        )
        if not isinstance(body, dict):
            raise TransientError("application_status: body is not an object", status=200)
        return body

    async def queue_length(self, service: str) -> int:
        body = await self._request(
            "GET",
            f"/service/v1/outbound/{_path_segment(service)}/queue",
            "queue_length",
            auth=self._account_auth(),
        )
        if not isinstance(body, dict) or not isinstance(body.get("length"), int):
            raise TransientError("queue_length: body has no integer 'length'", status=200)
        return int(body["length"])

    async def outbound_queues(self) -> dict[str, int]:
        body = await self._request(
            "GET", "/service/v1/outbound_queues", "outbound_queues", auth=self._account_auth()
        )
        if not isinstance(body, list):
            raise TransientError("outbound_queues: body is not a list", status=200)
        return {
            str(q["service_name"]): int(q["length"])
            for q in body
            if isinstance(q, dict) and "service_name" in q and isinstance(q.get("length"), int)
        }

    async def purge_queue(self, service: str) -> Any:
        return await self._request(
            "DELETE",
            f"/service/v1/outbound/{_path_segment(service)}/queue",
            "purge_queue",
            auth=self._account_auth(),
        )


def _basic_auth(login: str, password: str) -> str:
    """An HTTP Basic Authorization header value (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _path_segment(value: str) -> str:
    return quote(value, safe="")
