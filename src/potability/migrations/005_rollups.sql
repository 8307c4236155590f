-- Rollups the quality page reads instead of the raw log (issue 13). Kept up to date as rows
-- arrive by AFTER INSERT ... FOR EACH STATEMENT triggers with transition tables, so every path
-- that writes rows (the server's COPY, a spool replay, a bench fill with INSERT ... SELECT) updates
-- them, once per statement, and only with the rows actually inserted (a replay's skipped
-- duplicates are not in new_rows). Retention drops log partitions and never touches these tables.
-- Rows written straight into one partition (not through water.water_inferences) bypass them.

-- Answers per UTC hour, sensor and model version.
CREATE TABLE IF NOT EXISTS water.inference_hourly (
    hour              timestamptz NOT NULL,
    sensor_id         text NOT NULL,
    model_version     text NOT NULL,
    answers           bigint NOT NULL,
    potable           bigint NOT NULL,
    probability_sum   double precision NOT NULL,
    last_received_at  timestamptz NOT NULL,  -- the newest answer counted: how fresh the page is
    PRIMARY KEY (hour, sensor_id, model_version)
);

-- The bin edges of each model version's training profile (meta.json `reference`), one array per
-- feature (SQL column name; empty when the profile has none): registered when a version is
-- deployed or loaded by a server. One row per version, so binning a batch is one hash join.
CREATE TABLE IF NOT EXISTS water.feature_edges (
    model_version    text PRIMARY KEY,
    ph               double precision[] NOT NULL,
    hardness         double precision[] NOT NULL,
    solids           double precision[] NOT NULL,
    chloramines      double precision[] NOT NULL,
    sulfate          double precision[] NOT NULL,
    conductivity     double precision[] NOT NULL,
    organic_carbon   double precision[] NOT NULL,
    trihalomethanes  double precision[] NOT NULL,
    turbidity        double precision[] NOT NULL,
    registered_at    timestamptz NOT NULL
);

-- Live inputs per UTC hour, model version, feature and bin: width_bucket(value, edges), the same
-- bins as numpy.searchsorted(edges, value, side="right") in quality.reference_profile; -1 = missing.
CREATE TABLE IF NOT EXISTS water.feature_histogram_hourly (
    model_version  text NOT NULL,
    hour           timestamptz NOT NULL,
    feature        text NOT NULL,
    bucket         integer NOT NULL,
    answers        bigint NOT NULL,
    PRIMARY KEY (model_version, hour, feature, bucket)
);

-- The lab-match window (params.yaml page.lab_match_minutes), set by `potability db migrate`
-- and by the server's maintenance: water.set_lab_match_window.
CREATE TABLE IF NOT EXISTS water.lab_match_config (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    window_minutes  integer NOT NULL CHECK (window_minutes > 0)
);

-- Per lab sample with sensor and time: the same sensor's answer nearest in time within the
-- window (ties: the earlier answer), copied here so retention does not lose it.
CREATE TABLE IF NOT EXISTS water.lab_matches (
    sample_id      text PRIMARY KEY,
    sensor_id      text NOT NULL,
    collected_at   timestamptz NOT NULL,
    potability     smallint NOT NULL,
    inference_id   uuid NOT NULL,
    received_at    timestamptz NOT NULL,
    model_version  text NOT NULL,
    probability    double precision NOT NULL,
    potable        boolean NOT NULL,
    distance_s     double precision NOT NULL  -- |received_at - collected_at| in seconds
);

-- Each rollup's statement is written once, over a relation named by the caller: the trigger
-- passes its transition table, a backfill the log itself.
CREATE OR REPLACE FUNCTION water.hourly_rollup_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO water.inference_hourly AS h
        (hour, sensor_id, model_version, answers, potable, probability_sum, last_received_at)
    SELECT date_trunc('hour', n.received_at, 'UTC'), n.sensor_id, n.model_version, count(*),
           count(*) FILTER (WHERE n.potable), sum(n.probability), max(n.received_at)
    FROM %s n
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (hour, sensor_id, model_version) DO UPDATE SET
        answers = h.answers + EXCLUDED.answers,
        potable = h.potable + EXCLUDED.potable,
        probability_sum = h.probability_sum + EXCLUDED.probability_sum,
        last_received_at = greatest(h.last_received_at, EXCLUDED.last_received_at)$f$, source)
