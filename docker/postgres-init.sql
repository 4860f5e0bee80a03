-- The first start of the PostgreSQL container creates Dagster's database (POSTGRES_DB) and runs
-- this: MLflow's backend store gets its own database on the same server.
CREATE DATABASE mlflow;
