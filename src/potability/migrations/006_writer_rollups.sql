-- The log writer rolls up its own batches (issue 13). Profiled on a 500-row COPY (20,000 lab rows,
-- 20 sensors): of migration 005's trigger, the histogram took 4-8 ms (width_bucket over the edge
-- array for every row and feature: ~1.7 us each), the lab match ~1.1 ms, the hourly rollup
-- ~0.4 ms. The server's writer already holds each flush as numpy columns: it computes the hourly
-- and histogram deltas itself (numpy.searchsorted(edges, x, side="right") is width_bucket) and adds
-- them in the same transaction as its COPY, with `potability.rollups_by_writer` set 'on' for that
-- transaction, so the trigger does only the lab match then (from a cached plan, below). Every
-- other insert (spool replays, staged inserts, bulk fills, a manual INSERT) is rolled up by the
-- trigger as before.
-- Functions only: applies to a filled database as it stands, nothing is recounted.

-- The upserts of an hourly / histogram delta, written once: the trigger's and backfill's
-- aggregates (below) and the writer's precomputed deltas (water.add_*_deltas) both go through them.
CREATE OR REPLACE FUNCTION water.hourly_upsert_sql(deltas text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO water.inference_hourly AS h
        (hour, sensor_id, model_version, answers, potable, probability_sum, last_received_at)
    %s
    ON CONFLICT (hour, sensor_id, model_version) DO UPDATE SET
        answers = h.answers + EXCLUDED.answers,
        potable = h.potable + EXCLUDED.potable,
        probability_sum = h.probability_sum + EXCLUDED.probability_sum,
        last_received_at = greatest(h.last_received_at, EXCLUDED.last_received_at)$f$, deltas)
$$;

CREATE OR REPLACE FUNCTION water.hourly_rollup_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT water.hourly_upsert_sql(format($f$
    SELECT date_trunc('hour', n.received_at, 'UTC'), n.sensor_id, n.model_version, count(*),
           count(*) FILTER (WHERE n.potable), sum(n.probability), max(n.received_at)
    FROM %s n
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3$f$, source))
$$;

CREATE OR REPLACE FUNCTION water.histogram_upsert_sql(deltas text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO water.feature_histogram_hourly AS h (model_version, hour, feature, bucket, answers)
    %s
    ON CONFLICT (model_version, hour, feature, bucket) DO UPDATE SET
        answers = h.answers + EXCLUDED.answers$f$, deltas)
$$;

CREATE OR REPLACE FUNCTION water.histogram_rollup_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT water.histogram_upsert_sql(format($f$
    SELECT * FROM (
        SELECT n.model_version, date_trunc('hour', n.received_at, 'UTC'), v.feature,
               coalesce(v.bucket, -1), count(*)
        FROM %s n
        JOIN water.feature_edges e ON e.model_version = n.model_version
        CROSS JOIN LATERAL (VALUES
            ('ph', width_bucket(n.ph, e.ph)),
            ('hardness', width_bucket(n.hardness, e.hardness)),
            ('solids', width_bucket(n.solids, e.solids)),
            ('chloramines', width_bucket(n.chloramines, e.chloramines)),
            ('sulfate', width_bucket(n.sulfate, e.sulfate)),
            ('conductivity', width_bucket(n.conductivity, e.conductivity)),
            ('organic_carbon', width_bucket(n.organic_carbon, e.organic_carbon)),
            ('trihalomethanes', width_bucket(n.trihalomethanes, e.trihalomethanes)),
            ('turbidity', width_bucket(n.turbidity, e.turbidity))) AS v (feature, bucket)
        GROUP BY 1, 2, 3, 4) grouped
    ORDER BY 1, 2, 3, 4$f$, source))
$$;

-- Called by the writer first in its transaction: the trigger leaves the hourly and histogram
-- rollups of this transaction's inserts to it, the versions' histogram locks are held shared (as
-- the trigger holds them: registering edges waits, and its backfill then sees these rows), and
-- the edges of those versions registered by now are returned (a version without is not binned).
CREATE OR REPLACE FUNCTION water.begin_writer_rollups(versions text[])
RETURNS SETOF water.feature_edges LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('potability.rollups_by_writer', 'on', true);
    PERFORM water.lock_histograms(v, false) FROM (SELECT DISTINCT unnest(versions) AS v) vs ORDER BY v;
    -- a new statement, so a new snapshot: edges registered while we waited for the lock are seen
    RETURN QUERY SELECT * FROM water.feature_edges e WHERE e.model_version = ANY (versions);
END
$$;

-- The writer's deltas. Times are microseconds since 2000-01-01 UTC (COPY's own timestamp unit), so
-- they cross as bigint arrays without a conversion per value: the hour of an answer is
-- us / 3,600,000,000 (floored), exactly date_trunc('hour', received_at, 'UTC').
CREATE OR REPLACE FUNCTION water.add_hourly_deltas(hour_us bigint[], sensor_ids text[],
    model_versions text[], answers bigint[], potable bigint[], probability_sums double precision[],
    last_us bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE water.hourly_upsert_sql($f$
        SELECT timestamptz '2000-01-01 00:00:00+00' + d.hour_us * interval '1 microsecond',
               d.sensor_id, d.model_version, d.answers, d.potable, d.probability_sum,
               timestamptz '2000-01-01 00:00:00+00' + d.last_us * interval '1 microsecond'
        FROM unnest($1, $2, $3, $4, $5, $6, $7)
            AS d (hour_us, sensor_id, model_version, answers, potable, probability_sum, last_us)
        ORDER BY 1, 2, 3$f$)
        USING hour_us, sensor_ids, model_versions, answers, potable, probability_sums, last_us;
END
$$;

CREATE OR REPLACE FUNCTION water.add_histogram_deltas(model_versions text[], hour_us bigint[],
    features text[], buckets integer[], answers bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE water.histogram_upsert_sql($f$
        SELECT d.model_version, timestamptz '2000-01-01 00:00:00+00' + d.hour_us * interval '1 microsecond',
               d.feature, d.bucket, d.answers
        FROM unnest($1, $2, $3, $4, $5) AS d (model_version, hour_us, feature, bucket, answers)
        ORDER BY 1, 2, 3, 4$f$)
        USING model_versions, hour_us, features, buckets, answers;
END
$$;

-- The trigger. Its lab match is static SQL now, not EXECUTE: PL/pgSQL keeps the plan, so a
-- statement no longer plans the match over every partition of the log (~0.9 of a 100-row COPY's
-- 1.2 ms of matching). The text is 005's match_samples_sql(samples_near_sql('new_rows')), put in
-- the body when this migration runs (a migration that changes those must recreate this function).
DO $do$ BEGIN EXECUTE format($fn$
CREATE OR REPLACE FUNCTION water.roll_up_inferences() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
BEGIN
    IF current_setting('potability.rollups_by_writer', true) IS DISTINCT FROM 'on' THEN
        EXECUTE water.hourly_rollup_sql('new_rows');
        PERFORM water.lock_histograms(v, false) FROM (SELECT DISTINCT model_version AS v FROM new_rows) vs ORDER BY v;
        EXECUTE water.histogram_rollup_sql('new_rows');
    END IF;
    IF window_minutes IS NOT NULL THEN
        %s;
    END IF;
    RETURN NULL;
END
$body$$fn$, replace(water.match_samples_sql(water.samples_near_sql('new_rows')), '$1', 'window_minutes'));
END $do$;
