-- Run once by the postgres image on an empty volume (compose.yaml): MLflow's database is POSTGRES_DB;
-- Prefect gets its own, as both keep an `alembic_version` table.
CREATE DATABASE prefect;
