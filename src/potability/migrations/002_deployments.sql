-- Every act that moved the MLflow alias `champion`: who, when, which version, why,
-- and what it replaced. `potability deploy` writes it; the quality page shows it.
CREATE TABLE IF NOT EXISTS water.deployments (
    id                 bigserial PRIMARY KEY,
    deployed_at        timestamptz NOT NULL DEFAULT now(),
    deployed_by        text NOT NULL,
    action             text NOT NULL CHECK (action IN ('deploy', 'rollback')),
    registered_model   text NOT NULL,
    registry_version   text NOT NULL,
    model_version      text NOT NULL,
    previous_version   text,
    previous_model_version text,
    reason             text NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_model_time ON water.deployments (registered_model, deployed_at);
