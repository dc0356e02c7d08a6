//! Schema checks for the async operations: responses validated with the
//! `jsonschema` crate against Halo's document. The document is read from
//! `../shared/halo-api/` beside the checkout (as CI lays it out).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

fn document_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("../shared/halo-api/integrator-openapi.json")
}

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = document_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the document is JSON")
    })
}

/// A JSON pointer token, escaped (`~0`, `~1`) and percent-encoded for a URI fragment.
fn token(s: &str) -> String {
    s.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// Validates `instance` against the schema at `pointer` (a URI fragment such as
/// `#/components/schemas/AsyncQuery`) inside the document; panics with every error.
pub(crate) fn assert_valid_at(pointer: &str, instance: &Value) {
    let mut schema = document().clone();
    let Value::Object(map) = &mut schema else {
        panic!("the document is an object")
    };
    map.insert("$ref".into(), Value::String(pointer.to_owned()));
    let validator =
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema at {pointer}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} does not validate against {pointer}:\n{}",
        errors.join("\n")
    );
}

/// Validates against `#/components/schemas/{name}`.
pub(crate) fn assert_schema(name: &str, instance: &Value) {
    assert_valid_at(&format!("#/components/schemas/{name}"), instance);
}

/// Validates against the JSON response of `method path` with `status`.
pub(crate) fn assert_response(method: &str, path: &str, status: u16, instance: &Value) {
    let pointer = format!(
        "#/paths/{}/{}/responses/{status}/content/application~1json/schema",
        token(path),
        method.to_ascii_lowercase()
    );
    assert_valid_at(&pointer, instance);
}

/// Validates against branch `branch` of the `oneOf` of a JSON response.
pub(crate) fn assert_response_branch(
    method: &str,
    path: &str,
    status: u16,
    branch: usize,
    instance: &Value,
) {
    let pointer = format!(
        "#/paths/{}/{}/responses/{status}/content/application~1json/schema/oneOf/{branch}",
        token(path),
        method.to_ascii_lowercase()
    );
    assert_valid_at(&pointer, instance);
}
