//! Prints, as JSON, a pgbench script and its variables (`-D`) that issue per
//! transaction the statement the sink issues per live upsert (mirror upsert
//! and change-log row in one statement), with the same parameters bound
//! (`pgbench -M prepared`). Differences: the key is the random `:k`, and the
//! receive time is a constant.
//! This is the baseline of `make bench-live`.
//!
//! Usage: bench-sql SCHEMA FORM_FILE  ->  {"script": "...", "defines": {"v1": "...", ...}}

use aljex_proto::{change::change_from_form, change::validate, form::default_fallback};
use aljex_sink::{
    apply::{fields_json, upsert_sql},
    mirror::Mirror,
    tables::TablesConfig,
};

/// Replaces `$1..$n` with `values` (highest index first, so `$1` never eats `$10`).
fn bind(sql: &str, values: &[String]) -> String {
    let mut out = sql.to_string();
    for (i, value) in values.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), value);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(schema), Some(file)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: bench-sql SCHEMA FORM_FILE");
    };
    let body = std::fs::read(file)?;
    let request = change_from_form(&body, default_fallback())?;
    let change = validate(&request)?;
    let tables = TablesConfig::default();
    let spec = tables.spec(&change.table);
    let mirror = Mirror::new(schema.clone());
    let columns = change.names();
    let key_column = spec.key.first().map(String::as_str).unwrap_or("id");

    let key_index = change
        .fields
        .iter()
        .position(|(name, _)| name == key_column)
        .map(|i| i + 1)
        .ok_or_else(|| anyhow::anyhow!("the form has no {key_column}"))?;
    let array_literal = format!(
        "{{{}}}",
        change
            .fields
            .iter()
            .map(|(_, v)| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut defines = serde_json::Map::new();
    for (name, value) in [
        ("vals", array_literal),
        ("received_at", "2026-12-04 00:00:00+00".to_string()),
        ("schema", schema.clone()),
        ("table", change.table.clone()),
        ("raw_action", "update".to_string()),
        ("fields", fields_json(&change)),
        ("request_id", "bench".to_string()),
        ("client_ip", "127.0.0.1".to_string()),
    ] {
        defines.insert(name.to_string(), value.into());
    }
    let params = [
        ":vals::text[]",
        ":received_at::timestamptz",
        ":schema",
        ":table",
        "ARRAY[:k::text]",
        ":raw_action",
        ":fields::jsonb",
        ":request_id",
        ":client_ip",
    ]
    .map(String::from);
    let statement = bind(&upsert_sql(&mirror, spec, &change.table, &columns), &params)
        .replace(&format!("v[{key_index}]"), ":k::text");
    let script = format!("\\set k random(1, 2000000000)\n{statement};\n");
    println!(
        "{}",
        serde_json::json!({"script": script, "defines": defines})
    );
    Ok(())
}
