-- What a contact or a batch waits for, in a column of its own instead of in text.
--
-- Until now a contact deferred to its calling window was known by its last_result
-- 'outside_window', and a re-send held until its window opened by a last_error
-- starting 're-send held outside the calling window:' (migration 0004): a change to
-- either message would have silently stopped a window change from waking them.
-- last_result and last_error remain what they were, for people to read; nothing
-- decides by them any more.

-- A pending contact the dispatcher deferred to the next opening of its calling
-- window (campaign/db/queries.py, DEFER_CONTACTS). Cleared when a claim takes it
-- or skips it, or its campaign is cancelled: true only of a contact still waiting.
ALTER TABLE contacts ADD COLUMN waiting_for_window boolean NOT NULL DEFAULT false;

-- A re-send held, unowned, until every one of its contacts' calling windows is open
-- (queries.HOLD_BATCH); false for a batch held while its campaign is paused.
ALTER TABLE batches ADD COLUMN held_for_window boolean NOT NULL DEFAULT false;

UPDATE contacts SET waiting_for_window = true
WHERE state = 'pending' AND last_result = 'outside_window';

UPDATE batches SET held_for_window = true
WHERE state = 'pending' AND starts_with(last_error, 're-send held outside the calling window:');

-- When an operator changes a campaign's window, the contacts and the held re-sends
-- waiting for it are looked at again at once. Batches waiting out a backoff are left
-- alone: waking them would ignore Retry-After.
CREATE OR REPLACE FUNCTION campaign_window_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts
    SET next_attempt_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND waiting_for_window;
    UPDATE batches
    SET next_send_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND owner IS NULL AND next_send_at > now()
      AND held_for_window;
    RETURN NULL;
END;
$$;

-- A correction to migration 0002, whose comment says rate_grants rows "older than a
-- few seconds are deleted": they are kept 1,060 s (campaign/daemon.py,
-- GRANT_HISTORY_SECONDS, passed to FORGET_OLD_GRANTS in campaign/db/queries.py),
-- because a campaign's pacing window is 1/cps seconds, up to 1,000 s at the slowest
-- rate allowed (0.001 calls/s), plus a margin. Only the comment was wrong.
