"""The client sends what Aculab documents, and classifies every failure.

Against the simulator over real HTTP, and against a small capturing server on
loopback where the test needs to see the raw request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from campaign.aculab import (
    MAX_TOKEN_LENGTH,
    AculabClient,
    AuthenticationError,
    CallValidationError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnusableAnswer,
    encode_rest_calls,
)
from campaign.settings import ConfigError, Settings, load_settings
from campaign.simulator import Simulator, SimulatorConfig

SERVICE = "MyOutboundService"


def client_settings(base_url: str, **aculab: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "cloud_id": "1-2-0",
        "username": "bob@example.com",
        "api_access_key": "sim-api-key",
        "service_passwords": {SERVICE: "sim-password"},
        **aculab,
    }
    return load_settings(None, aculab=values, http={"connect_timeout": 1.0, "read_timeout": 1.0})


def client_for(base_url: str, **aculab: Any) -> AculabClient:
    s = client_settings(base_url, **aculab)
    return AculabClient(s.aculab, s.http)


def two_calls() -> str:
    return encode_rest_calls(
        [
            {"to": "441908283800", "from": "441908283801", "token": "t1"},
            {
                "to": "sip:bob@acompany.com",
                "token": "t2",
                "extra_sip_headers": [{"name": "X-AccountInfo", "value": "bob/123456789"}],
            },
        ],
        "production",
    )


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[dict[str, Any]], Callable[..., None]]]:
    """A loopback server that records raw requests and answers what the test says."""
    seen: list[dict[str, Any]] = []
    answer: dict[str, Any] = {"status": 200, "body": "[]", "content_type": "application/json"}

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "form": dict(await request.post()),
            }
        )
        return web.Response(
            status=answer["status"], text=answer["body"], content_type=answer["content_type"]
        )

    def set_answer(status: int, body: str, content_type: str = "application/json") -> None:
        answer.update(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen, set_answer
    finally:
        await runner.cleanup()


async def test_service_start_posts_form_encoded_rest_calls_with_service_auth_and_accept_json(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, seen, answer = capture
    answer(200, json.dumps(["ref-1", "ref-2"]))
    payload = two_calls()
    async with client_for(url) as client:
        refs = await client.service_start(SERVICE, payload, "uid-1")
    assert refs == ["ref-1", "ref-2"]
    req = seen[0]
    assert req["method"] == "POST" and req["path"] == "/service_start"
    assert req["headers"]["Accept"] == "application/json"
    assert req["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert req["form"] == {"rest_calls": payload, "unique_id": "uid-1"}
    scheme, token = req["headers"]["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"1-2-0/bob@example.com/{SERVICE}:sim-password"


async def test_account_endpoints_use_the_api_access_key(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, seen, answer = capture
    answer(200, json.dumps({"service_name": SERVICE, "length": 3}))
    async with client_for(url) as client:
        assert await client.queue_length(SERVICE) == 3
    auth = seen[0]["headers"]["Authorization"].split(" ")[1]
    assert base64.b64decode(auth).decode() == "1-2-0/bob@example.com:sim-api-key"
    assert seen[0]["path"] == f"/service/v1/outbound/{SERVICE}/queue"
    assert seen[0]["headers"]["Accept"] == "application/json"


async def test_html_error_page_is_a_transient_error_with_a_readable_text(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, _, answer = capture
    answer(502, "<html><body>Bad gateway</body></html>", "text/html")
    async with client_for(url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert err.value.status == 502
    assert "Bad gateway" in err.value.reason


async def test_request_timeout_from_a_proxy_is_transient(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, _, answer = capture
    answer(408, "<html><body>Request Timeout</body></html>", "text/html")
    async with client_for(url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert err.value.status == 408


@pytest.mark.parametrize(
    "body", ['{"odd": true}', '["ref-1", 2]', '["ref-1", null]', '["ref-1", ""]', "null"]
)
async def test_success_whose_json_is_not_a_list_of_references_is_unusable_and_kept(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]], body: str
) -> None:
    # Aculab answered 200: the calls started, and a replay would say the same.
    url, _, answer = capture
    answer(200, body)
    async with client_for(url) as client:
        with pytest.raises(UnusableAnswer) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert json.loads(err.value.raw) == json.loads(body)


async def test_success_whose_body_is_not_json_is_transient_and_in_doubt(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, _, answer = capture
    answer(200, "<html>gateway</html>")
    async with client_for(url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert err.value.may_have_started


async def test_refused_connection_never_reached_aculab() -> None:
    # A port that was just free: nothing listens there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert not err.value.may_have_started
    assert err.value.outage


async def test_throttling_started_nothing_and_is_no_outage(simulator: Simulator) -> None:
    simulator.faults.force("throttle")
    async with client_for(simulator.base_url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid-429b")
    assert (err.value.may_have_started, err.value.outage) == (False, False)


async def test_a_body_that_trickles_in_is_cut_off_by_the_total_timeout() -> None:
    # Each chunk arrives well within the read timeout (1 s); the whole takes 4 s.
    chunks = ['["ref', "-1", '","r', 'ef-2"', "]", " ", " ", " "]
    written: list[str] = []

    async def trickle(request: web.Request) -> web.StreamResponse:
        await request.post()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk.encode())
            written.append(chunk)
            await asyncio.sleep(0.5)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/service_start", trickle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with client_for(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(TransientError) as err:
                await client.service_start(SERVICE, two_calls(), "uid")
            # Given up while the answer was still coming: connect (1 s) + read (1 s)
            # is the most a request may take, however its reads are spread.
            assert 0 < len(written) < len(chunks)
    finally:
        await runner.cleanup()
    assert err.value.may_have_started


async def test_429_is_transient_and_carries_retry_after(simulator: Simulator) -> None:
    simulator.faults.force("throttle")
    async with client_for(simulator.base_url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, two_calls(), "uid-429")
    assert err.value.status == 429
    assert simulator.started_count() == 0


@pytest.mark.parametrize(
    ("fault", "status", "started"),
    [("error_before", 500, 0), ("error_after", 500, 2), ("drop_after", None, 2), ("slow", None, 2)],
)
async def test_faults_are_transient_and_the_same_id_returns_the_original_references(
    simulator: Simulator, fault: str, status: int | None, started: int
) -> None:
    simulator.faults.slow_seconds = 2.5
    simulator.faults.force(fault)
    payload = two_calls()
    async with client_for(simulator.base_url) as client:
        with pytest.raises(TransientError) as err:
            await client.service_start(SERVICE, payload, "uid-fault")
        assert err.value.status == status
        # The request was written and no usable answer came: it may have started calls.
        assert err.value.may_have_started and err.value.outage
        assert simulator.started_count() == started
        refs = await client.service_start(SERVICE, payload, "uid-fault")
    assert len(refs) == 2
    assert simulator.started_count() == 2
    assert [c.reference for c in simulator.calls] == refs


async def test_aculab_error_json_is_parsed_into_code_text_and_details(
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
) -> None:
    sim = await make_simulator(SimulatorConfig(validated_caller_ids=frozenset({"441908283801"})))
    payload = encode_rest_calls(
        [
            {"to": "441908283800", "from": "441908283801"},
            {"to": "441908283802", "from": "441908999999"},
        ],
        "production",
    )
    async with client_for(sim.base_url) as client:
        with pytest.raises(PermanentError) as err:
            await client.service_start(SERVICE, payload, "uid-bad")
    assert not isinstance(err.value, AuthenticationError)
    assert err.value.status == 400
    assert err.value.code == "0002"
    assert err.value.details and "rest_calls[1]" in err.value.details[0]
    assert sim.started_count() == 0


async def test_wrong_service_password_is_an_authentication_error(simulator: Simulator) -> None:
    async with client_for(simulator.base_url, service_passwords={SERVICE: "nope"}) as client:
        with pytest.raises(AuthenticationError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert err.value.status == 401
    assert "nope" not in err.value.reason


async def test_disabled_service_is_an_authentication_error(
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
) -> None:
    sim = await make_simulator(SimulatorConfig(disabled_services=frozenset({SERVICE})))
    async with client_for(sim.base_url) as client:
        with pytest.raises(AuthenticationError) as err:
            await client.service_start(SERVICE, two_calls(), "uid")
    assert err.value.status == 403


async def test_service_without_a_configured_password_fails_before_sending(
    capture: tuple[str, list[dict[str, Any]], Callable[..., None]],
) -> None:
    url, seen, _ = capture
    async with client_for(url) as client:
        with pytest.raises(AuthenticationError, match="no outbound password"):
            await client.service_start("OtherService", two_calls(), "uid")
    assert seen == []


async def test_service_password_lookup_ignores_case_of_environment_names(
    simulator: Simulator,
) -> None:
    async with client_for(
        simulator.base_url, service_passwords={SERVICE.lower(): "sim-password"}
    ) as client:
        refs = await client.service_start(SERVICE, two_calls(), "uid-case")
    assert len(refs) == 2


async def test_application_status_follows_an_instance_to_its_outcome(simulator: Simulator) -> None:
    async with client_for(simulator.base_url) as client:
        refs = await client.service_start(SERVICE, two_calls(), "uid-status")
        body = await client.application_status(refs[0])
        assert body["adr"]["application_instance_id"] == refs[0]
        with pytest.raises(NotFoundError):
            await client.application_status("no-such-instance")
    async with client_for(simulator.base_url, api_access_key="wrong") as bad:
        with pytest.raises(AuthenticationError):
            await bad.application_status(refs[0])


async def test_queue_length_and_purge_reach_the_service_queue(
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
) -> None:
    sim = await make_simulator(SimulatorConfig(calls_per_second=0.5))
    calls = [{"to": f"4419082838{i:02d}", "from": "441908283801"} for i in range(5)]
    async with client_for(sim.base_url) as client:
        await client.service_start(SERVICE, encode_rest_calls(calls, "production"), "uid-q")
        assert await client.queue_length(SERVICE) >= 3
        assert (await client.outbound_queues())[SERVICE] >= 3
        await client.purge_queue(SERVICE)
        assert await client.queue_length(SERVICE) == 0


def test_trial_accounts_send_a_single_object_and_refuse_lists() -> None:
    one = encode_rest_calls([{"to": "sip:a@b.example"}], "trial")
    assert json.loads(one) == {"to": "sip:a@b.example"}
    with pytest.raises(CallValidationError):
        encode_rest_calls([{"to": "sip:a@b.example"}, {"to": "sip:c@b.example"}], "trial")
    assert json.loads(encode_rest_calls([{"to": "sip:a@b.example"}], "premium")) == [
        {"to": "sip:a@b.example"}
    ]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ({"to": "441908283800"}, "'from'"),
        ({"to": "tel:441908283800"}, "'from'"),
        ({"to": "sip:a@b.example", "token": "x" * (MAX_TOKEN_LENGTH + 1)}, "token"),
        ({"to": "sip:a@b.example", "extra_sip_headers": {"name": "X-A"}}, "list"),
        ({"to": "sip:a@b.example", "extra_sip_headers": [{"name": "X-A"}]}, "name"),
        ({"to": "sip:a@b.example", "extra_sip_headers": [{"name": "X-A", "value": 3}]}, "string"),
        ({"to": ""}, "'to'"),
        ({"to": "sip:a@b.example", "colour": "red"}, "unknown"),
    ],
)
def test_client_refuses_call_objects_aculab_would_reject(
    call: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(CallValidationError) as err:
        encode_rest_calls([{"to": "sip:ok@b.example"}, call], "production")
    assert err.value.details[0].startswith("rest_calls[1]")
    assert fragment in err.value.details[0]


async def test_token_of_exactly_5000_characters_reaches_aculab_intact(simulator: Simulator) -> None:
    # Characters, not bytes: 5000 of them, most of them more than one byte in UTF-8.
    token = ("é€😀" * MAX_TOKEN_LENGTH)[: MAX_TOKEN_LENGTH - 1] + "x"
    assert len(token) == MAX_TOKEN_LENGTH < len(token.encode())
    payload = encode_rest_calls([{"to": "sip:a@b.example", "token": token}], "production")
    assert json.loads(payload) == [{"to": "sip:a@b.example", "token": token}]

    async with client_for(simulator.base_url) as client:
        [reference] = await client.service_start(SERVICE, payload, "uid-long-token")

    assert simulator.call(reference).token == token


def test_plain_http_is_refused_except_on_loopback() -> None:
    with pytest.raises(ConfigError) as err:
        client_settings("http://ws.aculabcloud.net")
    assert any("aculab" in p for p in err.value.problems)
    client_settings("https://ws-1-2-0.aculabcloud.net")
    client_settings("http://127.0.0.1:8700")
    # A simulator in docker-compose is reached by name, explicitly allowed.
    client_settings("http://simulator:8700", allow_plain_http=True)
