-- The three tables of DESIGN.md. Column names are lower case; the API and CSV
-- files use the data set's own names (Hardness, ...).
CREATE TABLE IF NOT EXISTS water.water_potability (
    id               bigserial PRIMARY KEY,
    sample_id        text NOT NULL UNIQUE,
    sensor_id        text,
    ph               double precision,
    hardness         double precision,
    solids           double precision,
    chloramines      double precision,
    sulfate          double precision,
    conductivity     double precision,
    organic_carbon   double precision,
    trihalomethanes  double precision,
    turbidity        double precision,
    potability       smallint NOT NULL CHECK (potability IN (0, 1)),
    collected_at     timestamptz,
    added_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    added_by         text NOT NULL
);
CREATE INDEX IF NOT EXISTS water_potability_added_at ON water.water_potability (added_at);
CREATE INDEX IF NOT EXISTS water_potability_sensor ON water.water_potability (sensor_id, collected_at);

CREATE TABLE IF NOT EXISTS water.water_inferences (
    inference_id     uuid PRIMARY KEY,
    received_at      timestamptz NOT NULL,
    sensor_id        text NOT NULL,
    model_version    text NOT NULL,
    ph               double precision,
    hardness         double precision,
    solids           double precision,
    chloramines      double precision,
    sulfate          double precision,
    conductivity     double precision,
    organic_carbon   double precision,
    trihalomethanes  double precision,
    turbidity        double precision,
    probability      double precision NOT NULL,
    potable          boolean NOT NULL,
    threshold        double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS water_inferences_received ON water.water_inferences (received_at);
CREATE INDEX IF NOT EXISTS water_inferences_sensor ON water.water_inferences (sensor_id, received_at);

CREATE TABLE IF NOT EXISTS water.api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('sensor', 'lab', 'admin')),
    token_sha256 text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- The retrain flow's watermark: the added_at of the newest lab row it trained on.
CREATE TABLE IF NOT EXISTS water.flow_state (
    name        text PRIMARY KEY,
    watermark   timestamptz,
    data_hash   text,
    lock_hash   text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
