-- A re-send whose calling window had closed is held, unowned, until the next
-- opening, with last_error starting 're-send held outside the calling window:'
-- (campaign/dispatch.py, HELD_FOR_WINDOW). When an operator changes the window,
-- those batches are looked at again at once, like deferred contacts. Batches
-- waiting out a backoff are left alone: waking them would ignore Retry-After.
CREATE OR REPLACE FUNCTION campaign_window_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts
    SET next_attempt_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND last_result = 'outside_window';
    UPDATE batches
    SET next_send_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND owner IS NULL AND next_send_at > now()
      AND starts_with(last_error, 're-send held outside the calling window:');
    RETURN NULL;
END;
$$;
