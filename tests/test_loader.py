"""`campaign load` through `load_csv`, on a real PostgreSQL: what lands, what is refused, why."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign.db import admin
from campaign.loader import (
    _BATCH_ROWS,
    MAX_TOKEN_LENGTH,
    LoadError,
    LoadResult,
    _ByDistinctValue,
    _RowError,
    load_csv,
)
from campaign.simulator import Simulator
from tests.engine import CALLER_ID, create_campaign, engine_settings, run_until_idle, states

Pool = admin.Pool


async def new_campaign(pool: Pool, name: str = "spring", *, state: str = "active") -> int:
    campaign_id: int = await pool.fetchval(
        "INSERT INTO campaigns (name, service_name, state) VALUES ($1, 'Svc', $2) RETURNING id",
        name,
        state,
    )
    return campaign_id


async def contacts(pool: Pool, campaign_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM contacts WHERE campaign_id = $1 ORDER BY id", campaign_id
    )


def write(tmp_path: Path, text: str | bytes, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def refused_lines(result: LoadResult) -> dict[int, str]:
    return {r.line: r.reason for r in result.refusals}


async def test_good_rows_load_with_every_column_converted(db_pool: Pool, tmp_path: Path) -> None:
    cid = await new_campaign(db_pool)
    headers = json.dumps([{"name": "X-Account", "value": "42"}])
    path = write(
        tmp_path,
        "destination,caller_id,token,outbound_parameters,extra_sip_headers,timezone,priority,not_before\n"
        f'+441908273800,441908273801,tok-1, a b ,"{headers.replace(chr(34), chr(34) * 2)}",'
        "Europe/London,7,2030-05-01T09:30:00\n"
        "  sip:bob@example.com  ,,,,,,,2030-05-01T09:30:00+02:00\n",
    )

    result = await load_csv(db_pool, "spring", path)

    assert (result.loaded, result.refused, result.refusals) == (2, 0, [])
    first, second = await contacts(db_pool, cid)
    assert first["destination"] == "+441908273800"
    assert first["caller_id"] == "441908273801"
    assert first["token"] == "tok-1"
    assert first["outbound_parameters"] == " a b "  # passed on verbatim
    assert first["extra_sip_headers"] == [{"name": "X-Account", "value": "42"}]
    assert first["timezone"] == "Europe/London"
    assert first["priority"] == 7
    assert first["not_before"] == datetime(2030, 5, 1, 9, 30, tzinfo=UTC)  # naive = UTC
    assert first["state"] == "pending"
    assert second["destination"] == "sip:bob@example.com"
    assert second["caller_id"] is None
    assert second["token"] is None
    assert second["extra_sip_headers"] is None
    assert second["priority"] == 0
    assert second["not_before"] == datetime(2030, 5, 1, 7, 30, tzinfo=UTC)


async def test_each_bad_row_is_refused_by_line_number_and_the_good_rows_load(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    rows = [
        "destination,token,priority,timezone,not_before,extra_sip_headers",
        "+441,ok,,,,",  # 2 good
        ",t,,,,",  # 3 empty destination
        "   ,t,,,,",  # 4 blank destination
        "+442,t,high,,,",  # 5 priority not an integer
        "+443,t,99999999999,,,",  # 6 priority out of range
        "+444,t,,Mars/Olympus,,",  # 7 unknown zone
        "+445,t,,../etc/passwd,,",  # 8 not a zone key
        "+446,t,,,tomorrow,",  # 9 bad timestamp
        '+447,t,,,,"[{""name"": ""X""}]"',  # 10 header item without value
        "+448,t,,,,{not json",  # 11 bad JSON
        '+449,t,,,,"{""name"": ""X"", ""value"": ""y""}"',  # 12 not a list
        '+4410,t,,,,"[{""name"": ""X"", ""value"": NaN}]"',  # 13 NaN
        "+4411,t",  # 14 too few fields
        "+4412,t,,,,,extra",  # 15 too many fields
        f"+4413,{'x' * (MAX_TOKEN_LENGTH + 1)},,,,",  # 16 token too long
        f"+4414,{'x' * MAX_TOKEN_LENGTH},,,,",  # 17 good: token at the limit
        "+4415,t\x00t,,,,",  # 18 NUL byte
        "+4416,t,,,,",  # 19 good
    ]
    path = write(tmp_path, "\n".join(rows) + "\n")

    result = await load_csv(db_pool, "spring", path)

    refused = refused_lines(result)
    assert set(refused) == {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18}
    assert refused[3] == refused[4] == "empty destination"
    assert refused[5].startswith("priority: not an integer")
    assert "out of range" in refused[6]
    assert "unknown IANA zone 'Mars/Olympus'" in refused[7]
    assert "unknown IANA zone" in refused[8]
    assert refused[9].startswith("not_before: not an ISO 8601 timestamp")
    assert "name and value" in refused[10]
    assert "not valid JSON" in refused[11]
    assert "JSON list" in refused[12]
    assert "NaN" in refused[13]
    assert refused[14] == "expected 6 fields, found 2"
    assert refused[15] == "expected 6 fields, found 7"
    assert refused[16] == f"token: {MAX_TOKEN_LENGTH + 1} characters (at most {MAX_TOKEN_LENGTH})"
    assert refused[18] == "NUL byte in a field"
    assert (result.loaded, result.refused) == (3, 15)
    loaded = [r["destination"] for r in await contacts(db_pool, cid)]
    assert loaded == ["+441", "+4414", "+4416"]


async def test_invalid_utf8_refuses_only_its_row(db_pool: Pool, tmp_path: Path) -> None:
    cid = await new_campaign(db_pool)
    path = write(tmp_path, b"destination,token\n+441,caf\xe9\n+442,caf\xc3\xa9\n")

    result = await load_csv(db_pool, "spring", path)

    assert refused_lines(result) == {2: "invalid UTF-8"}
    assert [(r["destination"], r["token"]) for r in await contacts(db_pool, cid)] == [
        ("+442", "café")
    ]


async def test_quoted_fields_keep_commas_and_newlines_and_lines_count_from_the_record_start(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    path = write(
        tmp_path,
        "destination,outbound_parameters,priority\n"  # 1
        '+441,"a, b\nand a second line",1\n'  # 2-3
        '+442,"x\r\ny",bad\n'  # 4-5: refused, reported at line 4
        '"+443","tab\there \\ backslash",2\n',  # 6
    )

    result = await load_csv(db_pool, "spring", path)

    assert [str(r) for r in result.refusals] == [
        "line 4: priority: not an integer: 'bad' (record spans lines 4-5)"
    ]
    rows = await contacts(db_pool, cid)
    assert [(r["destination"], r["outbound_parameters"]) for r in rows] == [
        ("+441", "a, b\nand a second line"),
        ("+443", "tab\there \\ backslash"),
    ]


async def test_a_byte_order_mark_before_the_header_is_ignored(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    path = write(tmp_path, "\ufeffdestination\r\n+441\r\n+442\r\n".encode())

    result = await load_csv(db_pool, "spring", path)

    assert (result.loaded, result.refused) == (2, 0)
    assert [r["destination"] for r in await contacts(db_pool, cid)] == ["+441", "+442"]


async def test_header_names_are_matched_without_case_or_surrounding_spaces(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    path = write(tmp_path, " Destination ;TOKEN\n+441;t\n")

    result = await load_csv(db_pool, "spring", path, delimiter=";")

    assert result.loaded == 1
    assert [(r["destination"], r["token"]) for r in await contacts(db_pool, cid)] == [("+441", "t")]


async def test_blank_lines_are_skipped_and_counted_in_line_numbers(
    db_pool: Pool, tmp_path: Path
) -> None:
    await new_campaign(db_pool)
    path = write(tmp_path, "\ndestination,priority\n\n+441,1\n\n+442,x\n")

    result = await load_csv(db_pool, "spring", path)

    assert result.loaded == 1
    assert refused_lines(result) == {6: "priority: not an integer: 'x'"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("destination,phone\n+441,1\n", "unknown column 'phone' in the header"),
        ("token\nabc\n", "no destination column"),
        ("destination,token,Destination\n", "'destination' appears twice"),
        ("destination,,token\n", "header column 2 has no name"),
        ("", "is empty: expected a header row"),
        ("\n\n", "is empty: expected a header row"),
    ],
)
async def test_a_bad_header_refuses_the_whole_file(
    db_pool: Pool, tmp_path: Path, text: str, message: str
) -> None:
    cid = await new_campaign(db_pool)
    path = write(tmp_path, text)

    with pytest.raises(LoadError, match=message):
        await load_csv(db_pool, "spring", path)

    assert await contacts(db_pool, cid) == []


async def test_a_header_without_rows_loads_nothing_and_succeeds(
    db_pool: Pool, tmp_path: Path
) -> None:
    await new_campaign(db_pool)
    path = write(tmp_path, "destination,token\n")

    result = await load_csv(db_pool, "spring", path)

    assert (result.loaded, result.refused) == (0, 0)


async def test_a_missing_file_or_a_directory_is_a_load_error(db_pool: Pool, tmp_path: Path) -> None:
    await new_campaign(db_pool)
    with pytest.raises(LoadError, match="No such file"):
        await load_csv(db_pool, "spring", tmp_path / "missing.csv")
    with pytest.raises(LoadError, match="cannot read"):
        await load_csv(db_pool, "spring", tmp_path)


async def test_an_unknown_campaign_is_refused(db_pool: Pool, tmp_path: Path) -> None:
    path = write(tmp_path, "destination\n+441\n")
    with pytest.raises(admin.CampaignNotFound, match="no campaign named 'nope'"):
        await load_csv(db_pool, "nope", path)


async def test_a_cancelled_campaign_takes_no_contacts(db_pool: Pool, tmp_path: Path) -> None:
    cid = await new_campaign(db_pool, state="cancelled")
    path = write(tmp_path, "destination\n+441\n")

    with pytest.raises(LoadError, match="is cancelled"):
        await load_csv(db_pool, "spring", path)

    assert await contacts(db_pool, cid) == []


async def test_a_paused_campaign_takes_contacts_and_reports_its_state(
    db_pool: Pool, tmp_path: Path
) -> None:
    await new_campaign(db_pool, state="paused")
    result = await load_csv(db_pool, "spring", write(tmp_path, "destination\n+441\n"))
    assert (result.loaded, result.campaign_state) == (1, "paused")


async def test_a_malformed_file_loads_nothing_even_after_full_chunks(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    good = "".join(f"+44{i}\n" for i in range(50))
    # An unbalanced quote swallows the rest of the file into one huge field.
    path = write(tmp_path, "destination\n" + good + '"' + "x" * 200_000 + "\n")

    with pytest.raises(LoadError, match=r"line 52: malformed CSV .*nothing loaded"):
        await load_csv(db_pool, "spring", path, chunk_rows=10)

    assert await contacts(db_pool, cid) == []


async def test_a_campaign_cancelled_during_the_load_takes_none_of_it(
    db_pool: Pool, db_dsn: str, tmp_path: Path
) -> None:
    cid = await new_campaign(db_pool)
    path = write(tmp_path, "destination\n" + "".join(f"+44{i}\n" for i in range(100)))
    canceller = await asyncpg.connect(db_dsn)
    try:
        # The cancel is in progress (row locked, not committed) when the load starts.
        tx = canceller.transaction()
        await tx.start()
        await canceller.execute("UPDATE campaigns SET state = 'cancelled' WHERE id = $1", cid)
        load = asyncio.create_task(load_csv(db_pool, "spring", path, chunk_rows=10))
        # The load copies everything, then waits on the campaign row before committing.
        while not await _waiting_on_a_lock(canceller):
            assert not load.done(), load
            await asyncio.sleep(0.01)
        await tx.commit()
        with pytest.raises(LoadError, match="was cancelled during the load"):
            await load
    finally:
        await canceller.close()
    assert await contacts(db_pool, cid) == []


async def _waiting_on_a_lock(conn: asyncpg.Connection[asyncpg.Record]) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def test_progress_is_reported_as_records_are_read(db_pool: Pool, tmp_path: Path) -> None:
    await new_campaign(db_pool)
    path = write(tmp_path, "destination\n" + "".join(f"+44{i}\n" for i in range(95)))
    seen: list[tuple[int, int]] = []

    result = await load_csv(
        db_pool,
        "spring",
        path,
        chunk_rows=10,
        progress_every=30,
        on_progress=lambda read, refused: seen.append((read, refused)),
    )

    assert result.loaded == 95
    assert seen == [(30, 0), (60, 0), (90, 0)]


async def test_progress_counts_the_refused_rows_read_so_far(db_pool: Pool, tmp_path: Path) -> None:
    await new_campaign(db_pool)
    # Every tenth record refused (an empty destination).
    rows = "".join('""\n' if i % 10 == 9 else f"+44{i}\n" for i in range(40))
    seen: list[tuple[int, int]] = []

    await load_csv(
        db_pool,
        "spring",
        write(tmp_path, "destination\n" + rows),
        chunk_rows=10,
        progress_every=1,
        on_progress=lambda read, refused: seen.append((read, refused)),
    )

    assert seen == [(10, 1), (20, 2), (30, 3), (40, 4)]


async def test_refusals_beyond_the_report_cap_are_counted(db_pool: Pool, tmp_path: Path) -> None:
    await new_campaign(db_pool)
    path = write(tmp_path, "destination\n" + "\n".join(['""'] * 10) + "\n+441\n")

    result = await load_csv(db_pool, "spring", path, max_reported=3)

    assert (result.loaded, result.refused) == (1, 10)
    assert [r.line for r in result.refusals] == [2, 3, 4]


async def test_values_needing_copy_escapes_load_verbatim_beside_values_needing_none(
    db_pool: Pool, tmp_path: Path
) -> None:
    # A column is escaped only when a scan finds a character COPY must escape: the rows
    # around such a value, in the same batch, load unchanged too.
    cid = await new_campaign(db_pool)
    buffer = io.StringIO()
    out = csv.writer(buffer)
    out.writerow(["destination", "caller_id", "token", "outbound_parameters"])
    out.writerow(["+441", "441908273801", "plain", "plain"])
    out.writerow(["sip:a\\b@example.com", "44\t1", "tok\\en\n2", "\\N"])
    out.writerow(["+443", " 441908273803 ", "\r\n", "x\ty"])
    out.writerow(["+444", "", "", ""])
    path = write(tmp_path, buffer.getvalue())

    result = await load_csv(db_pool, "spring", path)

    assert (result.loaded, result.refused) == (4, 0)
    rows = [
        (r["destination"], r["caller_id"], r["token"], r["outbound_parameters"])
        for r in await contacts(db_pool, cid)
    ]
    assert rows == [
        ("+441", "441908273801", "plain", "plain"),
        ("sip:a\\b@example.com", "44\t1", "tok\\en\n2", "\\N"),
        ("+443", "441908273803", "\r\n", "x\ty"),
        ("+444", None, None, None),
    ]


async def test_a_repeated_value_is_judged_once_and_the_same_way_on_every_row(
    db_pool: Pool, tmp_path: Path
) -> None:
    # Zones, priorities, timestamps and headers are converted once per distinct value
    # and remembered across batches and chunks: a bad one is refused wherever it recurs.
    cid = await new_campaign(db_pool)
    headers = json.dumps([{"name": "X-Account", "value": "42"}]).replace('"', '""')
    lines = ["destination,timezone,priority,not_before,extra_sip_headers"]
    for i in range(30):
        if i % 7 == 3:
            lines.append(f"+44{i},Mars/Olympus,1,2030-05-01T09:30:00,")
        elif i % 7 == 5:
            lines.append(f'+44{i},UTC,1,2030-05-01T09:30:00,"[{{""name"": """"}}]"')
        else:
            lines.append(f'+44{i},Europe/London,2,2030-05-01T09:30:00,"{headers}"')
    path = write(tmp_path, "\n".join(lines) + "\n")

    result = await load_csv(db_pool, "spring", path, chunk_rows=4)

    refused = refused_lines(result)
    zone_lines = {i + 2 for i in range(30) if i % 7 == 3}
    header_lines = {i + 2 for i in range(30) if i % 7 == 5}
    assert set(refused) == zone_lines | header_lines
    assert all("unknown IANA zone 'Mars/Olympus'" in refused[line] for line in zone_lines)
    assert all("name and value" in refused[line] for line in header_lines)
    rows = await contacts(db_pool, cid)
    assert len(rows) == result.loaded == 30 - len(refused)
    assert {(r["timezone"], r["priority"]) for r in rows} == {("Europe/London", 2)}
    assert all(r["extra_sip_headers"] == [{"name": "X-Account", "value": "42"}] for r in rows)
    assert all(r["not_before"] == datetime(2030, 5, 1, 9, 30, tzinfo=UTC) for r in rows)


