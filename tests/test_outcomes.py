"""Outcomes: the retry policy, the poller, one writer of truth, campaign completion."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from campaign import assumptions, outcomes, vocabulary
from campaign.aculab import AculabClient
from campaign.db import outcomes as oq
from campaign.metrics import new_metrics
from campaign.outcomes import Outcome, decide
from campaign.poller import Poller
from campaign.server import Server, build_app
from campaign.settings import ListenerSettings
from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import (
    add_contacts,
    campaign_state,
    create_campaign,
    engine_settings,
    run_engine,
    run_until_idle,
    states,
    uk_numbers,
)

DELAYS = {"busy": 600, "no_answer": 1800, "failed": 300, "dropped": 300, "unknown": 900}

MakeSim = Callable[[SimulatorConfig], Awaitable[Simulator]]


# --- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "state", "delay"),
    [
        ("completed", "completed", None),
        ("hung_up", "completed", None),
        ("busy", "pending", 600),
        ("no_answer", "pending", 1800),
        ("failed", "pending", 300),
        ("dropped", "pending", 300),
        ("unknown", "pending", 900),
        ("unobtainable", "failed", None),
    ],
)
def test_each_cause_leads_to_its_next_state_and_delay(
    cause: str, state: str, delay: float | None
) -> None:
    d = decide(cause, attempts=1, max_attempts=3, retry_delays=DELAYS)
    assert (d.state, d.delay) == (state, delay)
    assert cause in d.reason


def test_budget_is_one_per_contact_whatever_the_causes() -> None:
    assert decide("busy", 2, 3, DELAYS).state == "pending"
    last = decide("no_answer", 3, 3, DELAYS)
    assert last.state == "failed"
    assert "no_answer" in last.reason and "3 of 3" in last.reason


def test_a_cause_absent_from_retry_delays_is_never_retried() -> None:
    assert decide("busy", 1, 5, {"no_answer": 60}).state == "failed"


# Every cause a call can end with: the only keys retry_delays can usefully hold.
CAUSES = sorted([*vocabulary.CALL_CAUSES, vocabulary.UNKNOWN])

# What a retry_delays value may hold in a row the database let through, or in an
# older row: numbers of every kind (the usable ones most often), and junk.
delay_values = st.one_of(
    st.integers(-10, 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, int, int, dict[str, Any]]:
    """(cause, attempts, max_attempts, retry_delays), keyed by the real causes.

    The call's cause has a delay in most examples (else only the "not retried"
    branch would run), attempts sit around the budget, and a few keys outside
    the vocabulary are mixed in.
    """
    cause = draw(st.sampled_from(CAUSES))
    max_attempts = draw(st.integers(1, 12))
    attempts = draw(st.integers(0, max_attempts + 3))
    strangers = draw(st.dictionaries(st.text(max_size=12), delay_values, max_size=2))
    known = draw(st.dictionaries(st.sampled_from(CAUSES), delay_values, max_size=len(CAUSES)))
    own = {cause: draw(delay_values)} if draw(st.integers(0, 9)) < 8 else {}
    return cause, attempts, max_attempts, {**strangers, **known, **own}


def usable(delay: Any) -> bool:
    """A delay the policy can wait for: a finite number (a bool is not one)."""
    return isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay)


@given(policies())
@settings(max_examples=300, deadline=None)
def test_policy_never_raises_and_never_exceeds_the_budget(
    policy: tuple[str, int, int, dict[str, Any]],
) -> None:
    cause, attempts, max_attempts, delays = policy
    d = decide(cause, attempts, max_attempts, delays)
    delay = delays.get(cause)
    usable = isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay)
    if cause in assumptions.ANSWERED_CAUSES:
        assert (d.state, d.delay) == ("completed", None)
    elif attempts >= max_attempts:
        # The budget is spent, whatever the delay says.
        assert (d.state, d.delay) == ("failed", None), d
        if usable:
            assert f"{attempts} of {max_attempts}" in d.reason
    elif usable:
        assert d.state == "pending", d
        assert d.delay == min(max(0.0, float(delay)), outcomes.MAX_RETRY_DELAY_SECONDS)
    else:
        assert (d.state, d.delay) == ("failed", None), d
    assert cause in d.reason


def test_policy_examples_reach_every_branch() -> None:
    # The property above is only as good as its examples: each branch of the
    # policy (answered, budget spent with a delay, retried, no delay) must be
    # drawn, many times, in any run.
    seen: Counter[str] = Counter()

    @given(policies())
    @settings(max_examples=300, deadline=None, database=None)
    def tally(policy: tuple[str, int, int, dict[str, Any]]) -> None:
        cause, attempts, max_attempts, delays = policy
        if cause in assumptions.ANSWERED_CAUSES:
            seen["answered"] += 1
        elif usable(delays.get(cause)):
            seen["spent" if attempts >= max_attempts else "retried"] += 1
        else:
            seen["not retried"] += 1

    tally()
    assert min(seen[b] for b in ("answered", "spent", "retried", "not retried")) >= 15, seen


# --- the final page's body ------------------------------------------------------------

# What Aculab may put in this_call's fields (docs/aculab.md: the final page), and worse.
durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**9),
    st.sampled_from(["12.5", "0", "-3", "nan", "inf", "", "soon"]),
    st.none(),
    st.booleans(),
)
raw_causes = st.one_of(
    st.sampled_from(["486", "-1", "200", "404"]),
    st.integers(-1000, 1000),
    st.text(max_size=100),
    st.none(),
)
# The other fields of a real final page, each maybe there, maybe odd.
call_extras = st.dictionaries(
    st.sampled_from(
        ["call_id", "call_direction", "call_from", "call_to", "call_state", "outbound_parameters"]
    ),
    st.one_of(st.text(max_size=20), st.none(), st.integers()),
)
body_extras = st.dictionaries(
    st.sampled_from(["token", "application_name", "x"]), st.one_of(st.text(max_size=20), st.none())
)
references = st.text(min_size=1, max_size=200)


def expected_duration(value: Any) -> float | None:
    """seconds_call_duration as the engine must store it: a finite number >= 0, else none."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@st.composite
