-- Retention is the owner's decision (issue 22). The server role runs the log's functions as
-- their owner, so that retention runs unattended on every server; but with any cutoff it
-- could drop yesterday's answers. `potability db migrate` now records its
-- POTABILITY_LOG_RETENTION_DAYS here, and drop_inference_partitions keeps at least that
-- many days for every caller who is not the log's owner: a server may ask to keep longer,
-- never shorter. 0 = keep forever (then a server's call drops nothing).
CREATE TABLE IF NOT EXISTS water.log_retention (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    keep_days integer NOT NULL DEFAULT 0 CHECK (keep_days >= 0),
    set_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO water.log_retention DEFAULT VALUES ON CONFLICT DO NOTHING;

-- The days a caller's request keeps: the request for the log's owner (and superusers),
-- else at least the recorded retention, and nothing dropped when that is 0. session_user:
-- inside a SECURITY DEFINER function current_user is the owner, the login stays the caller.
CREATE OR REPLACE FUNCTION water.allowed_retention_days(requested integer)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_has_role(session_user, c.relowner, 'USAGE') THEN requested
        WHEN r.keep_days = 0 THEN 0
        ELSE greatest(requested, r.keep_days)
    END
    FROM water.log_retention r, pg_class c
    WHERE c.oid = 'water.water_inferences'::regclass
$$;

CREATE OR REPLACE FUNCTION water.drop_inference_partitions(keep_days integer)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    allowed integer := water.allowed_retention_days(keep_days);
    cutoff date := (now() AT TIME ZONE 'UTC')::date - allowed;
    part text;
    removed bigint;
BEGIN
    IF allowed IS NULL OR allowed <= 0 THEN
        RETURN;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'water.water_inferences'::regclass
          AND c.relname ~ '^water_inferences_p[0-9]{8}$'
          AND to_date(substr(c.relname, 19), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE water.%I', part);
        RETURN NEXT part;
    END LOOP;
    DELETE FROM water.water_inferences_default WHERE received_at < cutoff::timestamp AT TIME ZONE 'UTC';
    GET DIAGNOSTICS removed = ROW_COUNT;
    IF removed > 0 THEN
        RETURN NEXT format('water_inferences_default: %s rows', removed);
    END IF;
END
$$;
