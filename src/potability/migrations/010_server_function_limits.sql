-- What a server may ask of the log's functions (issue 22). A server's role runs them as their
-- owner (SECURITY DEFINER), and until now with any argument: a thousand years of partitions
-- ahead, every lab sample matched again every call. Like retention (009), the bounds are the
-- owner's: `potability db migrate` records them here, and every caller who is not the log's
-- owner is held to them. The functions a server has no use for (the lab-match window, a single
-- day's partition, the recount of the rollups, the SQL builders) it may no longer execute at all
-- (roles.SERVER_FUNCTIONS; `db migrate` grants only those).
CREATE TABLE IF NOT EXISTS water.log_limits (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- POTABILITY_LOG_PARTITIONS_AHEAD_DAYS of `db migrate`: the most days ahead a server creates
    partitions_ahead_days integer NOT NULL DEFAULT 7 CHECK (partitions_ahead_days >= 0),
    -- twice POTABILITY_LOG_MAINTENANCE_SECONDS of `db migrate`: how far back a server's
    -- maintenance matches lab rows again
    rematch_seconds double precision NOT NULL DEFAULT 7200 CHECK (rematch_seconds > 0),
    set_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO water.log_limits DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Whether the session's login is the log's owner (or a member of it, or a superuser).
-- session_user: inside a SECURITY DEFINER function current_user is the owner.
CREATE OR REPLACE FUNCTION water.caller_owns_log() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_has_role(session_user, c.relowner, 'USAGE')
    FROM pg_class c WHERE c.oid = 'water.water_inferences'::regclass
$$;

-- The days ahead a caller's request creates: the request for the owner, else at most the
-- recorded days.
CREATE OR REPLACE FUNCTION water.allowed_partitions_ahead(requested integer)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN water.caller_owns_log() THEN greatest(requested, 0)
        ELSE least(greatest(requested, 0), l.partitions_ahead_days)
    END
    FROM water.log_limits l
$$;

-- 004's function, bounded: a caller but the owner gets at most the recorded days ahead and
-- yesterday back (a late batch; a bulk load of past days is the owner's).
CREATE OR REPLACE FUNCTION water.ensure_inference_partitions(days_ahead integer, days_back integer DEFAULT 1)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    ahead integer := water.allowed_partitions_ahead(days_ahead);
    back integer := CASE WHEN water.caller_owns_log() THEN greatest(days_back, 0)
                         ELSE least(greatest(days_back, 0), 1) END;
    day date;
BEGIN
    FOR day IN SELECT generate_series(today - back, today + ahead, interval '1 day')::date LOOP
        IF water.ensure_inference_partition(day) THEN
            RETURN NEXT 'water_inferences_p' || to_char(day, 'YYYYMMDD');
        END IF;
    END LOOP;
END
$$;

-- 005's function, bounded: a caller but the owner matches again only the lab rows added within
-- the recorded seconds, whatever older time it asks for.
CREATE OR REPLACE FUNCTION water.rematch_lab_samples(added_since timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
    since timestamptz := CASE
        WHEN water.caller_owns_log() THEN added_since
        ELSE greatest(added_since,
                      now() - make_interval(secs => (SELECT l.rematch_seconds FROM water.log_limits l)))
    END;
BEGIN
    IF window_minutes IS NOT NULL THEN
        EXECUTE water.match_samples_sql(format(
            '(SELECT * FROM water.water_potability WHERE added_at >= %L)', since))
            USING window_minutes;
    END IF;
END
$$;
