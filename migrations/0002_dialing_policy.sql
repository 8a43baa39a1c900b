-- Dialing policy: local calling windows, a sliding-window pacing log shared by
-- every daemon, and what the concurrency cap needs.

-- Calling window in the contact's local time. window_days are ISO weekdays
-- (1 = Monday ... 7 = Sunday) on which a window *opens*; a window whose end is
-- earlier than its start runs past midnight. '00:00'-'24:00' on all seven days
-- means "any time" (then no time zone is needed).
ALTER TABLE campaigns
    ADD COLUMN window_start time NOT NULL DEFAULT '09:00',
    ADD COLUMN window_end   time NOT NULL DEFAULT '20:00',
    ADD COLUMN window_days  smallint[] NOT NULL DEFAULT '{1,2,3,4,5,6,7}',
    ADD CONSTRAINT campaigns_window_not_empty CHECK (window_start <> window_end),
    ADD CONSTRAINT campaigns_window_days_valid CHECK (
        cardinality(window_days) BETWEEN 1 AND 7
        AND window_days <@ '{1,2,3,4,5,6,7}'::smallint[]
        AND array_position(window_days, NULL) IS NULL);

-- Contacts deferred to their next window carry last_result 'outside_window'.
-- When an operator changes a campaign's window, they are looked at again at once.
CREATE FUNCTION campaign_window_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts
    SET next_attempt_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND last_result = 'outside_window';
    RETURN NULL;
END;
$$;

CREATE TRIGGER campaigns_window_changed
    AFTER UPDATE OF window_start, window_end, window_days, default_timezone ON campaigns
    FOR EACH ROW
    WHEN (OLD.window_start IS DISTINCT FROM NEW.window_start
          OR OLD.window_end IS DISTINCT FROM NEW.window_end
          OR OLD.window_days IS DISTINCT FROM NEW.window_days
          OR OLD.default_timezone IS DISTINCT FROM NEW.default_timezone)
    EXECUTE FUNCTION campaign_window_changed();

CREATE TRIGGER campaigns_window_wake AFTER UPDATE OF window_start, window_end, window_days,
    default_timezone, calls_per_second, max_concurrent_calls, priority ON campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_notify_wake();

-- Pacing: every grant of calls, per budget ('account', 'campaign:<id>'). A claim
-- sums the grants of the last second under the budget row's lock, so no
-- one-second window ever holds more than the budget, whatever the number of
-- daemons. Rows older than a few seconds are deleted as the engine goes.
CREATE TABLE rate_budgets (
    key text PRIMARY KEY          -- the row whose lock serialises the budget's claims
);
CREATE TABLE rate_grants (
    key        text NOT NULL,
    granted_at timestamptz NOT NULL,
    calls      integer NOT NULL CHECK (calls > 0)
);
CREATE INDEX rate_grants_key_time_idx ON rate_grants (key, granted_at);

-- The concurrency cap counts calls started and not yet finished per campaign.
CREATE INDEX calls_open_campaign_idx ON calls (campaign_id) WHERE finished_at IS NULL;