def final_pages(draw: st.DrawFn) -> tuple[dict[str, Any], Outcome]:
    """A final-page body the engine must read, and the outcome it must read from it."""
    reference = draw(references)
    cause = draw(st.sampled_from(sorted(vocabulary.CALL_CAUSES)))
    this_call: dict[str, Any] = {**draw(call_extras), "call_cause": cause}
    raw: Any = None
    if draw(st.booleans()):
        raw = this_call["call_raw_cause"] = draw(raw_causes)
    seconds: Any = None
    if draw(st.booleans()):
        seconds = this_call["seconds_call_duration"] = draw(durations)
    body = {**draw(body_extras), "application_instance_id": reference, "this_call": this_call}
    expected = Outcome(
        reference=reference,
        cause=cause,
        raw_cause=None if raw is None else str(raw)[:64],
        duration=expected_duration(seconds),
    )
    return body, expected


@given(final_pages())
@settings(max_examples=300, deadline=None)
def test_every_readable_final_page_gives_its_own_outcome(
    page: tuple[dict[str, Any], Outcome],
) -> None:
    body, expected = page
    assert outcomes.from_instance_info(body) == expected


@st.composite
def broken_final_pages(draw: st.DrawFn) -> Any:
    """A readable final page with one thing wrong that makes it unusable."""
    body, _ = draw(final_pages())
    this_call = dict(body["this_call"])
    flaw = draw(
        st.sampled_from(["no_reference", "reference", "no_call", "call", "no_cause", "cause"])
    )
    if flaw == "no_reference":
        del body["application_instance_id"]
    elif flaw == "reference":
        body["application_instance_id"] = draw(
            st.one_of(
                st.just(""),
                st.text(min_size=201, max_size=300),
                st.integers(),
                st.none(),
                st.lists(references, min_size=1, max_size=2),
            )
        )
    elif flaw == "no_call":
        del body["this_call"]
    elif flaw == "call":
        body["this_call"] = draw(st.one_of(st.none(), st.text(max_size=5), st.just([this_call])))
    elif flaw == "no_cause":
        del this_call["call_cause"]
        body["this_call"] = this_call
    else:
        this_call["call_cause"] = draw(
            st.one_of(
                st.text(max_size=12).filter(lambda t: t not in vocabulary.CALL_CAUSES),
                st.sampled_from(["unknown", "Completed", " busy", None, 486]),
            )
        )
        body["this_call"] = this_call
    return body


