"""The vocabulary (campaign/vocabulary.py) and the database's CHECK constraints say the same.

The words are read back from pg_constraint on a freshly migrated database, so a state
added to a migration and not to the vocabulary (or the other way round) fails here.
"""

from __future__ import annotations

import re

import pytest

from campaign import assumptions, simulator, vocabulary
from campaign.db.admin import Pool

# The CHECKs on one column, as PostgreSQL prints them back.
COLUMN_CHECKS = """
SELECT c.conname, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2
ORDER BY c.conname
"""

# 'active'::text inside "state = ANY (ARRAY['active'::text, ...])".
_LISTED_WORD = re.compile(r"'([^']*)'::text")
# The alternatives of a like_regex "^(busy|no_answer|...)$".
_REGEX_WORDS = re.compile(r"\^\(([a-z_|]+)\)\$")


async def _listed_words(pool: Pool, table: str, column: str) -> list[str]:
    """The words of the one `column IN (...)` CHECK on table.column."""
    rows = await pool.fetch(COLUMN_CHECKS, table, column)
    lists = [_LISTED_WORD.findall(r["definition"]) for r in rows]
    lists = [words for words in lists if words]
    assert len(lists) == 1, f"expected one list of words checked on {table}.{column}: {rows}"
    return lists[0]


@pytest.mark.parametrize(
    ("table", "column", "words"),
    [
        ("campaigns", "state", vocabulary.CAMPAIGN_STATES),
        ("contacts", "state", vocabulary.CONTACT_STATES),
        ("batches", "state", vocabulary.BATCH_STATES),
        ("calls", "outcome_source", vocabulary.OUTCOME_SOURCES),
        ("batch_resolutions", "action", vocabulary.RESOLVE_ACTIONS),
    ],
)
async def test_each_state_vocabulary_is_the_words_its_column_check_allows(
    db_pool: Pool, table: str, column: str, words: tuple[str, ...]
) -> None:
    checked = await _listed_words(db_pool, table, column)
    assert sorted(checked) == sorted(words)
    assert len(set(words)) == len(words)


async def test_the_retryable_causes_are_the_retry_delay_keys_the_database_accepts(
    db_pool: Pool,
) -> None:
    rows = await db_pool.fetch(COLUMN_CHECKS, "campaigns", "retry_delays")
    found = [m.group(1) for r in rows if (m := _REGEX_WORDS.search(r["definition"]))]
    assert len(found) == 1, rows
    assert sorted(found[0].split("|")) == sorted(vocabulary.RETRYABLE_CAUSES)


async def test_the_schemas_default_retry_delays_name_only_retryable_causes(
    db_pool: Pool,
) -> None:
    default = await db_pool.fetchval(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d"
        " JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        " WHERE d.adrelid = 'campaigns'::regclass AND a.attname = 'retry_delays'"
    )
    keys = set(re.findall(r'"([a-z_]+)":', default))
    assert keys and keys <= set(vocabulary.RETRYABLE_CAUSES)


def test_every_recorded_cause_is_either_answered_or_retryable_never_both() -> None:
    answered, retryable = set(vocabulary.ANSWERED_CAUSES), set(vocabulary.RETRYABLE_CAUSES)
    assert answered | retryable == set(vocabulary.RECORDED_CAUSES)
    assert not answered & retryable
    assert set(vocabulary.CALL_CAUSES) | {vocabulary.UNKNOWN} == set(vocabulary.RECORDED_CAUSES)


def test_the_simulator_reports_exactly_the_causes_the_engine_knows() -> None:
    assert set(simulator.CALL_CAUSES) == set(vocabulary.CALL_CAUSES)
    assert set(assumptions.SIMULATED_RAW_CAUSES) == set(vocabulary.CALL_CAUSES)
    assert set(vocabulary.ANSWERED_CAUSES) == assumptions.ANSWERED_CAUSES


def test_never_and_open_states_are_contact_states() -> None:
    contact = set(vocabulary.CONTACT_STATES)
    assert set(vocabulary.NEVER_STATES) <= contact
    assert set(vocabulary.OPEN_STATES) <= contact
    assert not set(vocabulary.NEVER_STATES) & set(vocabulary.OPEN_STATES)


def test_budget_keys_are_the_account_and_one_per_campaign() -> None:
    assert vocabulary.ACCOUNT_BUDGET == "account"
    assert vocabulary.campaign_budget(42) == "campaign:42"
    assert vocabulary.campaign_budget(42) != vocabulary.campaign_budget(4)