def test_distinct_value_memory_starts_afresh_past_its_limit_and_still_refuses() -> None:
    seen: list[str] = []

    def convert(raw: str) -> str:
        seen.append(raw)
        if raw == "bad":
            raise _RowError("bad value")
        return raw.upper()

    column = _ByDistinctValue(convert, limit=3)
    refused: dict[int, str] = {}
    assert column(["a", "bad", "a"], refused) == ["A", "", "A"]
    assert refused == {1: "bad value"}
    refused = {}
    assert column(["bad", "a"], refused) == ["", "A"]  # remembered: not converted again
    assert refused == {0: "bad value"}
    assert sorted(seen) == ["a", "bad"]
    refused = {}
    assert column(["b", "c", "bad"], refused) == ["B", "C", ""]  # over the limit: afresh
    assert refused == {2: "bad value"}
    assert sorted(seen[2:]) == ["b", "bad", "c"]


async def test_line_numbers_stay_exact_across_batches_chunks_and_multiline_records(
    db_pool: Pool, tmp_path: Path
) -> None:
    # Rows are read in batches and gathered into chunks: a refused record is reported at
    # its own lines whichever batch it starts, ends or falls next to.
    batch = _BATCH_ROWS
    bad = {batch - 2, batch - 1, batch, 2 * batch - 1, 5 * batch - 1}
    lines = ["destination,outbound_parameters,priority"]  # line 1
    expected: dict[int, tuple[int, int]] = {}
    line = 1
    for i in range(5 * batch):
        if i in bad:
            lines.append(f'+44{i},"two\nlines",bad')
            expected[line + 1] = (line + 1, line + 2)
            line += 2
        elif i == 3 * batch:
            lines.append("")  # a blank line: no record, but a line
            lines.append(f"+44{i},,")
            line += 2
        else:
            lines.append(f"+44{i},,{i % 5}")
            line += 1
    await new_campaign(db_pool)
    path = write(tmp_path, "\n".join(lines) + "\n")

    result = await load_csv(db_pool, "spring", path, chunk_rows=batch * 5 // 2)

    assert {r.line: (r.line, r.end_line) for r in result.refusals} == expected
    assert all(r.reason == "priority: not an integer: 'bad'" for r in result.refusals)
    assert (result.loaded, result.refused) == (5 * batch - len(bad), len(bad))


async def test_extra_sip_headers_starting_with_a_byte_order_mark_are_refused_as_not_json(
    db_pool: Pool, tmp_path: Path
) -> None:
    await new_campaign(db_pool)
    path = write(tmp_path, 'destination,extra_sip_headers\n+441,"\ufeff[]"\n+442,[]\n')

    result = await load_csv(db_pool, "spring", path)

    assert refused_lines(result) == {2: "extra_sip_headers: not valid JSON (Unexpected UTF-8 BOM)"}
    assert result.loaded == 1


async def test_empty_priority_gets_the_schema_default(db_pool: Pool) -> None:
    # The loader writes "0" for an empty priority cell (COPY cannot ask for the default).
    default = await db_pool.fetchval(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = 'contacts' AND column_name = 'priority'"
    )
    assert default == "0"


# --- property: arbitrary rows never crash the loader, and good rows always land -------------

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from('",\n\r\t\\\x00'),
    max_size=20,
)
_junk_row = st.lists(_text, min_size=0, max_size=5)
_good_row = st.fixed_dictionaries(
    {
        "token": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
        "priority": st.integers(-(2**31), 2**31 - 1).map(str) | st.just(""),
        "timezone": st.sampled_from(["", "UTC", "Europe/London", "America/New_York"]),
        "not_before": st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat())
        | st.just(""),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.one_of(_junk_row.map(lambda r: ("junk", r)), _good_row.map(lambda r: ("good", r))),
        max_size=25,
    )
)
async def test_arbitrary_rows_never_crash_the_loader_and_good_rows_always_land(
    db_pool: Pool, tmp_path: Path, rows: list[tuple[str, object]]
) -> None:
    name = f"prop-{uuid.uuid4().hex[:8]}"
    cid = await new_campaign(db_pool, name)
    columns = ["destination", "token", "priority", "timezone", "not_before"]
    buffer = io.StringIO()
    # The default "\r\n" terminator makes the writer quote fields holding either character.
    out = csv.writer(buffer)
    out.writerow(columns)
    expected_good = []
    data_records = 0
    for i, (kind, row) in enumerate(rows):
        if kind == "good":
            assert isinstance(row, dict)
            destination = f"good-{i}"
            out.writerow([destination, *(row[c] for c in columns[1:])])
            expected_good.append(destination)
            data_records += 1
        else:
            assert isinstance(row, list)
            out.writerow(row)
            # csv writes [] as a blank line and [""] as a quoted empty field.
            data_records += 1 if row else 0
    path = write(tmp_path, buffer.getvalue(), name=f"{name}.csv")

    result = await load_csv(db_pool, name, path)

    in_db = await contacts(db_pool, cid)
    assert set(expected_good) <= {r["destination"] for r in in_db}
    assert result.loaded == len(in_db)
    assert result.loaded + result.refused == data_records
    # None of these is a telephone number or an address the claim would dial.
    assert result.never["invalid"] <= result.never_dialed <= result.loaded


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=st.binary(max_size=300))
async def test_arbitrary_bytes_after_the_header_load_or_fail_with_one_clear_error(
    db_pool: Pool, tmp_path: Path, body: bytes
) -> None:
    name = f"bytes-{uuid.uuid4().hex[:8]}"
    cid = await new_campaign(db_pool, name)
    path = write(tmp_path, b"destination,priority,extra_sip_headers\n" + body, name=f"{name}.csv")

    error: LoadError | None = None
    loaded = 0
    try:
        loaded = (await load_csv(db_pool, name, path)).loaded
    except LoadError as exc:
        error = exc

    assert loaded == len(await contacts(db_pool, cid))
    assert error is None or "\n" not in str(error)


