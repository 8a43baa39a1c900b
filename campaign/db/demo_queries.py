"""SQL used by `campaign demo` only: a throw-away database and a sample campaign."""

from __future__ import annotations

from collections.abc import Sequence

from campaign.db import queries as q
from campaign.db.queries import Conn


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def recreate_database(conn: Conn, name: str) -> None:
    # Identifiers cannot be parameters; `name` is a constant of the demo, quoted.
    await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")


CREATE_DEMO_CAMPAIGN = """
INSERT INTO campaigns (name, service_name, caller_id, calls_per_second, batch_size,
                       window_start, window_end, max_concurrent_calls, retry_delays)
VALUES ('demo', $1, $2, $3, 50, '00:00', '24:00', 10000,
        '{"busy": 2, "no_answer": 2, "failed": 2, "dropped": 2, "unknown": 2}')
RETURNING id
"""


async def create_demo_campaign(conn: Conn, service: str, caller_id: str, cps: float) -> int:
    campaign_id: int = await conn.fetchval(CREATE_DEMO_CAMPAIGN, service, caller_id, cps)
    return campaign_id


async def load_destinations(conn: Conn, campaign_id: int, destinations: Sequence[str]) -> None:
    await conn.copy_records_to_table(
        "contacts",
        records=[(campaign_id, d) for d in destinations],
        columns=["campaign_id", "destination"],
    )


SUPPRESS = "INSERT INTO suppressions (destination, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING"


async def suppress(conn: Conn, number: str, reason: str) -> None:
    await conn.execute(SUPPRESS, number, reason)


async def state_counts(conn: Conn, campaign_id: int) -> dict[str, int]:
    """One campaign's contacts per state (queries.state_counts)."""
    return (await q.state_counts(conn, [campaign_id]))[campaign_id]


REASONS = """
SELECT last_error, count(*)::bigint AS n
FROM contacts
WHERE campaign_id = $1 AND state IN ('invalid', 'suppressed', 'duplicate', 'failed')
GROUP BY last_error
"""


async def reasons(conn: Conn, campaign_id: int) -> dict[str, int]:
    return {r["last_error"]: r["n"] for r in await conn.fetch(REASONS, campaign_id)}


CAMPAIGN_STATE = "SELECT state FROM campaigns WHERE id = $1"


async def campaign_state(conn: Conn, campaign_id: int) -> str:
    state: str = await conn.fetchval(CAMPAIGN_STATE, campaign_id)
    return state


OUTCOMES = """
SELECT coalesce(call_cause, 'awaiting') AS cause, count(*)::bigint AS n
FROM calls WHERE campaign_id = $1 GROUP BY 1
"""


async def outcomes(conn: Conn, campaign_id: int) -> dict[str, int]:
    return {r["cause"]: r["n"] for r in await conn.fetch(OUTCOMES, campaign_id)}


SOURCES = """
SELECT outcome_source, count(*)::bigint AS n
FROM calls WHERE campaign_id = $1 AND outcome_source IS NOT NULL GROUP BY 1
"""


async def sources(conn: Conn, campaign_id: int) -> dict[str, int]:
    return {r["outcome_source"]: r["n"] for r in await conn.fetch(SOURCES, campaign_id)}


ATTEMPTS = """
SELECT attempts, count(*)::bigint AS n FROM contacts WHERE campaign_id = $1 GROUP BY 1
"""


async def attempts(conn: Conn, campaign_id: int) -> dict[int, int]:
    return {r["attempts"]: r["n"] for r in await conn.fetch(ATTEMPTS, campaign_id)}


ATTEMPTS_BY_DESTINATION = """
SELECT destination, attempts FROM contacts
WHERE campaign_id = $1 AND state NOT IN ('duplicate')
"""


async def attempts_by_destination(conn: Conn, campaign_id: int) -> list[tuple[str, int]]:
    rows = await conn.fetch(ATTEMPTS_BY_DESTINATION, campaign_id)
    return [(r["destination"], r["attempts"]) for r in rows]


async def drop_database(conn: Conn, name: str) -> None:
    await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
