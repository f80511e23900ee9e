//! Human tables or JSON.

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Print `v` as JSON, or as a table with `cols` (header, JSON pointer) per row of `rows`.
pub fn print(fmt: Format, v: &Value, rows: &[Value], cols: &[(&str, &str)]) {
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(cols.iter().map(|(h, _)| *h));
    for r in rows {
        t.add_row(cols.iter().map(|(_, p)| cell(r.pointer(p))));
    }
    println!("{t}");
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={}", cell(Some(v)))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}
