//! Tables for people (`comfy-table`), from the Cloud's JSON answers. Fields the
//! Cloud does not send show as `-`, so a newer or older Cloud still renders.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

/// A JSON value as a cell: strings bare, lists joined, absent as `-`.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

/// Two columns, field and value, for one object; nested objects are flattened
/// with dotted names.
pub fn fields(value: &Value) -> String {
    let mut t = table(&["field", "value"]);
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    for (k, v) in rows {
        t.add_row(vec![k, v]);
    }
    t.to_string()
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(_) => flatten(&name, v, out),
                    Value::Array(items) if items.iter().any(Value::is_object) => {
                        for (i, item) in items.iter().enumerate() {
                            flatten(&format!("{name}[{i}]"), item, out);
                        }
                    }
                    _ => out.push((name, cell(Some(v)))),
                }
            }
        }
        other => out.push((prefix.to_owned(), cell(Some(other)))),
    }
}

/// The Link credentials as one row each (never a token: the Cloud sends none).
pub fn credentials(list: &Value) -> String {
    let mut t = table(&[
        "id",
        "label",
        "environment",
        "kind",
        "practices",
        "demo copies",
        "bound link",
        "revoked",
    ]);
    for c in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        t.add_row(vec![
            cell(c.get("id")),
            cell(c.get("label")),
            cell(c.get("environment")),
            cell(c.get("kind")),
            cell(c.get("practices")),
            cell(c.get("demoCopies")),
            cell(c.get("linkId")),
            cell(c.get("revoked")),
        ]);
    }
    t.to_string()
}

/// The support view of a site, the most used fields first.
pub fn site(v: &Value) -> String {
    let s = v.get("site");
    let get = |path: &str| v.pointer(path);
    let mut t = table(&["field", "value"]);
    let rows: [(&str, Option<&Value>); 12] = [
        ("halo guid", s.and_then(|s| s.get("id"))),
        ("practice", get("/site/practiceMetadata/practiceName")),
        (
            "routing CRN",
            get("/site/practiceMetadata/practiceManagementSiteId"),
        ),
        ("pms type", s.and_then(|s| s.get("pmsType"))),
        ("environment", v.get("environment")),
        ("demo copy", v.get("demo")),
        ("status", s.and_then(|s| s.get("status"))),
        ("availability", s.and_then(|s| s.get("availability"))),
        ("authoritative", s.and_then(|s| s.get("authoritative"))),
        ("epoch", v.get("epoch")),
        ("link", v.get("linkId")),
        ("link version", s.and_then(|s| s.get("haloLinkVersion"))),
    ];
    for (k, value) in rows {
        t.add_row(vec![k.to_owned(), cell(value)]);
    }
    let catalogues: Vec<String> = get("/site/catalogue")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let name = cell(c.get("name"));
            if c.get("isDefault").and_then(Value::as_bool) == Some(true) {
                format!("{name} (default)")
            } else {
                name
            }
        })
        .collect();
    t.add_row(vec!["catalogues".to_owned(), catalogues.join(", ")]);
    t.to_string()
}

/// A page of the audit trail, one row per entry, and how to get the next page.
pub fn audit(page: &Value) -> String {
    let mut t = table(&[
        "id",
        "at",
        "kind",
        "actor",
        "reason",
        "integrator",
        "practice",
        "site",
        "epoch",
        "code",
        "count",
    ]);
    let entries = page.get("entries").and_then(Value::as_array);
    for e in entries.map(Vec::as_slice).unwrap_or_default() {
        t.add_row(vec![
            cell(e.get("id")),
            cell(e.get("at")),
            cell(e.get("kind")),
            cell(e.get("actor")),
            cell(e.get("reason")),
            cell(e.get("integrator")),
            cell(e.get("practice")),
            cell(e.get("haloGuid")),
            cell(e.get("epoch")),
            cell(e.get("code")),
            cell(e.get("count")),
        ]);
    }
    match page.get("nextCursor") {
        Some(c) if !c.is_null() => format!("{t}\nOlder entries: --cursor {}", cell(Some(c))),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_render_one_row_each_with_absent_fields_as_dashes() {
        let text = credentials(&json!([
            {"id": "lc_1", "label": "Smile Co", "environment": "stage", "kind": "onPremises",
             "practices": ["D4w:AB1", "D4w:AB2"], "demoCopies": false, "linkId": null, "revoked": false},
            {"id": "lc_2", "label": "", "practices": [], "revoked": true}
        ]));
        assert!(text.contains("lc_1") && text.contains("lc_2"), "{text}");
        assert!(text.contains("D4w:AB1, D4w:AB2"), "{text}");
        let row2 = text.lines().find(|l| l.contains("lc_2")).expect("row");
        assert!(row2.contains(" - ") && row2.contains("yes"), "{row2}");
    }

    #[test]
    fn nested_fields_are_flattened() {
        let text =
            fields(&json!({"key": "stg_x", "site": {"id": "g", "catalogue": [{"name": "main"}]}}));
        assert!(text.contains("site.id"), "{text}");
        assert!(text.contains("site.catalogue[0].name"), "{text}");
    }
}
