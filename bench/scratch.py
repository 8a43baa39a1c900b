"""Throw-away databases for the benchmarks, on the server behind `admin_dsn`."""

from __future__ import annotations

from campaign.db.demo_queries import drop_database, recreate_database
from campaign.db.pool import connect, dsn_with_database


async def create_scratch(admin_dsn: str, name: str) -> str:
    """A fresh, empty database `name` (dropped first if it exists); returns its DSN."""
    conn = await connect(admin_dsn)
    try:
        await recreate_database(conn, name)
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def drop_scratch(admin_dsn: str, name: str) -> None:
    conn = await connect(admin_dsn)
    try:
        await drop_database(conn, name)
    finally:
        await conn.close()
