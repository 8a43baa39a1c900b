-- contact_results: one row per contact saying what became of it, for a CRM (or
-- anyone with SQL) to read; `campaign export` streams it. It is the documented,
-- stable read interface: a column is never renamed, retyped or moved, and new
-- ones are added at the end (tests/test_export.py pins names, order and types).
-- The tables beneath it may change; the view keeps its shape.
--
-- destination is the number as loaded, unmasked: the results are the operator's
-- own data, going back to their own CRM (logs mask numbers; this does not).
--
-- first_call_at / last_call_at: when the first and the last call started;
-- last_cause and last_call_duration come from the last call (null while its
-- outcome is awaited); references: Aculab's references of every call, in
-- attempt order ('{}' when none was started); next_attempt_at only while the
-- contact is pending (otherwise the value the table keeps means nothing).
-- updated_at moves whenever the engine changes the contact, an outcome included:
-- it is what `campaign export --since` filters on.

-- One campaign's contacts in the order they changed: a whole-campaign export and
-- an incremental one (updated_at >= T) are both one range of this index, read in
-- the export's order (no sort, first rows at once), whatever other campaigns hold.
-- The contact's other indexes already change with nearly every update (state,
-- batch_id), so this adds one index entry per update, not the loss of HOT updates.
CREATE INDEX contacts_campaign_updated_idx ON contacts (campaign_id, updated_at, id);

-- The calls of each contact are one range of the unique (contact_id, attempt)
-- index: one probe per contact exported, so the cost follows the rows returned
-- (a join with every call of the campaign, grouped, would make a --since of ten
-- rows cost as much as the whole campaign). The three arrays share one order,
-- the index's, so PostgreSQL sorts nothing.
CREATE VIEW contact_results AS
SELECT
    k.name                  AS campaign,
    c.campaign_id,
    c.id                    AS contact_id,
    c.token,
    c.destination,
    c.state,
    c.attempts,
    c.last_result,
    c.last_error,
    a.causes[cardinality(a.causes)]         AS last_cause,
    a.first_call_at,
    a.last_call_at,
    a.durations[cardinality(a.durations)]   AS last_call_duration,
    coalesce(a.refs, '{}')  AS "references",
    CASE WHEN c.state = 'pending' THEN c.next_attempt_at END AS next_attempt_at,
    c.created_at,
    c.updated_at
FROM contacts c
JOIN campaigns k ON k.id = c.campaign_id
LEFT JOIN LATERAL (
    SELECT min(l.started_at) AS first_call_at,
           max(l.started_at) AS last_call_at,
           array_agg(l.call_cause ORDER BY l.attempt) AS causes,
           array_agg(l.duration ORDER BY l.attempt) AS durations,
           array_agg(l.reference ORDER BY l.attempt) AS refs
    FROM calls l
    WHERE l.contact_id = c.id
) a ON true;
