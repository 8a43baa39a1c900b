-- A re-send whose calling window had closed is held, unowned, until the next
-- opening (campaign/dispatch.py, HOLD_BATCH). When an operator changes the
-- window, those batches are looked at again at once, like deferred contacts.
-- A batch released at shutdown (also unowned) may be looked at a little early
-- as well: harmless, it is re-sent with its own unique_id.
CREATE OR REPLACE FUNCTION campaign_window_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts
    SET next_attempt_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND last_result = 'outside_window';
    UPDATE batches
    SET next_send_at = now()
    WHERE campaign_id = NEW.id AND state = 'pending' AND owner IS NULL AND next_send_at > now();
    RETURN NULL;
END;
$$;
