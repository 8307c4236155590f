-- One computation of the hourly and histogram rollups (issue 24): the log writer's numpy deltas,
-- added in its COPY's transaction (inference_store.py), for every row it stores, replays
-- included (a replay leaves out the rows already stored, so nothing is counted twice). Measured
-- with bench/write_rollups.py (README, Performance): a 500-row COPY took ~18 ms with the writer's
-- deltas and ~32 ms with migration 005's trigger doing hourly and histogram, whose binning in SQL
-- was most of its time. So the trigger now only matches lab samples, and the session flag of
-- migration 006 (potability.rollups_by_writer) that kept the two apart is gone.
-- Rows that reach the log another way (a bulk INSERT ... SELECT, a direct write into a partition)
-- are not rolled up as they arrive: water.recompute_rollups() counts them again from the log.
-- Functions only: applies to a filled database as it stands, nothing is recounted.

-- Called by the writer first in its transaction: the versions' histogram locks are held shared
-- (registering edges waits, and its backfill then sees these rows), and the edges of those
-- versions registered by now are returned (a version without is not binned).
CREATE OR REPLACE FUNCTION water.begin_writer_rollups(versions text[])
RETURNS SETOF water.feature_edges LANGUAGE plpgsql AS $$
BEGIN
    PERFORM water.lock_histograms(v, false) FROM (SELECT DISTINCT unnest(versions) AS v) vs ORDER BY v;
    -- a new statement, so a new snapshot: edges registered while we waited for the lock are seen
    RETURN QUERY SELECT * FROM water.feature_edges e WHERE e.model_version = ANY (versions);
END
$$;

-- The trigger matches lab samples only, from a cached plan (static SQL: the text is 005's
-- match_samples_sql(samples_near_sql('new_rows')), put in the body when this migration runs, as
-- in 006; a migration that changes those must recreate this function).
DO $do$ BEGIN EXECUTE format($fn$
CREATE OR REPLACE FUNCTION water.roll_up_inferences() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
BEGIN
    IF window_minutes IS NOT NULL THEN
        %s;
    END IF;
    RETURN NULL;
END
$body$$fn$, replace(water.match_samples_sql(water.samples_near_sql('new_rows')), '$1', 'window_minutes'));
END $do$;

-- Count the hourly and histogram rollups again from the log, from `since` (default: the hour of
-- the oldest row the log still holds; retention drops whole days, so every hour from there on is
-- whole in the log) to the end; older hours, whose rows retention dropped, are kept as counted.
-- For rows the writer did not store (a bench's bulk fill); returns the first hour recounted.
-- The rollup tables are locked for the recount: a writer's deltas wait for it, and a writer
-- that added its deltas before is waited for, so its rows are in the recount's snapshot.
CREATE OR REPLACE FUNCTION water.recompute_rollups(since timestamptz DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    first_hour timestamptz;
BEGIN
    LOCK TABLE water.inference_hourly, water.feature_histogram_hourly IN EXCLUSIVE MODE;
    first_hour := date_trunc('hour', coalesce(since, (SELECT min(received_at) FROM water.water_inferences)), 'UTC');
    IF first_hour IS NULL THEN
        RETURN NULL;  -- an empty log: nothing to count
    END IF;
    DELETE FROM water.inference_hourly WHERE hour >= first_hour;
    DELETE FROM water.feature_histogram_hourly WHERE hour >= first_hour;
    EXECUTE water.hourly_rollup_sql(format(
        '(SELECT * FROM water.water_inferences WHERE received_at >= %L)', first_hour));
    EXECUTE water.histogram_rollup_sql(format(
        '(SELECT * FROM water.water_inferences WHERE received_at >= %L)', first_hour));
    RETURN first_hour;
END
$$;
