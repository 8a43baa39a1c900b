-- A daemon reads every campaign's next due time only now and then (every
-- dispatcher.recheck_all_seconds while it hears notifications) and keeps the
-- times it read in between, so every change that makes a contact due sooner than
-- the daemon believes must notify: a contact back in `pending` (migration 0008),
-- and now also a pending contact whose next_attempt_at or not_before moves earlier
-- (an operator's "call these now"), or that moves to another campaign. A deferral
-- (the time moves later) and the engine's own progress (pending -> dispatching ...)
-- send nothing: a later time only makes a claim find less, which it notices itself.
DROP TRIGGER contacts_pending_wake ON contacts;
CREATE TRIGGER contacts_pending_wake
    AFTER UPDATE OF state, next_attempt_at, not_before, campaign_id ON contacts
    FOR EACH ROW
    WHEN (NEW.state = 'pending'
          AND (OLD.state IS DISTINCT FROM 'pending'
               OR OLD.campaign_id IS DISTINCT FROM NEW.campaign_id
               OR greatest(NEW.next_attempt_at, NEW.not_before)
                  < greatest(OLD.next_attempt_at, OLD.not_before)))
    EXECUTE FUNCTION campaign_contact_wake();
