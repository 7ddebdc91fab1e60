-- Internal bookkeeping of the Aljex sync receiver.
-- The schema itself is created by the sink before migrating (the migrations table lives in it).

-- Every change applied (or found stale) by the live path, in the same
-- transaction as the mirror-table write.
CREATE TABLE aljex_sync.change_log (
    id           bigserial PRIMARY KEY,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    key          text[]      NOT NULL,
    action       text        NOT NULL,  -- upsert | delete
    raw_action   text        NOT NULL,  -- web_sync_action as received
    fields       jsonb       NOT NULL,  -- every field, folded name -> value
    received_at  timestamptz NOT NULL,  -- set at the edge
    applied_at   timestamptz NOT NULL DEFAULT now(),
    request_id   text        NOT NULL DEFAULT '',
    client_ip    text        NOT NULL DEFAULT '',
    outcome      text        NOT NULL,  -- applied | deleted | not_found | stale
    source       text        NOT NULL DEFAULT 'live'
);
CREATE INDEX change_log_table_key ON aljex_sync.change_log (schema_name, table_name, key);
CREATE INDEX change_log_received_at ON aljex_sync.change_log (received_at);

-- Posts refused by the sink or by the edge, kept whole so nothing is lost.
CREATE TABLE aljex_sync.rejected_changes (
    id           bigserial PRIMARY KEY,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    received_at  timestamptz NOT NULL,
    rejected_by  text        NOT NULL,  -- sink | edge
    reason       text        NOT NULL,
    http_status  integer,
    request_id   text        NOT NULL DEFAULT '',
    client_ip    text        NOT NULL DEFAULT '',
    table_name   text,                  -- as received
    raw_action   text,                  -- as received
    fields       jsonb,                 -- [[name, value], ...] as received (NUL shown as U+FFFD)
    request      bytea,                 -- the ChangeRequest protobuf, byte-exact
    body         bytea                  -- the raw HTTP body, when rejected at the edge
);
CREATE INDEX rejected_changes_recorded_at ON aljex_sync.rejected_changes (recorded_at);

-- Keys deleted by the live path and when, so an older upsert that arrives
-- after the delete cannot bring the row back.
CREATE TABLE aljex_sync.tombstones (
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    key          text[]      NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (schema_name, table_name, key)
);