# --- rows the claim will never dial -------------------------------------------------------------


async def campaign_with_history(pool: Pool) -> int:
    """A campaign that dials any time, with a contact already dialed (its number is
    claimed) and one waiting, and a do-not-call list."""
    cid = await create_campaign(pool, "spring")
    dialed, waiting = [
        r["id"]
        for r in await pool.fetch(
            "INSERT INTO contacts (campaign_id, destination, state) VALUES "
            "($1, '+44 1908 273810', 'completed'), ($1, '01908 273811', 'pending') "
            "RETURNING id",
            cid,
        )
    ]
    # A national-format number is the same contact once the campaign has a country.
    await pool.execute("UPDATE campaigns SET default_country = 'GB' WHERE id = $1", cid)
    await pool.execute(
        "INSERT INTO contact_keys (campaign_id, key, contact_id) VALUES ($1, '441908273810', $2)",
        cid,
        dialed,
    )
    await pool.execute("INSERT INTO suppressions (destination) VALUES ('441908273812')")
    assert waiting
    return cid


NEVER_DIALED_FILE = (
    "destination,priority\n"  # 1
    "+44 1908 273800,\n"  # 2 good
    "+44 909 8790000,\n"  # 3 premium rate
    "12345,\n"  # 4 too short
    "+44 1908 273812,\n"  # 5 on the do-not-call list
    "441908273800,\n"  # 6 line 2 again
    "tel:+441908273810,\n"  # 7 the number already dialed
    "+44 1908 273811,\n"  # 8 the contact waiting in the campaign
    "+44 1908 273813,\n"  # 9 good
    "+44 1908 273814,\n"  # 10 dialed after line 11, whose priority is higher
    "+44-1908-273814,5\n"  # 11
)


