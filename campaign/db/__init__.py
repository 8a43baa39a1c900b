"""Everything that talks to PostgreSQL: the pool, migrations and all SQL."""
