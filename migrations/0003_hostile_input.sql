-- Values the engine cannot act on are refused when they are written, by a
-- constraint whose name says what is wrong.
--
-- The line drawn: a campaign's policy is a handful of values typed by an
-- operator, so a policy the engine cannot follow (a retry delay of "60" or -5,
-- a weekday listed twice, a blank name) is refused at once. A contact's content
-- (destination, caller ID, token, extra_sip_headers, time zone) is judged by the
-- dispatcher at claim time, which marks a bad contact `invalid` with the reason:
-- one bad row must not refuse a whole `INSERT ... SELECT` of a contact list.
-- The one contact CHECK below refuses a timestamp the engine cannot represent,
-- which `campaign load` already refuses row by row.
--
-- A database holding rows that break one of these makes this migration fail,
-- naming the constraint; correct the rows and run `campaign migrate` again.

-- True when no weekday appears twice (NULLs are left to campaigns_window_days_valid).
-- Immutable, so that a CHECK may call it.
CREATE FUNCTION campaign_days_distinct(days smallint[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN cardinality(days) = (SELECT count(DISTINCT d) FROM unnest(days) AS d)
                               + (SELECT count(*) FROM unnest(days) AS d WHERE d IS NULL);

ALTER TABLE campaigns
    -- A name or service of spaces reads as nothing in `campaign status` and
    -- cannot be typed back on a command line: at least one character that is
    -- not ASCII white space.
    ADD CONSTRAINT campaigns_name_not_blank
        CHECK (name ~ '[^ \t\n\r\f\v]'),
    ADD CONSTRAINT campaigns_service_name_not_blank
        CHECK (service_name ~ '[^ \t\n\r\f\v]'),
    -- Below one call in 1,000 s the pacing window is longer than any campaign
    -- (and below ~1e-11/s it overflows PostgreSQL's timestamps).
    ADD CONSTRAINT campaigns_calls_per_second_min
        CHECK (calls_per_second >= 0.001),
    -- Every delay is a number of seconds, from 0 to 365 days. A string, a list,
    -- null or true would silently mean "never retried"; a negative one "at once";
    -- a huge one overflows next_attempt_at. (Not an object at all is
    -- campaigns_retry_delays_check's to report: silent => true skips it here.)
    ADD CONSTRAINT campaigns_retry_delays_valid
        CHECK (NOT jsonb_path_exists(
            retry_delays,
            'strict $.* ? (@.type() != "number" || @ < 0 || @ > 31536000)',
            '{}', true)),
    -- Keys are the call causes that can be retried (plus `unknown`: no outcome
    -- learned). A misspelt cause would never match, so never retry; an answered
    -- cause (completed, hung_up) is never retried anyway.
    ADD CONSTRAINT campaigns_retry_delays_known_causes
        CHECK (NOT jsonb_path_exists(
            retry_delays,
            'strict $.keyvalue().key ? (!(@ like_regex "^(busy|no_answer|unobtainable|dropped|failed|unknown)$"))',
            '{}', true)),
    -- The days are a set: '{1,1,2}' is a typo for something else.
    ADD CONSTRAINT campaigns_window_days_distinct
        CHECK (campaign_days_distinct(window_days)),
    -- Replaced: the old form raised "searching for elements in multidimensional
    -- arrays is not supported" for '{{1,2},{3,4}}' instead of naming itself.
    -- `<@` never matches a NULL element, so it also refuses NULLs.
    DROP CONSTRAINT campaigns_window_days_valid,
    ADD CONSTRAINT campaigns_window_days_valid CHECK (
        array_ndims(window_days) = 1
        AND cardinality(window_days) BETWEEN 1 AND 7
        AND window_days <@ '{1,2,3,4,5,6,7}'::smallint[]);

-- The engine (Python) represents years 1 to 9999 only (and ±infinity, which
-- asyncpg reads as the first and last of those). Refused: a finite time outside
-- them, which `campaign why` could not read back.
ALTER TABLE contacts
    ADD CONSTRAINT contacts_not_before_in_range
        CHECK (NOT isfinite(not_before)
               OR not_before BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00');
