-- The commit holding the dvc.lock that produced each deployed version (issue 20):
-- with it and the DVC remote, `potability reproduce` rebuilds what sensors were
-- answered with. NULL for deploys made before lineage was recorded, and for
-- deploys forced without a committed lock (their reason says so).
ALTER TABLE water.deployments ADD COLUMN IF NOT EXISTS lock_commit text;
