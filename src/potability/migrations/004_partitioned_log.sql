-- The inference log built to grow (issue 13): one partition per UTC day, so retention drops
-- whole days instead of deleting rows, and each day's indexes stay small. A DEFAULT partition
-- takes any row no daily partition covers (a sensor clock far off, a day not created ahead),
-- so a row is never refused. The primary key must contain the partition key:
-- (inference_id, received_at); a replay carries the same received_at, so it still never doubles.
ALTER TABLE water.water_inferences RENAME TO water_inferences_v1;
ALTER TABLE water.water_inferences_v1 RENAME CONSTRAINT water_inferences_pkey TO water_inferences_v1_pkey;
ALTER INDEX water.water_inferences_received RENAME TO water_inferences_v1_received;
ALTER INDEX water.water_inferences_sensor RENAME TO water_inferences_v1_sensor;

-- the same columns (001), NOT NULLs included
CREATE TABLE water.water_inferences (
    LIKE water.water_inferences_v1,
    PRIMARY KEY (inference_id, received_at)
) PARTITION BY RANGE (received_at);
-- (sensor_id, received_at) serves the per-sensor probes (lab matches). The old index on
-- received_at alone is not kept: a day is a partition now (time ranges prune partitions),
-- the page reads rollups, and every logged answer paid for it; the planner also preferred it,
-- filtering by sensor, for the nearest-answer probes.
CREATE INDEX water_inferences_sensor ON water.water_inferences (sensor_id, received_at);
CREATE TABLE water.water_inferences_default PARTITION OF water.water_inferences DEFAULT;

-- One day's partition, [day, day + 1) in UTC. Rows the DEFAULT partition already holds for that
-- day move into it (Postgres refuses a new partition whose range the default still covers). They
-- are written to the partition directly, so the rollup triggers (on the parent) do not count
-- them twice.
CREATE OR REPLACE FUNCTION water.ensure_inference_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'water_inferences_p' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(format('water.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE water.%I (LIKE water.water_inferences INCLUDING DEFAULTS)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM water.water_inferences_default '
        'WHERE received_at >= $1 AND received_at < $2 RETURNING *) '
        'INSERT INTO water.%I SELECT * FROM moved', part) USING low, high;
    EXECUTE format('ALTER TABLE water.water_inferences ATTACH PARTITION water.%I '
                   'FOR VALUES FROM (%L) TO (%L)', part, low, high);
    RETURN true;
END
$$;

-- Partitions from days_back days ago (yesterday by default: a late batch) to days_ahead days
-- from today (UTC); returns the new ones. A bulk load of past days asks for more days back.
CREATE OR REPLACE FUNCTION water.ensure_inference_partitions(days_ahead integer, days_back integer DEFAULT 1)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
BEGIN
    FOR day IN SELECT generate_series(today - greatest(days_back, 0), today + greatest(days_ahead, 0),
                                      interval '1 day')::date LOOP
        IF water.ensure_inference_partition(day) THEN
            RETURN NEXT 'water_inferences_p' || to_char(day, 'YYYYMMDD');
        END IF;
    END LOOP;
END
$$;

-- Retention: drop every daily partition wholly older than keep_days (0 = keep forever), and
-- delete the default partition's rows older than that. The rollups are separate tables and are
-- never touched. Returns what went, one line each.
CREATE OR REPLACE FUNCTION water.drop_inference_partitions(keep_days integer)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    cutoff date := (now() AT TIME ZONE 'UTC')::date - keep_days;
    part text;
    removed bigint;
BEGIN
    IF keep_days <= 0 THEN
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

-- Existing rows move in: a partition for every UTC day that has rows, then one copy.
SELECT water.ensure_inference_partition(day)
FROM (SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date AS day FROM water.water_inferences_v1) days
ORDER BY day;
INSERT INTO water.water_inferences SELECT * FROM water.water_inferences_v1;
DROP TABLE water.water_inferences_v1;
