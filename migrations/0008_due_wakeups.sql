-- Cost that stays flat with many campaigns (issue 11).
--
-- 1. Which active campaigns have a contact due, and when the next one is due, is a
--    lookup per campaign: the first entry of that campaign in this index. A contact
--    is due when both next_attempt_at and not_before (if any) have passed;
--    greatest() ignores a NULL not_before.
CREATE INDEX contacts_due_idx ON contacts (campaign_id, greatest(next_attempt_at, not_before))
    WHERE state = 'pending';

-- The claim's order, priority first, as one ascending key (-priority, id): a claim
-- can then resume after the last contact it took with one row comparison, which the
-- index bounds (an index in (priority DESC, id) order cannot bound a comparison
-- mixing both directions), instead of walking from the campaign's first entry over
-- every contact that left `pending` since the last VACUUM.
DROP INDEX contacts_claim_idx;
-- (As bigint: -priority overflows for the smallest integer, which a contact may have.)
CREATE INDEX contacts_claim_idx ON contacts (campaign_id, (-(priority::bigint)), id)
    WHERE state = 'pending';

-- 2. Wake-ups say which campaign changed ('<table>:<campaign id>') and fire only when
--    a row really changed: an UPDATE that matches no row, or changes nothing a daemon
--    acts on, sends nothing. A payload without an id ('batches', from `campaign
--    resolve`) still means "look at everything".
DROP TRIGGER contacts_wake ON contacts;
DROP TRIGGER campaigns_wake ON campaigns;
DROP TRIGGER campaigns_window_wake ON campaigns;
DROP TRIGGER suppressions_wake ON suppressions;

-- New contacts: one notification per campaign per statement, however many rows (a
-- load of millions is a handful of statements), and none for an INSERT of no row.
CREATE FUNCTION campaign_contacts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('campaign_wake', 'contacts:' || t.campaign_id)
    FROM (SELECT DISTINCT campaign_id FROM inserted_contacts) AS t;
    RETURN NULL;
END;
$$;
CREATE TRIGGER contacts_wake AFTER INSERT ON contacts
    REFERENCING NEW TABLE AS inserted_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_contacts_inserted();

-- A contact back in `pending` (a retry decided by an outcome, a batch released or
-- refused, an operator's resolution): its campaign may have work again. The WHEN is
-- checked without calling any function, so the engine's other updates (pending ->
-- dispatching -> dialing -> completed) cost nothing here. PostgreSQL folds the same
-- payload sent twice in one transaction into one notification.
CREATE FUNCTION campaign_contact_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('campaign_wake', 'contacts:' || NEW.campaign_id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER contacts_pending_wake AFTER UPDATE OF state ON contacts
    FOR EACH ROW
    WHEN (NEW.state = 'pending' AND OLD.state IS DISTINCT FROM 'pending')
    EXECUTE FUNCTION campaign_contact_wake();

-- A campaign created, or changed in what the dispatcher acts on: its state, its
-- window, its pacing, its priority or its service.
CREATE FUNCTION campaign_row_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('campaign_wake', 'campaigns:' || NEW.id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER campaigns_wake AFTER INSERT ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaign_row_wake();
CREATE TRIGGER campaigns_changed_wake AFTER UPDATE ON campaigns
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.window_start IS DISTINCT FROM NEW.window_start
          OR OLD.window_end IS DISTINCT FROM NEW.window_end
          OR OLD.window_days IS DISTINCT FROM NEW.window_days
          OR OLD.default_timezone IS DISTINCT FROM NEW.default_timezone
          OR OLD.calls_per_second IS DISTINCT FROM NEW.calls_per_second
          OR OLD.max_concurrent_calls IS DISTINCT FROM NEW.max_concurrent_calls
          OR OLD.batch_size IS DISTINCT FROM NEW.batch_size
          OR OLD.priority IS DISTINCT FROM NEW.priority
          OR OLD.service_name IS DISTINCT FROM NEW.service_name)
    EXECUTE FUNCTION campaign_row_wake();

-- A number added to the do-not-call list changes no work to do; the wake-up lets a
-- daemon look again at once all the same (as before), only when a row was added.
CREATE FUNCTION campaign_suppressions_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_suppressions) THEN
        PERFORM pg_notify('campaign_wake', 'suppressions');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER suppressions_wake AFTER INSERT ON suppressions
    REFERENCING NEW TABLE AS inserted_suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_suppressions_inserted();

-- 3. The hot tables churn: every contact leaves `pending` by an UPDATE, and until a
--    VACUUM its old entry stays in the claim's partial index, where every claim walks
--    over it. Vacuum them after 1-2 % of their rows changed rather than 20 %, and
--    without the cost-based pauses that make a vacuum of millions of rows take minutes.
ALTER TABLE contacts SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE batches SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE calls SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
-- Grants are inserted per claim and deleted a little later: a small, hot table.
ALTER TABLE rate_grants SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
