"""A plain aiohttp client for the simulator's API (not the project's client), so that the
simulator's tests pin down the contract independently of it: requests, credentials and
the documented error shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from campaign.simulator import Simulator

SERVICE = "MyOutboundService"
PASSWORD = "sim-password"
TO = "441908273800"
FROM = "441908273801"


def number(i: int) -> str:
    """The i-th of 10,000 valid, non-premium UK numbers."""
    return f"44190827{i:04d}"


def call(to: str = TO, from_: str | None = FROM, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"to": to, **extra}
    if from_ is not None:
        obj["from"] = from_
    return obj


Auth = dict[str, str]
"""Request headers carrying HTTP Basic credentials."""


def basic(login: str, password: str) -> Auth:
    return {"Authorization": aiohttp.encode_basic_auth(login, password)}


def service_auth(sim: Simulator, service: str = SERVICE, password: str = PASSWORD) -> Auth:
    return basic(f"{sim.config.cloud_id}/{sim.config.username}/{service}", password)


def account_auth(sim: Simulator, key: str | None = None) -> Auth:
    login = f"{sim.config.cloud_id}/{sim.config.username}"
    return basic(login, sim.config.api_access_key if key is None else key)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


async def answer(response: aiohttp.ClientResponse) -> Answer:
    # .json() insists on an application/json answer: errors must be JSON too.
    return Answer(response.status, await response.json(), dict(response.headers))


async def service_start(
    http: aiohttp.ClientSession,
    sim: Simulator,
    rest_calls: Any,
    *,
    unique_id: str | None = None,
    method: str = "POST",
    param: str = "rest_calls",
    headers: Auth | None = None,
    within: float | None = None,
) -> Answer:
    value = rest_calls if isinstance(rest_calls, str) else json.dumps(rest_calls)
    fields = {param: value}
    if unique_id is not None:
        fields["unique_id"] = unique_id
    async with http.request(
        method,
        sim.base_url + "/service_start",
        params=fields if method != "POST" else None,
        data=fields if method == "POST" else None,
        headers=headers or service_auth(sim),
        timeout=aiohttp.ClientTimeout(total=within),
    ) as response:
        return await answer(response)


async def application_status(
    http: aiohttp.ClientSession,
    sim: Simulator,
    reference: str,
    *,
    method: str = "GET",
    headers: Auth | None = None,
) -> Answer:
    async with http.request(
        method,
        sim.base_url + "/application_status",
        params={"application_instance_id": reference},
        headers=headers or account_auth(sim),
    ) as response:
        return await answer(response)


def assert_error(got: Answer, status: int, code: str) -> dict[str, Any]:
    """The documented error shape, with this status and code; returns `error`."""
    assert got.status == status, got.body
    assert set(got.body) == {"error", "request"}
    error: dict[str, Any] = got.body["error"]
    assert error["code"] == code
    assert (
        {"code", "text", "datetime", "link"}
        <= set(error)
        <= {
            "code",
            "text",
            "details",
            "datetime",
            "link",
        }
    )
    assert isinstance(error["text"], str)
    assert error["text"]
    assert set(got.body["request"]) == {"url", "datetime"}
    assert re.fullmatch(r"[0-9]{4}|HTTP [45][0-9]{2}", code)
    return error
