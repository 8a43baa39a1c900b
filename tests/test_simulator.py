"""The simulator follows docs/aculab.md: refused when wrong, accepted when right.

Everything goes over real HTTP on loopback with a plain aiohttp client (not the
project's client), so these tests pin down the contract independently of it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign import assumptions
from campaign.simulator import (
    CALL_CAUSES,
    FAULT_KINDS,
    Faults,
    Simulator,
    SimulatorConfig,
)
from tests.fixtures_sim import MakeSimulator, ManualClock
from tests.helpers import REPO_ROOT
from tests.simulator_api import (
    FROM,
    PASSWORD,
    SERVICE,
    TO,
    account_auth,
    answer,
    application_status,
    assert_error,
    basic,
    call,
    number,
    service_auth,
    service_start,
)

SIP_TO = "sip:bob@example.com"
REFERENCE = re.compile(r"[0-9a-f]{8}_0\.[0-9]+\.[0-9]+")


async def queue_length(http: aiohttp.ClientSession, sim: Simulator, service: str = SERVICE) -> int:
    async with http.get(
        f"{sim.base_url}/service/v1/outbound/{service}/queue", headers=account_auth(sim)
    ) as response:
        got = await answer(response)
    assert got.status == 200
    assert set(got.body) == set(assumptions.QUEUE_BODY_KEYS)
    assert got.body["service_name"] == service
    length: int = got.body["length"]
    return length


# --------------------------------------------------------------------- auth


async def test_service_start_without_credentials_is_refused_401_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        simulator.base_url + "/service_start", data={"rest_calls": json.dumps(call())}
    ) as response:
        got = await answer(response)
    assert_error(got, 401, "HTTP 401")
    assert got.headers["WWW-Authenticate"].startswith("Basic")
    assert simulator.started_count() == 0


@pytest.mark.parametrize(
    ("login", "password"),
    [
        pytest.param("1-2-0/bob@example.com/MyOutboundService", "wrong", id="wrong password"),
        pytest.param("1-2-0/bob@example.com/MyOutboundService", "sim-api-key", id="api key"),
        pytest.param("9-9-9/bob@example.com/MyOutboundService", "sim-password", id="cloud id"),
        pytest.param("1-2-0/eve@example.com/MyOutboundService", "sim-password", id="username"),
        pytest.param("1-2-0/bob@example.com/OtherService", "sim-password", id="unknown service"),
        pytest.param("1-2-0/bob@example.com", "sim-password", id="no service in login"),
        pytest.param("1-2-0/bob@example.com", "sim-api-key", id="account credentials"),
    ],
)
async def test_service_start_with_wrong_credentials_is_refused_401_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession, login: str, password: str
) -> None:
    got = await service_start(http, simulator, call(), headers=basic(login, password))
    assert_error(got, 401, "HTTP 401")
    assert simulator.started_count() == 0
    assert simulator.request_count("service_start", "unauthorized") == 1


async def test_each_outbound_service_accepts_only_its_own_password(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(service_passwords={"A": "pa", "B": "pb"}))
    refused = await service_start(http, sim, call(), headers=service_auth(sim, "A", "pb"))
    assert_error(refused, 401, "HTTP 401")
    assert (
        await service_start(http, sim, call(), headers=service_auth(sim, "A", "pa"))
    ).status == 200
    assert (
        await service_start(http, sim, call(), headers=service_auth(sim, "B", "pb"))
    ).status == 200
    assert [c.service for c in sim.calls] == ["A", "B"]


async def test_disabled_service_with_right_password_is_refused_403_and_starts_nothing(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(
        SimulatorConfig(
            service_passwords={SERVICE: PASSWORD, "Off": "po"}, disabled_services=frozenset({"Off"})
        )
    )
    got = await service_start(http, sim, call(), headers=service_auth(sim, "Off", "po"))
    assert_error(got, 403, "HTTP 403")
    assert sim.started_count() == 0
    # A wrong password on a disabled service is still an authentication failure.
    wrong = await service_start(http, sim, call(), headers=service_auth(sim, "Off", "nope"))
    assert_error(wrong, 401, "HTTP 401")


async def test_application_status_needs_the_account_api_key_not_a_service_password(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    [reference] = (await service_start(http, simulator, call())).body
    with_service = await application_status(
        http, simulator, reference, headers=service_auth(simulator)
    )
    assert_error(with_service, 401, "HTTP 401")
    wrong_key = await application_status(
        http, simulator, reference, headers=account_auth(simulator, "nope")
    )
    assert_error(wrong_key, 401, "HTTP 401")
    assert (await application_status(http, simulator, reference)).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/service/v1/outbound_queues"),
        ("GET", f"/service/v1/outbound/{SERVICE}/queue"),
        ("DELETE", f"/service/v1/outbound/{SERVICE}/queue"),
    ],
)
async def test_queue_endpoints_need_the_account_api_key(
    simulator: Simulator, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    for auth in (None, service_auth(simulator), account_auth(simulator, "nope")):
        async with http.request(method, simulator.base_url + path, headers=auth) as response:
            assert_error(await answer(response), 401, "HTTP 401")
    async with http.request(
        method, simulator.base_url + path, headers=account_auth(simulator)
    ) as response:
        assert response.status == 200


# --------------------------------------------------------------------- parameters


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_service_start_by_get_query_string_or_post_form_starts_the_calls(
    simulator: Simulator, http: aiohttp.ClientSession, method: str
) -> None:
    got = await service_start(http, simulator, [call(), call(SIP_TO, None)], method=method)
    assert got.status == 200
    assert len(got.body) == 2
    assert simulator.started_count() == 2


async def test_documented_example_request_starts_two_calls_in_order(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    example = (
        '[ { "to" : "441908283800", "from" : "441908283801", "token" : "token1",'
        ' "outbound_parameters" : "some user data" }, { "to" : "sip:bob@acompany.com",'
        ' "token" : "token2", "extra_sip_headers": [ { "name": "X-AccountInfo",'
        ' "value": "bob/123456789" } ] } ]'
    )
    got = await service_start(http, simulator, example, method="GET")
    assert got.status == 200
    first, second = (simulator.call(ref) for ref in got.body)
    assert (first.to, first.from_, first.token, first.outbound_parameters) == (
        "441908283800",
        "441908283801",
        "token1",
        "some user data",
    )
    assert second.to == "sip:bob@acompany.com"
    assert second.extra_sip_headers == (("X-AccountInfo", "bob/123456789"),)


async def test_success_returns_one_unique_reference_per_object_in_request_order(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    objects = [call(number(i)) for i in range(5)] + [call("con:Room", None)]
    got = await service_start(http, simulator, objects)
    assert got.status == 200
    assert isinstance(got.body, list)
    assert len(got.body) == len(objects)
    assert len(set(got.body)) == len(objects)
    for reference, obj in zip(got.body, objects, strict=True):
        assert REFERENCE.fullmatch(reference)
        assert simulator.call(reference).to == obj["to"]
        # The references are the application_instance_ids (assumption).
        status = await application_status(http, simulator, reference)
        assert status.body["adr"]["application_instance_id"] == reference
    again = await service_start(http, simulator, objects)
    assert not set(again.body) & set(got.body)


async def test_legacy_outbound_parameters_alias_starts_calls(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    got = await service_start(http, simulator, [call(), call()], param="outbound_parameters")
    assert got.status == 200
    assert simulator.started_count() == 2


async def test_missing_rest_calls_is_refused_0001(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        simulator.base_url + "/service_start",
        data={"unique_id": "u1"},
        headers=service_auth(simulator),
    ) as response:
        assert_error(await answer(response), 400, "0001")
    assert simulator.started_count() == 0


@pytest.mark.parametrize(
    ("query", "form"),
    [
        pytest.param({"rest_calls": "A"}, {"rest_calls": "A"}, id="query and body"),
        pytest.param({}, [("rest_calls", "A"), ("rest_calls", "A")], id="twice in body"),
        pytest.param([("rest_calls", "A"), ("rest_calls", "A")], {}, id="twice in query"),
        pytest.param({}, {"rest_calls": "A", "outbound_parameters": "A"}, id="with alias"),
        pytest.param({}, [("outbound_parameters", "A")] * 2, id="alias twice"),
        pytest.param({"unique_id": "u"}, {"rest_calls": "A", "unique_id": "u"}, id="unique_id"),
    ],
)
async def test_parameter_given_twice_is_refused_0003_and_starts_nothing(
    simulator: Simulator,
    http: aiohttp.ClientSession,
    query: Any,
    form: Any,
) -> None:
    one_call = json.dumps(call())

    def fill(pairs: Any) -> list[tuple[str, str]]:
        items = pairs.items() if isinstance(pairs, dict) else pairs
        return [(k, one_call if v == "A" else v) for k, v in items]

    async with http.post(
        simulator.base_url + "/service_start",
        params=fill(query),
        data=fill(form),
        headers=service_auth(simulator),
    ) as response:
        assert_error(await answer(response), 400, "0003")
    assert simulator.started_count() == 0


@pytest.mark.parametrize(
    "rest_calls",
    [
        pytest.param("", id="empty string"),
        pytest.param("not json", id="not json"),
        pytest.param('{"to": "441908273800"', id="truncated"),
        pytest.param("42", id="number"),
        pytest.param('"441908273800"', id="string"),
        pytest.param("null", id="null"),
        pytest.param("true", id="boolean"),
        pytest.param("[]", id="empty list"),
        pytest.param("NaN", id="NaN"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply nested"),
    ],
)
async def test_rest_calls_not_an_object_or_non_empty_list_is_refused_0002(
    simulator: Simulator, http: aiohttp.ClientSession, rest_calls: str
) -> None:
    assert_error(await service_start(http, simulator, rest_calls), 400, "0002")
    assert simulator.started_count() == 0


async def test_empty_unique_id_is_refused_as_malformed(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    got = await service_start(http, simulator, call(), unique_id="")
    assert_error(got, 400, assumptions.EMPTY_UNIQUE_ID_CODE)
    assert simulator.started_count() == 0


async def test_head_and_other_methods_on_service_start_start_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    for method in ("PUT", "DELETE"):
        async with http.request(
            method,
            simulator.base_url + "/service_start",
            params={"rest_calls": json.dumps(call())},
            headers=service_auth(simulator),
        ) as response:
            assert_error(await answer(response), 405, "HTTP 405")
    async with http.head(
        simulator.base_url + "/service_start",
        params={"rest_calls": json.dumps(call())},
        headers=service_auth(simulator),
    ) as response:
        assert response.status == 405
    assert simulator.started_count() == 0


async def test_errors_come_back_as_html_unless_the_request_accepts_json(
    simulator: Simulator,
) -> None:
    url = simulator.base_url + "/service_start"
    # A bare session sends Accept: */*, which is not enough.
    async with aiohttp.ClientSession() as bare:
        async with bare.post(
            url, data={"rest_calls": "not json"}, headers=service_auth(simulator)
        ) as response:
            assert response.status == 400
            assert response.content_type == "text/html"
            assert "0002" in await response.text()
        async with bare.post(
            url, data={"rest_calls": json.dumps(call())}, headers=service_auth(simulator)
        ) as response:
            assert response.status == 200
            assert len(await response.json()) == 1


async def test_unknown_path_answers_404_with_the_error_json(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(simulator.base_url + "/no_such_service") as response:
        assert_error(await answer(response), 404, "HTTP 404")


# --------------------------------------------------------------------- account type and lists


@pytest.mark.parametrize("size", [1, 3])
async def test_trial_account_list_is_refused_and_starts_nothing(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, size: int
) -> None:
    sim = await make_simulator(SimulatorConfig(account_type="trial"))
    got = await service_start(http, sim, [call(number(i)) for i in range(size)])
    error = assert_error(got, assumptions.TRIAL_LIST_STATUS, assumptions.TRIAL_LIST_CODE)
    assert error["text"] == assumptions.TRIAL_LIST_TEXT
    assert sim.started_count() == 0


async def test_trial_account_single_object_starts_one_call(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(account_type="trial"))
    got = await service_start(http, sim, call())
    assert got.status == 200
    assert len(got.body) == 1
    assert sim.started_count() == 1


@pytest.mark.parametrize("account_type", ["production", "premium"])
async def test_production_and_premium_accounts_may_send_a_list(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, account_type: Any
) -> None:
    sim = await make_simulator(SimulatorConfig(account_type=account_type))
    got = await service_start(http, sim, [call(number(i)) for i in range(4)])
    assert got.status == 200
    assert sim.started_count() == 4


async def test_list_longer_than_max_list_length_is_refused_and_max_is_accepted(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(max_list_length=3))
    too_long = await service_start(http, sim, [call(number(i)) for i in range(4)])
    assert_error(too_long, 400, assumptions.LIST_TOO_LONG_CODE)
    assert sim.started_count() == 0
    assert (await service_start(http, sim, [call(number(i)) for i in range(3)])).status == 200
    assert sim.started_count() == 3


async def test_default_max_list_length_is_the_assumed_one(simulator: Simulator) -> None:
    assert simulator.config.max_list_length == assumptions.DEFAULT_MAX_LIST_LENGTH


async def test_full_list_with_longest_tokens_is_accepted_by_post(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    # Percent-encoded this is several MB: no transport limit may refuse it first.
    size = assumptions.DEFAULT_MAX_LIST_LENGTH
    token = "t&=%+ " * (5000 // 6)
    rest_calls = json.dumps([call(number(i), token=token) for i in range(size)])
    body = io.BytesIO(urlencode({"rest_calls": rest_calls}).encode())
    async with http.post(
        simulator.base_url + "/service_start",
        data=body,
        headers={
            **service_auth(simulator),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    ) as response:
        got = await answer(response)
    assert got.status == 200
    assert simulator.started_count() == size
    assert simulator.calls[0].token == token


async def test_full_list_is_accepted_by_get_query_string(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    # About 10 KB of query string: above aiohttp's default 8 KiB line limit.
    size = assumptions.DEFAULT_MAX_LIST_LENGTH
    got = await service_start(http, simulator, [call(number(i)) for i in range(size)], method="GET")
    assert got.status == 200
    assert simulator.started_count() == size


# --------------------------------------------------------------------- call objects


BAD_OBJECTS = [
    pytest.param({"from": FROM}, "to: mandatory", id="to missing"),
    pytest.param({"to": 441908273800, "from": FROM}, "to: must be a string", id="to number"),
    pytest.param({"to": None, "from": FROM}, "to: must be a string", id="to null"),
    pytest.param({"to": "", "from": FROM}, "to: empty", id="to empty"),
    pytest.param(call("01908273800"), "leading 0", id="national form"),
    pytest.param(call("tel:00441908273800"), "leading 0", id="tel international prefix"),
    pytest.param(call("4412"), "not a valid", id="too short"),
    pytest.param(call("447700900123"), "not a valid", id="invalid number"),
    pytest.param(call("449098790000"), "premium-rate", id="premium rate"),
    pytest.param(call("tel:+19005551234"), "premium-rate", id="premium rate tel"),
    pytest.param(call("+441908273800"), "tel: prefix", id="plus without tel"),
    pytest.param(call("tel:44190827380a"), "tel: needs", id="tel with letter"),
    pytest.param(call("tel:++441908273800"), "tel: needs", id="tel double plus"),
    pytest.param(call("tel:44--1908273800"), "tel: needs", id="tel double dash"),
    pytest.param(call("tel:44 1908 273800"), "tel: needs", id="tel spaces"),
    pytest.param(call("tel:"), "tel: needs", id="tel empty"),
    pytest.param(call("44 1908 273800", None), "user@host", id="spaces make SIP"),
    pytest.param(call("sip:bob", None), "user@host", id="sip without host"),
    pytest.param(call("sip:@example.com", None), "user@host", id="sip without user"),
    pytest.param(call("bob", None), "user@host", id="bare word"),
    pytest.param(call("wss:example.com", None), "wss", id="wss not a URL"),
    pytest.param(call("wss://", None), "wss", id="wss without host"),
    pytest.param(call("loc:", None), "needs a name", id="loc empty"),
    pytest.param(call("webrtc:", None), "needs a name", id="webrtc empty"),
    pytest.param(call("con: ", None), "needs a name", id="con blank"),
    pytest.param(call(TO, None), "from: required", id="from missing"),
    pytest.param(call(TO, "+441908273801"), "from: a validated", id="from with plus"),
    pytest.param(call(TO, "01908273801"), "from: a validated", id="from national"),
    pytest.param(call(TO, "44-1908-273801"), "from: a validated", id="from dashes"),
    pytest.param(call(TO, "bob"), "from: a validated", id="from word"),
    pytest.param(call(TO, "4412"), "from: not a valid", id="from invalid"),
    pytest.param(call(TO, ""), "from: a validated", id="from empty"),
    pytest.param({"to": TO, "from": 441908273801}, "from: must be a string", id="from number"),
    pytest.param({"to": SIP_TO, "from": None}, "from: must be a string", id="from null"),
    pytest.param(call(token=5), "token: must be a string", id="token number"),
    pytest.param(call(token=None), "token: must be a string", id="token null"),
    pytest.param(call(token="x" * 5001), "token: longer than 5000", id="token 5001"),
    pytest.param(call(outbound_parameters={"a": 1}), "outbound_parameters", id="params object"),
    pytest.param(
        call(extra_sip_headers={"name": "X-A", "value": "1"}), "must be a list", id="headers obj"
    ),
    pytest.param(call(extra_sip_headers=["X-A: 1"]), "exactly name and value", id="header str"),
    pytest.param(
        call(extra_sip_headers=[{"name": "X-A"}]), "exactly name and value", id="header no value"
    ),
    pytest.param(
        call(extra_sip_headers=[{"name": "X-A", "value": "1", "x": "2"}]),
        "exactly name and value",
        id="header extra key",
    ),
    pytest.param(
        call(extra_sip_headers=[{"name": "X-A", "value": 1}]), "value must", id="header value int"
    ),
    pytest.param(
        call(extra_sip_headers=[{"name": "X A", "value": "1"}]), "name must", id="header name space"
    ),
    pytest.param(
        call(extra_sip_headers=[{"name": "", "value": "1"}]), "name must", id="header name empty"
    ),
    pytest.param(
        call(extra_sip_headers=[{"name": "X-A", "value": "1\r\nX-B: 2"}]),
        "value must",
        id="header injection",
    ),
    pytest.param(call(form=FROM), 'unknown key "form"', id="unknown key"),
    pytest.param(TO, "not a JSON object", id="not an object"),
    pytest.param(None, "not a JSON object", id="null element"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_OBJECTS)
async def test_one_bad_object_rejects_the_whole_list_naming_its_index(
    simulator: Simulator, http: aiohttp.ClientSession, bad: Any, reason: str
) -> None:
    got = await service_start(http, simulator, [call(number(1)), bad, call(number(2))])
    error = assert_error(got, assumptions.INVALID_OBJECT_STATUS, assumptions.INVALID_OBJECT_CODE)
    details = error["details"]
    assert details
    assert {assumptions.detail_index(d) for d in details} == {1}
    assert any(reason in d for d in details), details
    assert simulator.started_count() == 0


@pytest.mark.parametrize(("bad", "reason"), BAD_OBJECTS[:12])
async def test_a_bad_single_object_is_refused_as_index_0(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, bad: Any, reason: str
) -> None:
    sim = await make_simulator(SimulatorConfig(account_type="trial"))
    error = assert_error(await service_start(http, sim, bad), 400, assumptions.INVALID_OBJECT_CODE)
    assert {assumptions.detail_index(d) for d in error["details"]} == {0}
    assert any(reason in d for d in error["details"])
    assert sim.started_count() == 0


async def test_every_bad_object_is_named_in_details(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    objects = [call("01908273800"), call(number(1)), call(TO, None), call(number(3))]
    error = assert_error(await service_start(http, simulator, objects), 400, "0002")
    assert {assumptions.detail_index(d) for d in error["details"]} == {0, 2}
    assert simulator.started_count() == 0


GOOD_OBJECTS = [
    pytest.param(call(TO), id="digits"),
    pytest.param(call("44-1908-273800"), id="single dashes"),
    pytest.param(call("tel:441908273800"), id="tel"),
    pytest.param(call("tel:+441908273800"), id="tel plus"),
    pytest.param(call("tel:+44-1908-273800"), id="tel plus dashes"),
    pytest.param(call("447911123456"), id="mobile"),
    pytest.param(call("14155550123", "12025550123"), id="north america"),
    pytest.param(call(SIP_TO, None), id="sip"),
    pytest.param(call("bob@example.com", None), id="unprefixed sip"),
    pytest.param(call(SIP_TO, "bob"), id="sip with sip caller"),
    pytest.param(call("loc:my_inbound_service", None), id="loc"),
    pytest.param(call("webrtc:clientId", None), id="webrtc"),
    pytest.param(call("wss://www.example.com/mywsapp", None), id="wss"),
    pytest.param(call("con:MyConferenceRoom", None), id="con"),
    pytest.param(call(token="x" * 5000), id="token 5000"),
    pytest.param(call(token=""), id="token empty"),
    pytest.param(
        call(
            outbound_parameters="some user data",
            extra_sip_headers=[{"name": "X-AccountInfo", "value": "bob/123456789"}],
        ),
        id="user data and header",
    ),
    pytest.param(call(extra_sip_headers=[]), id="no headers"),
]


@pytest.mark.parametrize("good", GOOD_OBJECTS)
async def test_valid_call_object_starts_one_call_with_its_fields(
    simulator: Simulator, http: aiohttp.ClientSession, good: dict[str, Any]
) -> None:
    got = await service_start(http, simulator, [good])
    assert got.status == 200, got.body
    started = simulator.call(got.body[0])
    assert started.to == good["to"]
    assert started.from_ == good.get("from")
    assert started.token == good.get("token")
    assert started.outbound_parameters == good.get("outbound_parameters")
    headers = good.get("extra_sip_headers", [])
    assert started.extra_sip_headers == tuple((h["name"], h["value"]) for h in headers)


async def test_only_configured_validated_caller_ids_are_accepted(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(validated_caller_ids=frozenset({FROM})))
    refused = await service_start(http, sim, [call(TO, "441908273802")])
    error = assert_error(refused, 400, "0002")
    assert any("validated caller" in d for d in error["details"])
    assert (await service_start(http, sim, [call(TO, FROM)])).status == 200
    assert sim.started_count() == 1


async def test_calls_to_counts_a_telephone_number_however_it_is_spelt(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    objects = [
        call("tel:+441908273800"),
        call("44-1908-273800"),
        call(TO),
        call(SIP_TO, None),
        call(number(5)),
    ]
    assert (await service_start(http, simulator, objects)).status == 200
    for spelling in ("+44 1908 273800", "tel:441908273800", TO, "44-1908-273800"):
        assert simulator.calls_to(spelling) == 3
    assert simulator.calls_to(SIP_TO) == 1
    assert simulator.calls_to("bob@example.com") == 0
    assert simulator.calls_to(number(6)) == 0


# --------------------------------------------------------------------- unique_id


async def test_same_unique_id_same_parameters_returns_original_references_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    objects = [call(number(i)) for i in range(3)]
    first = await service_start(http, simulator, objects, unique_id="batch-1")
    assert first.status == 200
    again = await service_start(http, simulator, objects, unique_id="batch-1", method="GET")
    assert again.status == 200
    assert again.body == first.body
    via_alias = await service_start(
        http, simulator, objects, unique_id="batch-1", param="outbound_parameters"
    )
    assert via_alias.body == first.body
    assert simulator.started_count() == 3
    assert simulator.request_count("service_start", "replayed") == 2


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param([call(number(0)), call(number(9))], id="other destination"),
        pytest.param([call(number(0))], id="fewer calls"),
        # Same calls, other bytes: parameters are compared as sent.
        pytest.param(json.dumps([call(number(0)), call(number(1))], indent=1), id="whitespace"),
    ],
)
async def test_same_unique_id_different_parameters_is_refused_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession, changed: Any
) -> None:
    original = [call(number(0)), call(number(1))]
    assert (await service_start(http, simulator, original, unique_id="u-1")).status == 200
    got = await service_start(http, simulator, changed, unique_id="u-1")
    error = assert_error(
        got, assumptions.UNIQUE_ID_CONFLICT_STATUS, assumptions.UNIQUE_ID_CONFLICT_CODE
    )
    assert "unique_id" in error["text"]
    assert simulator.started_count() == 2


async def test_same_unique_id_sent_to_another_service_is_a_conflict(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(service_passwords={"A": "pa", "B": "pb"}))
    first = await service_start(
        http, sim, call(), unique_id="u", headers=service_auth(sim, "A", "pa")
    )
    assert first.status == 200
    other = await service_start(
        http, sim, call(), unique_id="u", headers=service_auth(sim, "B", "pb")
    )
    assert_error(other, assumptions.UNIQUE_ID_CONFLICT_STATUS, assumptions.UNIQUE_ID_CONFLICT_CODE)
    assert sim.started_count() == 1


async def test_a_rejected_request_does_not_remember_its_unique_id(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    invalid = await service_start(http, simulator, [call("01908273800")], unique_id="u-2")
    assert invalid.status == 400
    simulator.faults.force("error_before")
    assert (await service_start(http, simulator, [call()], unique_id="u-3")).status == 500
    simulator.faults.force("throttle")
    assert (await service_start(http, simulator, [call()], unique_id="u-4")).status == 429
    assert simulator.started_count() == 0
    for unique_id in ("u-2", "u-3", "u-4"):
        got = await service_start(http, simulator, [call(number(7))], unique_id=unique_id)
        assert got.status == 200
    assert simulator.started_count() == 3
    assert simulator.request_count("service_start", "replayed") == 0


async def test_unique_id_is_forgotten_after_the_assumed_retention(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(clock=clock)
    assert (await service_start(http, sim, call(), unique_id="old")).status == 200
    clock.advance(assumptions.UNIQUE_ID_RETENTION_SECONDS - 1)
    replay = await service_start(http, sim, call(), unique_id="old")
    assert replay.body == [sim.calls[0].reference]
    clock.advance(2)
    fresh = await service_start(http, sim, call(number(3)), unique_id="old")
    assert fresh.status == 200
    assert sim.started_count() == 2


# --------------------------------------------------------------------- pacing and queues


async def test_starts_beyond_the_cps_are_queued_and_spaced_not_refused(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(SimulatorConfig(calls_per_second=2.0), clock=clock)
    t0 = clock.now
    got = await service_start(http, sim, [call(number(i)) for i in range(5)])
    assert got.status == 200
    assert [c.start_at - t0 for c in sim.calls] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert await queue_length(http, sim) == 4
    clock.advance(1.0)
    assert await queue_length(http, sim) == 2
    # A later request joins the back of the queue.
    await service_start(http, sim, call(number(9)))
    assert sim.calls[-1].start_at - t0 == 2.5
    assert await queue_length(http, sim) == 3
    clock.advance(10)
    assert await queue_length(http, sim) == 0
    # Once the queue has drained, a start begins at once.
    await service_start(http, sim, call(number(10)))
    assert sim.calls[-1].start_at == clock.now


async def test_outbound_queues_lists_every_configured_service_with_its_length(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(
        SimulatorConfig(calls_per_second=1.0, service_passwords={"A": "pa", "B": "pb", "C": "pc"}),
        clock=clock,
    )
    await service_start(
        http, sim, [call(number(i)) for i in range(3)], headers=service_auth(sim, "A", "pa")
    )
    await service_start(
        http, sim, [call(number(i)) for i in range(2)], headers=service_auth(sim, "B", "pb")
    )
    async with http.get(
        sim.base_url + "/service/v1/outbound_queues", headers=account_auth(sim)
    ) as response:
        got = await answer(response)
    assert got.status == 200
    # The account's rate is shared: A's first call starts now, the rest queue.
    assert got.body == [
        {"service_name": "A", "length": 2},
        {"service_name": "B", "length": 2},
        {"service_name": "C", "length": 0},
    ]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_queue_of_unknown_service_is_404(
    simulator: Simulator, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(
        method,
        simulator.base_url + "/service/v1/outbound/Nope/queue",
        headers=account_auth(simulator),
    ) as response:
        assert_error(await answer(response), 404, "HTTP 404")


async def test_purge_removes_only_queued_starts_which_then_never_run(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(
        SimulatorConfig(calls_per_second=1.0, answered_seconds=(0.5, 0.5), ring_seconds=(0.5, 0.5)),
        clock=clock,
    )
    refs = (await service_start(http, sim, [call(number(i)) for i in range(4)])).body
    async with http.delete(
        f"{sim.base_url}/service/v1/outbound/{SERVICE}/queue", headers=account_auth(sim)
    ) as response:
        got = await answer(response)
    assert got.status == 200
    assert got.body == dict(zip(assumptions.PURGE_BODY_KEYS, [SERVICE, 3], strict=True))
    assert await queue_length(http, sim) == 0

    clock.advance(100)
    ran = (await application_status(http, sim, refs[0])).body
    assert assumptions.instance_phase(ran) == "finished"
    assert ran["adr"]["start_time"] is not None
    assert len(ran["cdrs"]) == 1
    for ref in refs[1:]:
        purged = (await application_status(http, sim, ref)).body
        assert assumptions.instance_phase(purged) == "finished"
        assert purged["adr"]["start_time"] is None
        assert purged["cdrs"] == []
        assert purged["errs"] == [
            {"code": assumptions.PURGED_ERROR_CODE, "text": assumptions.PURGED_ERROR_TEXT}
        ]
    # Purging an empty queue purges nothing.
    assert sim.purge(SERVICE) == 0


async def test_purged_slots_are_free_for_the_next_start(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(SimulatorConfig(calls_per_second=1.0), clock=clock)
    await service_start(http, sim, [call(number(i)) for i in range(4)])
    assert sim.purge(SERVICE) == 3
    clock.advance(1.5)
    await service_start(http, sim, call(number(9)))
    assert sim.calls[-1].start_at == clock.now


# --------------------------------------------------------------------- application_status


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_application_status_goes_queued_running_finished(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, method: str
) -> None:
    clock = ManualClock()
    sim = await make_simulator(
        SimulatorConfig(
            calls_per_second=1.0, cause_weights={"completed": 1.0}, answered_seconds=(10, 10)
        ),
        clock=clock,
    )
    t0 = clock.now
    _, ref = (await service_start(http, sim, [call(number(1)), call(number(2), token="tk")])).body

    queued = (await application_status(http, sim, ref, method=method)).body
    assert assumptions.instance_phase(queued) == "queued"
    assert set(queued) == {"adr", "cdrs", "errs"}
    adr_keys = {
        "application_instance_id",
        "application_name",
        "start_time",
        "stop_time",
        "duration",
        "pstn_cost",
        "platform_cost",
    }
    assert adr_keys <= set(queued["adr"])
    assert queued["adr"]["application_name"] == SERVICE
    assert queued["cdrs"] == []

    clock.advance(1.0)
    running = (await application_status(http, sim, ref, method=method)).body
    assert assumptions.instance_phase(running) == "running"
    assert running["adr"]["start_time"] == t0 + 1.0

    clock.advance(10.0)
    finished = (await application_status(http, sim, ref, method=method)).body
    assert assumptions.instance_phase(finished) == "finished"
    assert finished["adr"]["stop_time"] == t0 + 11.0
    assert finished["adr"]["duration"] == pytest.approx(10.0)
    assert finished["errs"] == []
    [cdr] = finished["cdrs"]
    assert cdr["call_cause"] == "completed"
    assert cdr["call_raw_cause"] == assumptions.SIMULATED_RAW_CAUSES["completed"]
    assert cdr["seconds_call_duration"] == pytest.approx(10.0)
    assert (cdr["call_to"], cdr["call_from"]) == (number(2), FROM)


@pytest.mark.parametrize("cause", CALL_CAUSES)
async def test_finished_call_reports_the_configured_cause(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, cause: str
) -> None:
    clock = ManualClock()
    sim = await make_simulator(SimulatorConfig(cause_weights={cause: 1.0}), clock=clock)
    [ref] = (await service_start(http, sim, call())).body
    clock.advance(5)
    [cdr] = (await application_status(http, sim, ref)).body["cdrs"]
    assert cdr["call_cause"] == cause
    assert cdr["call_raw_cause"] == assumptions.SIMULATED_RAW_CAUSES[cause]
    answered = cause in assumptions.ANSWERED_CAUSES
    assert (cdr["seconds_call_duration"] > 0) is answered


async def test_causes_follow_the_configured_weights_and_repeat_with_the_seed(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    config = SimulatorConfig(cause_weights={"busy": 1.0, "no_answer": 3.0}, seed=11)
    runs = []
    for _ in range(2):
        sim = await make_simulator(config)
        for batch in range(4):
            objects = [call(number(batch * 100 + i)) for i in range(100)]
            assert (await service_start(http, sim, objects)).status == 200
        runs.append([c.call_cause for c in sim.calls])
    assert runs[0] == runs[1]
    counts = Counter(runs[0])
    assert set(counts) == {"busy", "no_answer"}
    assert 0.65 < counts["no_answer"] / 400 < 0.85


async def test_default_cause_mix_is_mostly_answered(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator()
    for batch in range(4):
        await service_start(http, sim, [call(number(batch * 100 + i)) for i in range(100)])
    counts = Counter(c.call_cause for c in sim.calls)
    answered = sum(counts[c] for c in assumptions.ANSWERED_CAUSES)
    assert answered > 200
    assert counts["no_answer"] > 0
    assert counts["busy"] > 0


async def test_application_status_of_unknown_id_is_404_with_error_json(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    got = await application_status(http, simulator, "2e891aea_0.1366641192.77832")
    assert_error(
        got,
        assumptions.UNKNOWN_INSTANCE_STATUS,
        f"HTTP {assumptions.UNKNOWN_INSTANCE_STATUS}",
    )


async def test_application_status_without_id_is_0001_and_with_two_is_0003(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    url = simulator.base_url + "/application_status"
    async with http.get(url, headers=account_auth(simulator)) as response:
        assert_error(await answer(response), 400, "0001")
    twice = [("application_instance_id", "a"), ("application_instance_id", "b")]
    async with http.get(url, params=twice, headers=account_auth(simulator)) as response:
        assert_error(await answer(response), 400, "0003")


# --------------------------------------------------------------------- faults


async def test_error_before_answers_500_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.error_before = 1.0
    got = await service_start(http, simulator, [call(), call(number(3))], unique_id="e1")
    assert_error(got, 500, "HTTP 500")
    assert simulator.started_count() == 0
    simulator.faults.error_before = 0.0
    retry = await service_start(http, simulator, [call(), call(number(3))], unique_id="e1")
    assert retry.status == 200
    assert simulator.started_count() == 2


async def test_error_after_answers_500_but_the_calls_started_and_a_replay_returns_them(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.error_after = 1.0
    objects = [call(), call(number(3))]
    assert_error(await service_start(http, simulator, objects, unique_id="e2"), 500, "HTTP 500")
    assert simulator.started_count() == 2
    simulator.faults.error_after = 0.0
    replay = await service_start(http, simulator, objects, unique_id="e2")
    assert replay.body == [c.reference for c in simulator.calls]
    assert simulator.started_count() == 2


async def test_drop_after_closes_the_connection_but_the_calls_started_and_a_replay_returns_them(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.force("drop_after")
    objects = [call(), call(number(3))]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await service_start(http, simulator, objects, unique_id="d1")
    assert simulator.started_count() == 2
    replay = await service_start(http, simulator, objects, unique_id="d1")
    assert replay.status == 200
    assert replay.body == [c.reference for c in simulator.calls]
    assert simulator.started_count() == 2
    assert simulator.request_count("service_start", "drop_after") == 1


async def test_slow_answer_comes_after_the_delay_with_the_calls_already_started(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.slow_seconds = 0.3
    simulator.faults.force("slow")
    began = time.monotonic()
    got = await service_start(http, simulator, call())
    assert got.status == 200
    assert time.monotonic() - began >= 0.3
    assert got.body == [simulator.calls[0].reference]


async def test_slow_answer_lost_to_a_client_timeout_can_be_recovered_by_replay(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.slow_seconds = 30.0
    simulator.faults.force("slow")
    with pytest.raises(asyncio.TimeoutError):
        await service_start(http, simulator, call(), unique_id="s1", within=0.2)
    assert simulator.started_count() == 1
    replay = await service_start(http, simulator, call(), unique_id="s1")
    assert replay.body == [simulator.calls[0].reference]
    assert simulator.started_count() == 1
    # Teardown must not wait the 30 s the first answer is still delayed by.


async def test_throttle_answers_429_and_starts_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.throttle = 1.0
    got = await service_start(http, simulator, call(), unique_id="t1")
    assert_error(
        got,
        assumptions.THROTTLED_STATUS,
        assumptions.http_error_code(assumptions.THROTTLED_STATUS),
    )
    assert simulator.started_count() == 0


async def test_forced_faults_hit_the_next_requests_in_order_then_stop(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.force("throttle")
    simulator.faults.force("error_before", count=2)
    statuses = [(await service_start(http, simulator, call())).status for _ in range(4)]
    assert statuses == [429, 500, 500, 200]
    assert simulator.started_count() == 1
    assert not simulator.faults.forced


async def test_faults_only_hit_requests_that_pass_authentication_and_validation(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.force("error_before")
    assert (await service_start(http, simulator, [call("01908273800")])).status == 400
    wrong = basic("1-2-0/bob@example.com/MyOutboundService", "nope")
    assert (await service_start(http, simulator, call(), headers=wrong)).status == 401
    assert list(simulator.faults.forced) == ["error_before"]
    assert (await service_start(http, simulator, call())).status == 500


async def test_a_replay_is_subject_to_faults_too(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    [ref] = (await service_start(http, simulator, call(), unique_id="r1")).body
    simulator.faults.force("error_after")
    assert (await service_start(http, simulator, call(), unique_id="r1")).status == 500
    simulator.faults.force("drop_after")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await service_start(http, simulator, call(), unique_id="r1")
    assert (await service_start(http, simulator, call(), unique_id="r1")).body == [ref]
    assert simulator.started_count() == 1


async def test_fault_probabilities_give_the_same_sequence_with_the_same_seed(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    runs = []
    for _ in range(2):
        sim = await make_simulator(SimulatorConfig(seed=7))
        sim.faults.throttle = 0.3
        sim.faults.error_before = 0.3
        runs.append([(await service_start(http, sim, call())).status for _ in range(30)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 429, 500}


async def test_admin_faults_endpoint_reads_and_sets_the_faults(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    url = simulator.base_url + "/_simulator/faults"
    update = {"error_after": 0.25, "slow_seconds": 2, "force": [{"kind": "drop_after", "count": 2}]}
    async with http.post(url, json=update) as response:
        assert response.status == 200
    async with http.get(url) as response:
        state = await response.json()
    assert state["error_after"] == 0.25
    assert state["slow_seconds"] == 2
    assert state["forced"] == ["drop_after", "drop_after"]
    assert simulator.faults.error_after == 0.25

    for bad in ({"error_before": 2}, {"force": [{"kind": "explode"}]}, {"nonsense": 1}, [1]):
        async with http.post(url, json=bad) as response:
            assert_error(await answer(response), 400, "0002")
    assert simulator.faults.as_json() == state

    async with http.post(url, json={"reset": True}) as response:
        reset = await response.json()
    assert all(reset[kind] == 0.0 for kind in FAULT_KINDS)
    assert reset["forced"] == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"service_passwords": {}}, "at least one", id="no service"),
        pytest.param(
            {"disabled_services": frozenset({"Nope"})}, "not configured", id="disabled unknown"
        ),
        pytest.param(
            {"validated_caller_ids": frozenset({"+441908273801"})}, "caller IDs", id="caller plus"
        ),
        pytest.param({"calls_per_second": 0.0}, "calls_per_second", id="cps zero"),
        pytest.param({"max_list_length": 0}, "max_list_length", id="list length zero"),
        pytest.param({"cause_weights": {"answered": 1.0}}, "unknown call causes", id="cause"),
        pytest.param({"cause_weights": {"busy": 0.0}}, "positive sum", id="no weight"),
        pytest.param({"answered_seconds": (2.0, 1.0)}, "answered_seconds", id="range backwards"),
        pytest.param({"callback_loss": 1.5}, "callback_loss", id="loss above 1"),
        pytest.param({"final_page_url": "ftp://x/y"}, "final_page_url", id="final page ftp"),
    ],
)
def test_impossible_configurations_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**changes)


def test_fault_probabilities_outside_0_to_1_are_refused() -> None:
    faults = Faults()
    with pytest.raises(ValueError, match="between 0 and 1"):
        faults.slow = 30
    with pytest.raises(ValueError, match="unknown fault"):
        faults.force("explode")
    assert faults.slow == 0.0


async def test_admin_calls_endpoint_lists_every_started_call(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    refs = (await service_start(http, simulator, [call(), call(SIP_TO, None)], unique_id="a")).body
    async with http.get(simulator.base_url + "/_simulator/calls") as response:
        record = await response.json()
    assert record["started"] == 2
    assert [c["reference"] for c in record["calls"]] == refs
    assert record["calls"][0]["to"] == TO
    assert record["calls"][0]["from"] == FROM
    assert record["calls"][1]["unique_id"] == "a"
    assert {"endpoint": "service_start", "outcome": "ok", "count": 1} in record["requests"]


# --------------------------------------------------------------------- final page


@dataclass
class FinalPage:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    status: int = 200

    async def wait_for(self, count: int, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} final pages"
            await asyncio.sleep(0.01)


@pytest.fixture
async def final_page() -> AsyncIterator[FinalPage]:
    """A tiny final-page receiver on loopback."""
    page = FinalPage(url="")

    async def receive(request: web.Request) -> web.Response:
        page.content_types.append(request.content_type)
        page.received.append(await request.json())
        return web.json_response(assumptions.FINAL_PAGE_RESPONSE, status=page.status)

    app = web.Application()
    app.router.add_post("/final/secret", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    page.url = f"http://127.0.0.1:{port}/final/secret"
    yield page
    await runner.cleanup()


async def wait_for_records(sim: Simulator, count: int, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while len(sim.callbacks) < count:
        assert time.monotonic() < deadline, f"{len(sim.callbacks)} of {count} callbacks"
        await asyncio.sleep(0.01)


async def test_final_page_receives_instance_info_for_every_finished_call(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage
) -> None:
    sim = await make_simulator(
        SimulatorConfig(final_page_url=final_page.url, calls_per_second=1000)
    )
    objects = [
        call(number(i), token=f"token-{i}", outbound_parameters=f"data-{i}") for i in range(10)
    ]
    refs = (await service_start(http, sim, objects)).body
    await final_page.wait_for(10)
    assert set(final_page.content_types) == {assumptions.FINAL_PAGE_CONTENT_TYPE}
    by_ref = {info["application_instance_id"]: info for info in final_page.received}
    assert set(by_ref) == set(refs)
    for i, ref in enumerate(refs):
        info = by_ref[ref]
        started = sim.call(ref)
        assert info["token"] == f"token-{i}"
        this_call = info["this_call"]
        assert this_call["call_direction"] == "out"
        assert this_call["call_to"] == number(i)
        assert this_call["call_from"] == FROM
        assert this_call["call_state"] == assumptions.FINAL_PAGE_CALL_STATE
        assert this_call["call_cause"] == started.call_cause
        assert this_call["call_raw_cause"] == started.call_raw_cause
        assert this_call["seconds_call_duration"] == started.duration
        assert this_call["outbound_parameters"] == f"data-{i}"
        assert this_call["call_id"]
    assert sim.callback_counts() == {"sent": 10}


async def test_final_page_is_requested_only_once_the_call_has_finished(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage
) -> None:
    clock = ManualClock()
    sim = await make_simulator(
        SimulatorConfig(
            final_page_url=final_page.url, answered_seconds=(5, 5), ring_seconds=(5, 5)
        ),
        clock=clock,
    )
    await service_start(http, sim, call())
    await asyncio.sleep(0.2)
    assert final_page.received == []
    clock.advance(5)
    await final_page.wait_for(1)


async def test_purged_starts_get_no_final_page(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage
) -> None:
    clock = ManualClock()
    sim = await make_simulator(
        SimulatorConfig(final_page_url=final_page.url, calls_per_second=1.0), clock=clock
    )
    refs = (await service_start(http, sim, [call(number(i)) for i in range(3)])).body
    assert sim.purge(SERVICE) == 2
    clock.advance(100)
    await final_page.wait_for(1)
    await asyncio.sleep(0.2)
    assert [info["application_instance_id"] for info in final_page.received] == refs[:1]
    assert [record.reference for record in sim.callbacks] == refs[:1]


@pytest.mark.parametrize("loss", [0.5, 1.0])
async def test_callback_loss_drops_that_share_of_final_pages_and_records_them(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage, loss: float
) -> None:
    sim = await make_simulator(
        SimulatorConfig(final_page_url=final_page.url, callback_loss=loss, calls_per_second=1000)
    )
    await service_start(http, sim, [call(number(i)) for i in range(40)])
    await wait_for_records(sim, 40)
    counts = sim.callback_counts()
    assert counts["sent"] + counts["lost"] == 40
    assert counts["sent"] == len(final_page.received)
    if loss == 1.0:
        assert counts["lost"] == 40
    else:
        assert 8 < counts["lost"] < 32


async def test_failed_final_pages_are_counted_and_the_simulator_carries_on(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage
) -> None:
    final_page.status = 500
    answering_500 = await make_simulator(SimulatorConfig(final_page_url=final_page.url))
    await service_start(http, answering_500, [call(number(i)) for i in range(3)])
    await wait_for_records(answering_500, 3)
    assert {(r.outcome, r.status) for r in answering_500.callbacks} == {("failed", 500)}

    # Nobody listens on the receiver's port once its server is gone.
    refused_url = "http://127.0.0.1:9/final"
    unreachable = await make_simulator(SimulatorConfig(final_page_url=refused_url))
    await service_start(http, unreachable, [call(number(i)) for i in range(3)])
    await wait_for_records(unreachable, 3)
    assert {r.outcome for r in unreachable.callbacks} == {"failed"}
    assert all(r.error for r in unreachable.callbacks)
    assert (await service_start(http, unreachable, call())).status == 200


async def test_final_pages_are_still_sent_while_the_web_services_are_down(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, final_page: FinalPage
) -> None:
    sim = await make_simulator(SimulatorConfig(final_page_url=final_page.url))
    refs = (await service_start(http, sim, [call(number(i)) for i in range(3)])).body
    await sim.go_down()
    await final_page.wait_for(3)
    assert not sim.listening
    assert {info["application_instance_id"] for info in final_page.received} == set(refs)
    await sim.come_back()
    await service_start(http, sim, call())
    await final_page.wait_for(4)


async def test_a_stopped_simulator_restarts_on_its_port_remembering_calls_and_unique_ids(
    http: aiohttp.ClientSession,
) -> None:
    sim = Simulator()
    try:
        url = await sim.start()
        [ref] = (await service_start(http, sim, call(), unique_id="o1")).body
        await sim.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await service_start(http, sim, call(), unique_id="o1")
        port = int(url.rsplit(":", 1)[1])
        assert await sim.start(port=port) == url
        assert (await service_start(http, sim, call(), unique_id="o1")).body == [ref]
        assert sim.started_count() == 1
    finally:
        await sim.stop()


# --------------------------------------------------------------------- robustness


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([TO, FROM, SIP_TO, "tel:+441908273800", "+441908273800", "449098790000"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
CALL_LIKE = st.dictionaries(
    st.sampled_from(
        ["to", "from", "token", "outbound_parameters", "extra_sip_headers", "name", "value", ""]
    ),
    JSON_VALUES,
    max_size=6,
)
REST_CALLS_TEXT = st.one_of(
    st.text(max_size=300),
    JSON_VALUES.map(json.dumps),
    CALL_LIKE.map(json.dumps),
    st.lists(CALL_LIKE, max_size=4).map(json.dumps),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rest_calls=REST_CALLS_TEXT, method=st.sampled_from(["GET", "POST"]))
async def test_arbitrary_rest_calls_never_get_a_5xx_only_200_or_a_4xx_error_json(
    simulator: Simulator, http: aiohttp.ClientSession, rest_calls: str, method: str
) -> None:
    before = simulator.started_count()
    got = await service_start(http, simulator, rest_calls, method=method)
    if got.status == 200:
        assert isinstance(got.body, list)
        assert all(isinstance(ref, str) for ref in got.body)
        assert simulator.started_count() == before + len(got.body)
    else:
        assert 400 <= got.status < 500
        assert_error(got, got.status, got.body["error"]["code"])
        assert simulator.started_count() == before


# --------------------------------------------------------------------- command line


async def test_cli_serves_the_configured_account_until_sigterm_then_exits_0(
    http: aiohttp.ClientSession,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign",
        "simulator",
        "--port",
        "0",
        "--account-type",
        "trial",
        "--service",
        "A=pa",
        "--service",
        "B=pb",
        "--api-key",
        "k",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        base_url = line.decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", base_url)
        url = base_url + "/service_start"
        fields = {"rest_calls": json.dumps([call()])}
        auth = basic("1-2-0/bob@example.com/B", "pb")
        async with http.post(url, data=fields, headers=auth) as response:
            assert_error(await answer(response), 400, assumptions.TRIAL_LIST_CODE)
        async with http.post(
            url, data={"rest_calls": json.dumps(call())}, headers=auth
        ) as response:
            assert response.status == 200
        queues = base_url + "/service/v1/outbound_queues"
        async with http.get(queues, headers=basic("1-2-0/bob@example.com", "k")) as r:
            assert [q["service_name"] for q in await r.json()] == ["A", "B"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