@given(broken_final_pages())
@settings(max_examples=300, deadline=None)
def test_a_final_page_missing_its_reference_call_or_known_cause_is_refused(body: Any) -> None:
    with pytest.raises(outcomes.BadOutcome):
        outcomes.from_instance_info(body)


@given(
    body=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "application_instance_id",
                        "this_call",
                        "call_cause",
                        "call_raw_cause",
                        "seconds_call_duration",
                        "x",
                    ]
                ),
                children,
                max_size=5,
            )
        ),
        max_leaves=12,
    )
    | final_pages().map(lambda page: page[0])
)
@settings(max_examples=300, deadline=None)
def test_hostile_instance_info_is_refused_with_bad_outcome_or_parsed(body: Any) -> None:
    try:
        o = outcomes.from_instance_info(body)
    except outcomes.BadOutcome:
        return
    assert o.reference == body["application_instance_id"]
    assert o.cause == body["this_call"]["call_cause"] in vocabulary.CALL_CAUSES
    assert o.duration is None or (math.isfinite(o.duration) and o.duration >= 0)
    assert o.raw_cause is None or len(o.raw_cause) <= 64


# --- end to end, poll only -----------------------------------------------------------


async def test_poll_only_answered_calls_complete_the_contacts_and_the_campaign(
    db_pool: asyncpg.Pool, make_simulator: MakeSim, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"completed": 1.0}))
    settings_ = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(12))

    await run_engine(db_pool, settings_, campaign_state(db_pool, cid))

    assert await states(db_pool, cid) == {"completed": 12}
    calls = await db_pool.fetch("SELECT call_cause, outcome_source, duration FROM calls")
    assert {c["call_cause"] for c in calls} == {"completed"}
    assert {c["outcome_source"] for c in calls} == {"poll"}
    assert all(c["duration"] is not None for c in calls)
    assert capsys.readouterr().out.count("campaign_completed") == 1


async def test_busy_every_time_uses_the_whole_budget_then_fails_with_the_last_cause(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"busy": 1.0}))
    settings_ = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=5, max_attempts=3, retry_delays={"busy": 0.1})
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)

    await run_engine(db_pool, settings_, campaign_state(db_pool, cid))

    rows = await db_pool.fetch("SELECT state, attempts, last_result, last_error FROM contacts")
    assert {r["state"] for r in rows} == {"failed"}
    assert {r["attempts"] for r in rows} == {3}
    assert all("busy" in r["last_error"] and "3 of 3" in r["last_error"] for r in rows)
    for n in numbers:
        assert sim.calls_to(n) == 3
    # Each attempt was a new request id, and kept the same caller ID and payload.
    by_number: dict[str, list[Any]] = {}
    for call in sim.calls:
        by_number.setdefault(call.to, []).append(call)
    for attempts in by_number.values():
        assert len({c.unique_id for c in attempts}) == 3
        assert len({(c.from_, c.token, c.outbound_parameters) for c in attempts}) == 1