$$;

CREATE OR REPLACE FUNCTION water.histogram_rollup_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO water.feature_histogram_hourly AS h (model_version, hour, feature, bucket, answers)
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
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (model_version, hour, feature, bucket) DO UPDATE SET
        answers = h.answers + EXCLUDED.answers$f$, source)
$$;

-- Lab matches, nearest wins: a stored match is replaced only by a nearer answer (or an equally
-- near, earlier one). Two probes of the log's (sensor_id, received_at) index per sample (the
-- nearest answer before and after) instead of every answer in the window.
CREATE OR REPLACE FUNCTION water.lab_match_upsert_sql(matches text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$
    INSERT INTO water.lab_matches AS m (sample_id, sensor_id, collected_at, potability, inference_id,
        received_at, model_version, probability, potable, distance_s)
    %s
    ON CONFLICT (sample_id) DO UPDATE SET
        inference_id = EXCLUDED.inference_id, received_at = EXCLUDED.received_at,
        model_version = EXCLUDED.model_version, probability = EXCLUDED.probability,
        potable = EXCLUDED.potable, distance_s = EXCLUDED.distance_s
    WHERE (EXCLUDED.distance_s, EXCLUDED.received_at) < (m.distance_s, m.received_at)$f$, matches)
$$;

CREATE OR REPLACE FUNCTION water.match_samples_sql(samples text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT water.lab_match_upsert_sql(format($f$
    SELECT s.sample_id, s.sensor_id, s.collected_at, s.potability, n.inference_id, n.received_at,
           n.model_version, n.probability, n.potable, n.distance_s
    FROM %s s
    CROSS JOIN LATERAL (
        SELECT c.*, abs(extract(epoch FROM c.received_at - s.collected_at))::double precision AS distance_s
        FROM ((SELECT i.inference_id, i.received_at, i.model_version, i.probability, i.potable
               FROM water.water_inferences i
               WHERE i.sensor_id = s.sensor_id AND i.received_at <= s.collected_at
                 AND i.received_at >= s.collected_at - make_interval(mins => $1)
               ORDER BY i.received_at DESC LIMIT 1)
              UNION ALL
              (SELECT i.inference_id, i.received_at, i.model_version, i.probability, i.potable
               FROM water.water_inferences i
               WHERE i.sensor_id = s.sensor_id AND i.received_at > s.collected_at
                 AND i.received_at <= s.collected_at + make_interval(mins => $1)
               ORDER BY i.received_at ASC LIMIT 1)) c
        ORDER BY distance_s, c.received_at LIMIT 1) n
    WHERE s.sensor_id IS NOT NULL AND s.collected_at IS NOT NULL
    ORDER BY s.sample_id$f$, samples))
$$;

-- The lab samples a batch of answers can match: per sensor in the batch, one probe of the lab
-- table's (sensor_id, collected_at) index over the batch's time span widened by the window. They
-- are then matched against the whole log (which holds the batch by now) with the lab side's two
-- probes per sample: a nearer answer already stored keeps its match, and a batch spanning days
-- (a bulk load, a long spool replay) costs two probes per sample, not answers x samples.
CREATE OR REPLACE FUNCTION water.samples_near_sql(answers text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT format($f$(
    SELECT p.sample_id, p.sensor_id, p.collected_at, p.potability
    FROM (SELECT sensor_id, min(received_at) AS first, max(received_at) AS last
          FROM %s GROUP BY sensor_id) batch
    CROSS JOIN LATERAL (
        SELECT p.sample_id, p.sensor_id, p.collected_at, p.potability FROM water.water_potability p
        WHERE p.sensor_id = batch.sensor_id
          AND p.collected_at BETWEEN batch.first - make_interval(mins => $1)
                                 AND batch.last + make_interval(mins => $1)
        OFFSET 0) p)$f$, answers)  -- OFFSET 0: keep it a per-sensor index probe, not a hash join
$$;

-- Writers of one model version's histogram take this lock shared; registering its edges (and
-- backfilling) takes it exclusively, so no batch is counted neither by the trigger nor the backfill.
CREATE OR REPLACE FUNCTION water.lock_histograms(model_version text, exclusive boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF exclusive THEN
        PERFORM pg_advisory_xact_lock(727404, hashtext(model_version));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(727404, hashtext(model_version));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION water.roll_up_inferences() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
BEGIN
    EXECUTE water.hourly_rollup_sql('new_rows');
    PERFORM water.lock_histograms(v, false) FROM (SELECT DISTINCT model_version AS v FROM new_rows) vs ORDER BY v;
    EXECUTE water.histogram_rollup_sql('new_rows');
    IF window_minutes IS NOT NULL THEN
        EXECUTE water.match_samples_sql(water.samples_near_sql('new_rows')) USING window_minutes;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION water.match_new_lab_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
BEGIN
    IF window_minutes IS NOT NULL THEN
        EXECUTE water.match_samples_sql('new_rows') USING window_minutes;
    END IF;
    RETURN NULL;
END
$$;

-- A lab row and an answer near it, inserted at the same moment by two transactions, do not see
-- each other in their triggers; maintenance matches the lab rows added since its last run again.
CREATE OR REPLACE FUNCTION water.rematch_lab_samples(added_since timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    window_minutes integer := (SELECT c.window_minutes FROM water.lab_match_config c);
BEGIN
    IF window_minutes IS NOT NULL THEN
        EXECUTE water.match_samples_sql(format(
            '(SELECT * FROM water.water_potability WHERE added_at >= %L)', added_since))
            USING window_minutes;
    END IF;
END
$$;

-- Register a model version's bin edges ({column: [edges]}, every feature) and count the
-- answers already logged for it; a version registered before is left as it is. Returns whether
-- it was new.
CREATE OR REPLACE FUNCTION water.register_feature_edges(version text, edges jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM water.lock_histograms(version, true);
    IF EXISTS (SELECT 1 FROM water.feature_edges WHERE model_version = version) THEN
        RETURN false;
    END IF;
    INSERT INTO water.feature_edges SELECT * FROM jsonb_populate_record(NULL::water.feature_edges,
        edges || jsonb_build_object('model_version', version, 'registered_at', now()));
    EXECUTE water.histogram_rollup_sql(
        format('(SELECT * FROM water.water_inferences WHERE model_version = %L)', version));
    RETURN true;
END
$$;

-- Set the lab-match window; when it changes, matches beyond the new window go and every lab
-- sample is matched again against the answers still in the log. Returns whether it changed.
CREATE OR REPLACE FUNCTION water.set_lab_match_window(minutes integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT window_minutes FROM water.lab_match_config) IS NOT DISTINCT FROM minutes THEN
        RETURN false;
    END IF;
    INSERT INTO water.lab_match_config (window_minutes) VALUES (minutes)
    ON CONFLICT (id) DO UPDATE SET window_minutes = EXCLUDED.window_minutes;
    DELETE FROM water.lab_matches WHERE distance_s > minutes * 60;
    EXECUTE water.match_samples_sql('water.water_potability') USING minutes;
    RETURN true;
END
$$;

-- Backfill from the rows already stored (lab matches: when migrate first sets the window;
-- histograms: when a version's edges are registered), then keep them current.
DO $$ BEGIN EXECUTE water.hourly_rollup_sql('water.water_inferences'); END $$;

DROP TRIGGER IF EXISTS water_inferences_roll_up ON water.water_inferences;
CREATE TRIGGER water_inferences_roll_up AFTER INSERT ON water.water_inferences
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION water.roll_up_inferences();
DROP TRIGGER IF EXISTS water_potability_match ON water.water_potability;
CREATE TRIGGER water_potability_match AFTER INSERT ON water.water_potability
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION water.match_new_lab_rows();
