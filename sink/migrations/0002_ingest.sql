-- Morning sync: one row per CSV file ingested (or refused).
CREATE TABLE aljex_sync.ingest_runs (
    id             bigserial PRIMARY KEY,
    file_name      text        NOT NULL,
    schema_name    text        NOT NULL,
    table_name     text,
    sha256         text        NOT NULL,
    mode           text,                   -- snapshot | window
    encoding       text,                   -- utf-8 | windows-1252
    bytes          bigint      NOT NULL DEFAULT 0,
    export_time    timestamptz,
    rows_read      bigint      NOT NULL DEFAULT 0,
    rows_inserted  bigint      NOT NULL DEFAULT 0,
    rows_updated   bigint      NOT NULL DEFAULT 0,
    rows_unchanged bigint      NOT NULL DEFAULT 0,
    rows_deleted   bigint      NOT NULL DEFAULT 0,
    rows_rejected  bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    status         text        NOT NULL,   -- running | applied | duplicate | failed | interrupted
    error          text
);
CREATE INDEX ingest_runs_sha256 ON aljex_sync.ingest_runs (schema_name, sha256);
CREATE INDEX ingest_runs_started_at ON aljex_sync.ingest_runs (started_at);

-- Rows of a file that could not be used, with file and line.
CREATE TABLE aljex_sync.ingest_rejects (
    id         bigserial PRIMARY KEY,
    run_id     bigint NOT NULL REFERENCES aljex_sync.ingest_runs (id) ON DELETE CASCADE,
    file_name  text   NOT NULL,
    line       bigint NOT NULL,
    reason     text   NOT NULL,
    record     text   NOT NULL
);
CREATE INDEX ingest_rejects_run ON aljex_sync.ingest_rejects (run_id);