async def test_retry_waits_for_the_delay_of_its_cause(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"no_answer": 1.0}))
    cid = await create_campaign(db_pool, retry_delays={"no_answer": 3600})
    await add_contacts(db_pool, cid, uk_numbers(2))

    async def retried() -> bool:
        n = await db_pool.fetchval(
            "SELECT count(*) FROM contacts WHERE state = 'pending' AND last_result = 'no_answer'"
        )
        return bool(n == 2)

    await run_engine(db_pool, engine_settings(sim), retried)

    rows = await db_pool.fetch(
        "SELECT extract(epoch FROM next_attempt_at - now()) AS wait, last_result FROM contacts"
    )
    assert all(3500 < r["wait"] <= 3600 for r in rows)
    assert {r["last_result"] for r in rows} == {"no_answer"}
    await asyncio.sleep(0.3)
    assert sim.started_count() == 2  # nothing redialed before the delay


async def test_unobtainable_is_not_retried_by_default(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"unobtainable": 1.0}))
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    await run_engine(db_pool, engine_settings(sim), campaign_state(db_pool, cid))
    assert await states(db_pool, cid) == {"failed": 3}
    assert sim.started_count() == 3


async def test_call_still_running_past_the_give_up_age_is_unknown_and_never_retried(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # `unknown` is retried by policy, but not when Aculab said the call is still
    # running: a second attempt would ring a contact whose first call is live.
    sim = await make_simulator(
        SimulatorConfig(cause_weights={"completed": 1.0}, answered_seconds=(600.0, 600.0))
    )
    settings_ = engine_settings(sim, poller={"give_up_after": 0.5})
    cid = await create_campaign(db_pool, max_attempts=2, retry_delays={"unknown": 0})
    await add_contacts(db_pool, cid, uk_numbers(2))

    await run_engine(db_pool, settings_, campaign_state(db_pool, cid))

    rows = await db_pool.fetch("SELECT state, last_result, last_error FROM contacts")
    assert {r["state"] for r in rows} == {"failed"}
    assert {r["last_result"] for r in rows} == {"unknown"}
    assert all("not retried" in r["last_error"] for r in rows)
    assert all("still shows it running" in r["last_error"] for r in rows)
    sources = await db_pool.fetch("SELECT DISTINCT outcome_source FROM calls")
    assert [s["outcome_source"] for s in sources] == ["give_up"]
    assert sim.started_count() == 2


async def test_without_polling_a_call_whose_final_page_never_comes_is_given_up(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # Push only (no API access key) and no final page: the contact must not stay
    # dialing for ever.
    sim = await make_simulator(
        SimulatorConfig(cause_weights={"completed": 1.0}, answered_seconds=(600.0, 600.0))
    )
    settings_ = engine_settings(
        sim,
        aculab={"api_access_key": ""},
        poller={"give_up_after": 0.5, "first_poll_delay": 0.1},
    )
    cid = await create_campaign(db_pool, max_attempts=1)
    await add_contacts(db_pool, cid, uk_numbers(2))

    await run_engine(db_pool, settings_, campaign_state(db_pool, cid))

    rows = await db_pool.fetch("SELECT state, last_result, last_error FROM contacts")
    assert {(r["state"], r["last_result"]) for r in rows} == {("failed", "unknown")}
    assert all("polling is off" in r["last_error"] for r in rows)
    assert sim.started_count() == 2


async def test_a_daemon_without_polling_leaves_the_polling_daemons_schedule_alone(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(
        SimulatorConfig(cause_weights={"completed": 1.0}, answered_seconds=(1.0, 1.0))
    )
    polling = engine_settings(sim, poller={"give_up_after": 7200, "first_poll_delay": 0.0})
    push_only = engine_settings(
        sim, aculab={"api_access_key": ""}, poller={"give_up_after": 7200, "first_poll_delay": 0.0}
    )
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    await run_until_idle(db_pool, polling)
    await asyncio.sleep(1.5)  # finished at the simulator; their final pages went nowhere
    async with AculabClient(push_only.aculab, push_only.http) as client:
        await Poller(db_pool, client, push_only).round()
    async with AculabClient(polling.aculab, polling.http) as client:
        poller = Poller(db_pool, client, polling)
        await poller.round()
    assert poller.stats.recorded == 3
    assert await db_pool.fetchval("SELECT count(*) FROM calls WHERE finished_at IS NULL") == 0


async def test_instance_that_could_not_run_counts_as_failed_with_the_errs_text(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(SimulatorConfig(calls_per_second=0.2))
    settings_ = engine_settings(sim, poller={"first_poll_delay": 0.5})
    cid = await create_campaign(db_pool, max_attempts=1)
    await add_contacts(db_pool, cid, uk_numbers(4))
    await run_until_idle(db_pool, settings_)
    assert sim.purge("MyOutboundService") >= 2

    await run_engine(db_pool, settings_, campaign_state(db_pool, cid), timeout=30)
    failed = await db_pool.fetch("SELECT last_error FROM contacts WHERE state = 'failed'")
    assert len(failed) >= 2
    assert all("could not run" in r["last_error"] for r in failed)


# --- one writer of truth ---------------------------------------------------------------


async def _dialing_reference(
    pool: asyncpg.Pool, sim: Simulator, **campaign: Any
) -> tuple[int, str]:
    cid = await create_campaign(pool, **campaign)
    await add_contacts(pool, cid, uk_numbers(1))
    await run_until_idle(pool, engine_settings(sim, poller={"enabled": False}))
    ref = await pool.fetchval("SELECT reference FROM contacts WHERE campaign_id = $1", cid)
    return cid, ref


async def test_first_recorded_outcome_wins_and_the_second_is_a_no_op(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid, ref = await _dialing_reference(db_pool, simulator)
    first = await outcomes.record(db_pool, Outcome(ref, "completed", "200", 12.0), "push")
    second = await outcomes.record(db_pool, Outcome(ref, "busy", "486", 0.0), "poll")
    assert (first, second) == ("recorded", "duplicate")
    call = await db_pool.fetchrow("SELECT call_cause, outcome_source, duration FROM calls")
    assert dict(call) == {"call_cause": "completed", "outcome_source": "push", "duration": 12.0}
    assert await states(db_pool, cid) == {"completed": 1}


async def test_concurrent_push_and_poll_record_exactly_one_outcome(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid, ref = await _dialing_reference(db_pool, simulator, retry_delays={"busy": 0})
    results = await asyncio.gather(
        outcomes.record(db_pool, Outcome(ref, "busy", "486", 0.0), "push"),
        outcomes.record(db_pool, Outcome(ref, "busy", "486", 0.0), "poll"),
    )
    assert sorted(results) == ["duplicate", "recorded"]
    assert await states(db_pool, cid) == {"pending": 1}


async def test_outcome_for_a_cancelled_contact_is_stored_but_does_not_resurrect_it(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid, ref = await _dialing_reference(db_pool, simulator)
    await db_pool.execute("UPDATE contacts SET state = 'cancelled'")
    await db_pool.execute("UPDATE campaigns SET state = 'cancelled'")
    assert await outcomes.record(db_pool, Outcome(ref, "busy", "486", 0.0), "push") == "recorded"
    assert await states(db_pool, cid) == {"cancelled": 1}
    assert await db_pool.fetchval("SELECT call_cause FROM calls") == "busy"


async def test_unknown_reference_is_reported_and_changes_nothing(db_pool: asyncpg.Pool) -> None:
    result = await outcomes.record(db_pool, Outcome("nope", "busy"), "push")
    assert result == "unknown_reference"


async def test_push_that_beat_the_acknowledgement_is_matched_later(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid, ref = await _dialing_reference(db_pool, simulator)
    async with db_pool.acquire() as conn:
        await oq.stash_unmatched(conn, Outcome(ref, "hung_up", "200", 3.0))
    settings_ = engine_settings(simulator, poller={"enabled": False})
    await run_engine(db_pool, settings_, campaign_state(db_pool, cid))
    assert await states(db_pool, cid) == {"completed": 1}
    assert await db_pool.fetchval("SELECT count(*) FROM unmatched_outcomes") == 0


# --- the poller under failure ---------------------------------------------------------


async def test_poller_facing_an_unreachable_aculab_backs_off_then_recovers(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"completed": 1.0}))
    port = int(sim.base_url.rsplit(":", 1)[1])
    settings_ = engine_settings(
        sim,
        http={"connect_timeout": 0.2, "read_timeout": 0.2},
        poller={"first_poll_delay": 0.1, "interval": 0.1, "max_interval": 1.0},
    )
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(20))
    await run_until_idle(db_pool, settings_)
    await sim.stop()

    from campaign.aculab import AculabClient
    from campaign.poller import Poller

    async with AculabClient(settings_.aculab, settings_.http) as client:
        poller = Poller(db_pool, client, settings_)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop, round_seconds=0.1))
        await asyncio.sleep(2.5)
        stop.set()
        await task
    # 20 calls polled every 0.1 s would be ~500 polls; backing off to 1 s, at most ~6 rounds.
    assert 0 < poller.stats.polls <= 120
    assert poller.stats.recorded == 0

    await sim.start(port=port)
    await run_engine(db_pool, settings_, campaign_state(db_pool, cid), timeout=30)
    assert await states(db_pool, cid) == {"completed": 20}


# --- push, and push with lost callbacks -------------------------------------------------

SECRET = "final-page-secret-0123456789"


async def _with_listener(
    db_pool: asyncpg.Pool,
    make_simulator: MakeSim,
    loss: float,
    cause_weights: dict[str, float],
) -> tuple[Simulator, Server]:
    listener = ListenerSettings(port=0, webhook_secret=SecretStr(SECRET))
    server = Server(build_app(db_pool, listener, new_metrics(), dict), listener)
    await server.start()
    sim = await make_simulator(
        SimulatorConfig(
            final_page_url=f"{server.url}/final/{SECRET}",
            callback_loss=loss,
            cause_weights=cause_weights,
            seed=3,
        )
    )
    return sim, server


async def test_push_only_records_every_outcome_without_polling(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim, server = await _with_listener(db_pool, make_simulator, 0.0, {"completed": 1.0})
    try:
        cid = await create_campaign(db_pool, batch_size=10)
        await add_contacts(db_pool, cid, uk_numbers(30))
        settings_ = engine_settings(sim, poller={"enabled": False})
        await run_engine(db_pool, settings_, campaign_state(db_pool, cid), timeout=30)
    finally:
        await server.stop()
    assert await states(db_pool, cid) == {"completed": 30}
    sources = await db_pool.fetch("SELECT outcome_source, count(*) AS n FROM calls GROUP BY 1")
    assert {r["outcome_source"]: r["n"] for r in sources} == {"push": 30}
    assert sim.request_count("application_status") == 0


async def test_lost_callbacks_are_reconciled_by_polling(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim, server = await _with_listener(
        db_pool, make_simulator, 0.4, {"completed": 0.7, "busy": 0.3}
    )
    try:
        cid = await create_campaign(db_pool, batch_size=10, retry_delays={"busy": 0})
        await add_contacts(db_pool, cid, uk_numbers(40))
        settings_ = engine_settings(sim, poller={"first_poll_delay": 1.0})
        await run_engine(db_pool, settings_, campaign_state(db_pool, cid), timeout=60)
    finally:
        await server.stop()
    final = await states(db_pool, cid)
    assert sum(final.values()) == 40 and set(final) <= {"completed", "failed"}
    sources = {
        r["outcome_source"]: r["n"]
        for r in await db_pool.fetch("SELECT outcome_source, count(*) AS n FROM calls GROUP BY 1")
    }
    assert sources.get("push", 0) > 0 and sources.get("poll", 0) > 0
    lost = sim.callback_counts()["lost"]
    assert lost > 0
    # Every call was started once per attempt, whichever path reported it.
    assert sim.started_count() == await db_pool.fetchval("SELECT count(*) FROM calls")
