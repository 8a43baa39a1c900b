"""Authentication (§1): HTTP Basic with cloudID/username/service and the service's
password for service_start, cloudID/username and the API access key elsewhere."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web

from campaign.simulator.config import SimulatorConfig
from campaign.simulator.refusals import refused_with_status, unauthorized


def decode_basic_auth(header: str) -> tuple[str, str] | None:
    """(login, password) from a Basic Authorization header, None if malformed.

    Written out because aiohttp 3.14 deprecates BasicAuth, decode included."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    login, colon, password = text.partition(":")
    return (login, password) if colon else None


class Authenticator:
    """Checks a request's credentials against the account's configuration, which
    is read at each request (a test may change it while the simulator runs)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config

    def service(self, request: web.Request) -> str:
        """The outbound service named and authenticated by the request."""
        config = self._config
        login, password = _basic_auth(request)
        prefix = f"{config.cloud_id}/{config.username}/"
        service = login[len(prefix) :] if login.startswith(prefix) else ""
        expected = config.service_passwords.get(service)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise unauthorized("cloudID/username/service or service password wrong")
        if service in config.disabled_services:
            raise refused_with_status(
                403, f"outbound service {service!r} is disabled", outcome="forbidden"
            )
        return service

    def account(self, request: web.Request) -> None:
        config = self._config
        login, password = _basic_auth(request)
        key = config.api_access_key
        expected_login = f"{config.cloud_id}/{config.username}"
        if login != expected_login or not hmac.compare_digest(password.encode(), key.encode()):
            raise unauthorized("cloudID/username or API access key wrong")


def _basic_auth(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization")
    if header is None:
        raise unauthorized("HTTP Basic authentication required")
    credentials = decode_basic_auth(header)
    if credentials is None:
        raise unauthorized("malformed Authorization header")
    return credentials
