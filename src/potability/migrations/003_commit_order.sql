-- Lab rows in commit order, for the retrain flow's watermark.
-- added_at (clock_timestamp()) is taken at insert: a transaction that inserts
-- early and commits late gets an added_at older than rows already read, and a
-- watermark on added_at skips it for good. commit_seq is drawn from a sequence
-- under a transaction-level advisory lock held until commit, so lab writers
-- take numbers one transaction at a time: every row with a commit_seq at or
-- below a number a reader has seen is already committed and visible.
CREATE SEQUENCE IF NOT EXISTS water.commit_seq;
ALTER TABLE water.water_potability ADD COLUMN IF NOT EXISTS commit_seq bigint;

CREATE OR REPLACE FUNCTION water.assign_commit_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(727303);  -- released at commit or rollback
    NEW.commit_seq := nextval('water.commit_seq');
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS water_potability_commit_seq ON water.water_potability;
CREATE TRIGGER water_potability_commit_seq
    BEFORE INSERT ON water.water_potability
    FOR EACH ROW EXECUTE FUNCTION water.assign_commit_seq();

-- rows stored before this migration: numbered in the order they were added
UPDATE water.water_potability p SET commit_seq = o.seq
FROM (SELECT id, nextval('water.commit_seq') AS seq
      FROM (SELECT id FROM water.water_potability WHERE commit_seq IS NULL ORDER BY added_at, id) ordered) o
WHERE p.id = o.id;
ALTER TABLE water.water_potability ALTER COLUMN commit_seq SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS water_potability_commit_seq ON water.water_potability (commit_seq);

-- the flow's watermark is now a commit_seq (the timestamp column stays for old readers)
ALTER TABLE water.flow_state ADD COLUMN IF NOT EXISTS watermark_seq bigint;
-- a flow that ran before this migration keeps its place: its timestamp watermark becomes the
-- newest commit_seq at or before it, so the next run does not retrain on rows it already saw
UPDATE water.flow_state f
SET watermark_seq = (SELECT max(p.commit_seq) FROM water.water_potability p WHERE p.added_at <= f.watermark)
WHERE f.watermark_seq IS NULL AND f.watermark IS NOT NULL;