async def test_rows_the_claim_would_never_dial_load_and_are_reported_by_line_and_kind(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await campaign_with_history(db_pool)

    result = await load_csv(db_pool, "spring", write(tmp_path, NEVER_DIALED_FILE))

    assert (result.loaded, result.refused, result.committed) == (10, 0, True)
    assert result.never == {"invalid": 2, "suppressed": 1, "duplicate": 4}
    first = await db_pool.fetchval("SELECT min(id) FROM contacts WHERE campaign_id = $1", cid)
    assert [str(w) for w in result.warnings] == [
        "line 3: will be invalid: premium-rate numbers cannot be called: +4490******00",
        "line 4: will be invalid: not a possible telephone number (too short): +*****",
        "line 5: will be suppressed: on the do-not-call list",
        "line 6: will be duplicate: same destination as line 2",
        f"line 7: will be duplicate: same destination as contact {first}, already in the campaign",
        f"line 8: will be duplicate: same destination as contact {first + 1}, "
        "already in the campaign",
        "line 10: will be duplicate: same destination as line 11",
    ]


async def test_the_claim_then_does_what_the_load_foretold(
    db_pool: Pool, tmp_path: Path, simulator: Simulator
) -> None:
    cid = await campaign_with_history(db_pool)
    result = await load_csv(db_pool, "spring", write(tmp_path, NEVER_DIALED_FILE))

    await run_until_idle(db_pool, engine_settings(simulator))

    rows = await db_pool.fetch(
        "SELECT state, count(*) AS n FROM contacts WHERE campaign_id = $1 "
        "AND id > (SELECT min(id) + 1 FROM contacts WHERE campaign_id = $1) GROUP BY state",
        cid,
    )
    after = {r["state"]: r["n"] for r in rows}
    assert after == {"dialing": result.loaded - result.never_dialed, **result.never}
    # The contact that was waiting was dialed: the file's copy of it was the duplicate.
    assert (await states(db_pool, cid))["dialing"] == 4


async def test_strict_refuses_the_whole_file_when_a_row_would_never_be_dialed(
    db_pool: Pool, tmp_path: Path
) -> None:
    cid = await create_campaign(db_pool, "spring")
    bad = write(tmp_path, "destination\n+44 1908 273800\n01908 273801\n", name="bad.csv")
    good = write(tmp_path, "destination\n+44 1908 273800\n+44 1908 273801\n", name="good.csv")

    refused = await load_csv(db_pool, "spring", bad, strict=True)

    assert (refused.committed, refused.loaded, refused.never) == (
        False,
        0,
        {"invalid": 1, "suppressed": 0, "duplicate": 0},
    )
    assert [str(w) for w in refused.warnings] == [
        "line 3: will be invalid: national format (leading 0) needs the campaign's default "
        "country: 0190*****01"
    ]
    assert await contacts(db_pool, cid) == []
    assert (await load_csv(db_pool, "spring", good, strict=True)).loaded == 2
    assert len(await contacts(db_pool, cid)) == 2


async def test_a_campaign_without_a_caller_id_or_a_zone_warns_of_the_rows_it_cannot_dial(
    db_pool: Pool, tmp_path: Path
) -> None:
    await new_campaign(db_pool)
    path = write(
        tmp_path,
        "destination,caller_id\n+44 1908 273800,\nsip:a@example.com,\n"
        f"+44 1908 273801,{CALLER_ID}\n",
    )

    result = await load_csv(db_pool, "spring", path)

    assert result.loaded == 3
    assert [str(w) for w in result.warnings] == [
        "line 2: will be invalid: no caller ID: set campaigns.caller_id or contacts.caller_id",
        # The schema's window (09:00-20:00) needs a zone, and an address has none of its own.
        "line 3: will be invalid: no time zone: set contacts.timezone or "
        "campaigns.default_timezone",
    ]


async def test_warnings_keep_their_line_numbers_across_batches_and_chunks(
    db_pool: Pool, tmp_path: Path
) -> None:
    await create_campaign(db_pool, "spring")
    rows = ["destination,outbound_parameters"]
    for i in range(3 * _BATCH_ROWS):
        # A record over two lines now and then, so that records and lines part ways.
        rows.append(f'+44 1908 {200000 + i},"a\nb"' if i % 7 == 0 else f"+44 1908 {200000 + i},")
    rows.append("01908 200000,")  # a national spelling, refused
    rows.append("+44 1908 200001,")  # the second row's number again
    path = write(tmp_path, "\n".join(rows) + "\n")

    result = await load_csv(db_pool, "spring", path, chunk_rows=_BATCH_ROWS)

    records = 3 * _BATCH_ROWS
    last_line = 1 + records + len(range(0, records, 7))
    assert [str(w) for w in result.warnings] == [
        f"line {last_line + 1}: will be invalid: national format (leading 0) needs the "
        "campaign's default country: 0190*****00",
        f"line {last_line + 2}: will be duplicate: same destination as line 4",
    ]


async def test_rows_judged_in_worker_processes_are_judged_and_reported_alike(
    db_pool: Pool, tmp_path: Path
) -> None:
    # A large file is judged in worker processes, batches coming back in any order.
    rows = ["destination,priority"]
    for i in range(4 * _BATCH_ROWS):
        rows.append(f"+44 1908 {200000 + i % (3 * _BATCH_ROWS)},")  # the last quarter repeats
        if i % 97 == 0:
            rows.append(f"01908 {200000 + i},")  # national format: invalid
    path = write(tmp_path, "\n".join(rows) + "\n")
    await create_campaign(db_pool, "inline")
    await create_campaign(db_pool, "parallel")

    inline = await load_csv(db_pool, "inline", path, workers=1, chunk_rows=_BATCH_ROWS)
    parallel = await load_csv(db_pool, "parallel", path, workers=2, chunk_rows=_BATCH_ROWS)

    assert (
        parallel.never
        == inline.never
        == {
            "invalid": len(range(0, 4 * _BATCH_ROWS, 97)),
            "suppressed": 0,
            "duplicate": _BATCH_ROWS,
        }
    )
    assert [str(w) for w in parallel.warnings] == [str(w) for w in inline.warnings]
    assert parallel.warnings[0].line == 3
