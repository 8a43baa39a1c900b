-- Contacts per campaign and state, kept as contacts change, so that progress
-- (and whoever else needs the figures) reads a few rows instead of counting
-- every contact of every campaign.
--
-- Writers never update a shared row: statement-level triggers append one row
-- per (campaign, state) a statement changed to contact_count_deltas, with the
-- signed number of contacts. Claims, acknowledgements and outcomes of the same
-- campaign therefore never wait for one another here, and no lock order can
-- deadlock. The daemons' progress reporter folds the deltas into contact_counts
-- now and then (DELETE ... RETURNING and an upsert in one statement).
--
-- Exact at any snapshot: contact_counts plus the deltas it can see equal
-- SELECT campaign_id, state, count(*) FROM contacts GROUP BY 1, 2, since each
-- delta commits with the change it describes and a fold moves deltas atomically.
-- (Groups that net to 0 are left out when reading.)

CREATE TABLE contact_counts (
    campaign_id bigint NOT NULL,
    state       text NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (campaign_id, state)
);

-- Rows come and go every few seconds: vacuumed after a thousand changes whatever
-- its size, so that reading it stays a look at a few pages.
CREATE TABLE contact_count_deltas (
    campaign_id bigint NOT NULL,
    state       text NOT NULL,
    n           bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);

CREATE FUNCTION contact_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_count_deltas (campaign_id, state, n)
    SELECT campaign_id, state, count(*) FROM new_rows GROUP BY campaign_id, state;
    RETURN NULL;
END;
$$;

CREATE FUNCTION contact_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_count_deltas (campaign_id, state, n)
    SELECT campaign_id, state, -count(*) FROM old_rows GROUP BY campaign_id, state;
    RETURN NULL;
END;
$$;

-- Every UPDATE of contacts comes here (a trigger with transition tables cannot
-- name columns); one that changes no state or campaign nets to nothing and
-- writes nothing.
CREATE FUNCTION contact_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_count_deltas (campaign_id, state, n)
    SELECT campaign_id, state, sum(n)
    FROM (
        SELECT campaign_id, state, -count(*) AS n FROM old_rows GROUP BY campaign_id, state
        UNION ALL
        SELECT campaign_id, state, count(*) AS n FROM new_rows GROUP BY campaign_id, state
    ) AS changes
    GROUP BY campaign_id, state
    HAVING sum(n) <> 0;
    RETURN NULL;
END;
$$;

CREATE FUNCTION contact_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contact_count_deltas;
    DELETE FROM contact_counts;
    RETURN NULL;
END;
$$;

-- Creating the first trigger locks contacts against writes until this
-- migration commits, so the backfill below misses nothing and counts nothing twice.
CREATE TRIGGER contacts_count_inserted AFTER INSERT ON contacts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contact_counts_inserted();
CREATE TRIGGER contacts_count_deleted AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contact_counts_deleted();
CREATE TRIGGER contacts_count_updated AFTER UPDATE ON contacts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION contact_counts_updated();
CREATE TRIGGER contacts_count_truncated AFTER TRUNCATE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION contact_counts_truncated();

INSERT INTO contact_counts (campaign_id, state, n)
SELECT campaign_id, state, count(*) FROM contacts GROUP BY campaign_id, state;
