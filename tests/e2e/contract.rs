//! The contract test: the Cloud speaks Halo's public integrator API. Also the one
//! loader and validator of Halo's document for the other e2e tests
//! ([`assert_schema`], [`assert_response`], [`assert_response_branch`]).
//!
//! A Cloud and a Link on loopback; the success path and the main failure paths of
//! every implemented operation of Halo's document (`getSites`, `getSite`,
//! `Integrator_PairSite`, its deprecated alias `pairSite`, `createImmediateQuery`);
//! every answer's body validated with the `jsonschema` crate against the schema the
//! document gives for that operation and status (the whole document is one resource
//! of a registry, so its `$ref`s resolve; formats `uuid` and `date-time` are checked).
//! A status the document does not list for the operation fails the test unless it is
//! in [`DEVIATIONS`], each of which README's integrator section names with its reason.
//!
//! The document is read from `../shared/halo-api/` beside the repository (CI has
//! `shared/` there); it is not part of this repository.
//!
//! Where the document is looser than what a client relies on, the test is stricter:
//! every property of the site object is present (except those [`SITE_ABSENT`] names),
//! and every error envelope has `status` (equal to the HTTP status), `statusText` and
//! `message` (`error-codes.yml`'s general envelope).

use std::path::PathBuf;
use std::sync::OnceLock;

use halo_ids::Environment;
use halo_router::RouterConfig;
use serde_json::{Value, json};

use crate::fixture::{Harness, INTEGRATOR, TABLES, practice};

/// Statuses the Cloud answers that Halo's document does not list for an operation,
/// each with why (README's integrator section lists the same).
pub(crate) const DEVIATIONS: &[(&str, u16, &str)] = &[
    (
        "*",
        405,
        "a method the route does not serve: 405 with `Allow` (Halo's gateway answers 404)",
    ),
    (
        "createImmediateQuery",
        413,
        "a result over 8 MiB, a value over the Link's limit, or a body over 1 MiB: \
         error-codes.yml's status for oversize immediate results",
    ),
    (
        "createImmediateQuery",
        415,
        "a body sent without Content-Type: application/json",
    ),
    (
        "createImmediateQuery",
        408,
        "the body did not arrive within the body deadline",
    ),
    (
        "createImmediateQuery",
        429,
        "rate limit, with Retry-After: error-codes.yml's status for rate limiting",
    ),
];

/// Properties of Halo's site object the Cloud may leave out, with why (none today:
/// `createdAt` is recorded at a site's first registration).
const SITE_ABSENT: &[(&str, &str)] = &[];

/// Halo's document, with the one schema deviation applied: `errorType` also allows
/// `sqlite`, the error class of this project's SQLite Links.
fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/halo-api/integrator-openapi.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "Halo's integrator document is expected at {} (shared/ beside the checkout): {e}",
                path.display()
            )
        });
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let patched = allow_sqlite_error_type(&mut doc);
        assert!(patched > 0, "the document has no errorType enum to extend");
        doc
    })
}

/// Adds `sqlite` to every `errorType` enum of the document; answers how many.
fn allow_sqlite_error_type(value: &mut Value) -> usize {
    let mut n = 0;
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(items)) = map.get_mut("enum") {
                if items.iter().any(|i| i == "mssql") && items.iter().any(|i| i == "haloLink") {
                    items.push(json!("sqlite"));
                    n += 1;
                }
            }
            for v in map.values_mut() {
                n += allow_sqlite_error_type(v);
            }
        }
        Value::Array(items) => {
            for v in items {
                n += allow_sqlite_error_type(v);
            }
        }
        _ => {}
    }
    n
}

const BASE: &str = "https://halo.example/integrator-openapi.json";

fn registry() -> &'static jsonschema::Registry<'static> {
    static REG: OnceLock<jsonschema::Registry<'static>> = OnceLock::new();
    REG.get_or_init(|| {
        jsonschema::Registry::new()
            .add(BASE, document().clone())
            .unwrap()
            .prepare()
            .unwrap()
    })
}

/// A JSON pointer to `tokens`, as a URI fragment.
fn pointer(tokens: &[&str]) -> String {
    let mut out = String::new();
    for t in tokens {
        out.push('/');
        for c in t.chars() {
            match c {
                '~' => out.push_str("~0"),
                '/' => out.push_str("~1"),
                '{' => out.push_str("%7B"),
                '}' => out.push_str("%7D"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Validates `body` against the schema at `tokens` in the document.
fn validate_at(tokens: &[&str], body: &Value, context: &str) {
    let schema = json!({"$ref": format!("{BASE}#{}", pointer(tokens))});
    let validator = jsonschema::options()
        .with_registry(registry())
        .should_validate_formats(true)
        .should_ignore_unknown_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{context}: no schema at {tokens:?}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{context}: the answer does not fit Halo's schema {tokens:?}:\n{}\n{body:#}",
        errors.join("\n")
    );
}

/// Validates `instance` against `#/components/schemas/{name}` of Halo's document
/// (the async path's tests name the schema of each status).
pub(crate) fn assert_schema(name: &str, instance: &Value) {
    validate_at(
        &["components", "schemas", name],
        instance,
        &format!("schema {name}"),
    );
}

/// Validates against the JSON response of `method path` with `status`.
pub(crate) fn assert_response(method: &str, path: &str, status: u16, instance: &Value) {
    let (method, status) = (method.to_ascii_lowercase(), status.to_string());
    validate_at(
        &response_schema(path, &method, &status),
        instance,
        &format!("{method} {path} {status}"),
    );
}

/// Validates against branch `branch` of the `oneOf` of a JSON response.
pub(crate) fn assert_response_branch(
    method: &str,
    path: &str,
    status: u16,
    branch: usize,
    instance: &Value,
) {
    let (method, status, branch) = (
        method.to_ascii_lowercase(),
        status.to_string(),
        branch.to_string(),
    );
    let mut tokens = response_schema(path, &method, &status);
    tokens.extend(["oneOf", branch.as_str()]);
    validate_at(
        &tokens,
        instance,
        &format!("{method} {path} {status} oneOf/{branch}"),
    );
}

fn response_schema<'a>(path: &'a str, method: &'a str, status: &'a str) -> Vec<&'a str> {
    vec![
        "paths",
        path,
        method,
        "responses",
        status,
        "content",
        "application/json",
        "schema",
    ]
}

/// The document's path and method of an operation.
fn operation(operation_id: &str) -> (String, String) {
    for (path, item) in document()["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["operationId"] == operation_id {
                return (path.clone(), method.clone());
            }
        }
    }
    panic!("{operation_id} is not in Halo's document");
}

/// The contract check of one answer: its status is one the document lists for
/// the operation (or a listed deviation), and its body fits the schema for it.
fn check(operation_id: &str, status: u16, body: &Value) {
    let (path, method) = operation(operation_id);
    let context = format!("{operation_id} answered {status}");
    let responses = &document()["paths"][&path][&method]["responses"];
    let status_text = status.to_string();
    if status >= 400 {
        check_envelope_fields(status, body, &context);
    }
    if responses.get(&status_text).is_none() {
        let deviation = DEVIATIONS
            .iter()
            .any(|(op, s, _)| (*op == operation_id || *op == "*") && *s == status);
        assert!(
            deviation,
            "{context}: Halo's document does not list {status} for {operation_id} and it is \
             not a documented deviation: {body}"
        );
        // An error envelope all the same.
        validate_at(&["components", "schemas", "Error"], body, &context);
        return;
    }
    let base = [
        "paths",
        path.as_str(),
        method.as_str(),
        "responses",
        status_text.as_str(),
        "content",
        "application/json",
        "schema",
    ];
    let schema = &responses[&status_text]["content"]["application/json"]["schema"];
    if schema.get("oneOf").is_some() {
        // Halo's query errors are `oneOf` the envelope (no required fields, so it
        // matches anything) and the failed query: the branch is the body's kind.
        let branch = if body.get("error").is_some() {
            "0"
        } else {
            "1"
        };
        let mut tokens = base.to_vec();
        tokens.extend(["oneOf", branch]);
        validate_at(&tokens, body, &context);
    } else {
        validate_at(&base, body, &context);
    }
}

/// `error-codes.yml`'s general envelope: status, statusText, message, with the
/// status the HTTP status. A failed query has `errorDetails` instead.
fn check_envelope_fields(status: u16, body: &Value, context: &str) {
    if body.get("errorDetails").is_some() {
        assert_eq!(body["status"], "executionFailed", "{context}: {body}");
        for field in ["errorType", "errorCode", "errorMessage"] {
            assert!(
                body["errorDetails"].get(field).is_some(),
                "{context}: errorDetails.{field} missing: {body}"
            );
        }
        return;
    }
    assert_eq!(body["error"]["status"], status, "{context}: {body}");
    assert!(body["error"]["statusText"].is_string(), "{context}: {body}");
    assert!(body["error"]["message"].is_string(), "{context}: {body}");
}

/// Every property of Halo's site schema is present in `site`, but [`SITE_ABSENT`].
fn check_site_complete(site: &Value, context: &str) {
    let schema = &document()["components"]["schemas"]["SiteForIntegrator"]["properties"];
    for property in schema.as_object().unwrap().keys() {
        if SITE_ABSENT.iter().any(|(p, _)| p == property) {
            continue;
        }
        assert!(
            site.get(property).is_some(),
            "{context}: the site lacks `{property}`: {site:#}"
        );
    }
}

fn decode(data: &Value) -> Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn request(
    h: &Harness,
    method: reqwest::Method,
    key: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = h.http.request(method, h.url(path));
    if let Some(key) = key {
        req = req.header(halo_cloud::KEY_HEADER, key);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{path}: every answer of the integrator API is JSON"
    );
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_every_operation_answers_as_halo_documents() {
    use reqwest::Method;
    let mut h = Harness::start_with(RouterConfig {
        execution_limit: std::time::Duration::from_secs(2),
        ..RouterConfig::standard()
    })
    .await;
    // The Link's procedures (its stored procedures): three global, one for the
    // first database only.
    let link = h
        .link_with(
            Environment::Stage,
            &[
                practice("HALO01", "Contract Dental"),
                practice("HALO02", "Other Dental"),
            ],
            |config| {
                let first = config.databases[0].clone();
                for (name, text, database) in [
                    (
                        "GetPatient",
                        "SELECT patient_id, first_name FROM patients WHERE patient_id = @id",
                        None,
                    ),
                    (
                        "TouchPatients",
                        "UPDATE patients SET suburb = suburb WHERE patient_id <= @n",
                        None,
                    ),
                    ("NotGranted", "SELECT count(*) AS n FROM patients", None),
                    (
                        "PracticeName",
                        "SELECT practice_name, count(*) AS total FROM practice_info",
                        Some(first),
                    ),
                ] {
                    config.procedures.push(halo_link::ProcedureConfig {
                        name: name.into(),
                        text: text.into(),
                        database,
                    });
                }
            },
        )
        .await;
    let key = h.integrator(Environment::Stage).await;
    // Writes to one table, so that nonQuery has something to change.
    h.admin(
        Method::PUT,
        &format!("/admin/integrators/{INTEGRATOR}/components"),
        json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": TABLES, "allowWrite": true,
            // `Ghost` is granted but no Link defines it.
            "procedures": ["GetPatient", "TouchPatients", "dbo.PracticeName", "Ghost"]}),
    )
    .await;
    let (crn, halo) = link.sites[0];
    let (other_crn, other_halo) = link.sites[1];
    h.enable_practice(crn).await;
    // Enabled, but no site of it is live anywhere.
    h.enable_practice("NOSITE9".parse().unwrap()).await;
    let get = |path: String| {
        let h = &h;
        let key = key.clone();
        async move { request(h, Method::GET, Some(&key), &path, None).await }
    };

    // The site's clientTimestampUTC is the Link's clock at its last heartbeat: wait
    // for the first one (the Cloud asks for one every 5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = get(format!("/integrator/sites/{halo}")).await;
        assert_eq!(status, 200, "{body}");
        if body["clientTimestampUTC"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat within 15 s: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // ---- getSites ----------------------------------------------------------------
    let sites_path = |crn: &str, name: &str| {
        format!("/integrator/sites?practiceManagementSiteId={crn}&practiceManagementName={name}")
    };
    let (status, body) = get(sites_path(crn.as_str(), "D4w")).await;
    check("getSites", status, &body);
    assert_eq!(status, 200, "{body}");
    let sites = body["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "{body}");
    check_site_complete(&sites[0], "getSites");
    assert_eq!(sites[0]["id"], halo.to_string());
    assert_eq!(sites[0]["name"], "Contract Dental");
    assert_eq!(sites[0]["practiceManagementName"], "D4w");
    assert_eq!(sites[0]["practiceManagementSiteId"], crn.as_str());
    // No live site: an empty list, as Halo answers.
    let (status, body) = get(sites_path("NOSITE9", "D4w")).await;
    check("getSites", status, &body);
    assert_eq!((status, &body), (200, &json!({"sites": []})));
    for (path, want) in [
        // Both parameters are required.
        (
            format!("/integrator/sites?practiceManagementSiteId={crn}"),
            400,
        ),
        (
            "/integrator/sites?practiceManagementName=D4w".to_owned(),
            400,
        ),
        (sites_path("not a crn!", "D4w"), 400),
        (sites_path(crn.as_str(), "Nope"), 400),
        // Not enabled for this integrator.
        (sites_path(other_crn.as_str(), "D4w"), 403),
    ] {
        let (status, body) = get(path.clone()).await;
        check("getSites", status, &body);
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, body) = request(
        &h,
        Method::GET,
        None,
        &sites_path(crn.as_str(), "D4w"),
        None,
    )
    .await;
    check("getSites", status, &body);
    assert_eq!(status, 401, "{body}");

    // ---- getSite -----------------------------------------------------------------
    let (status, body) = get(format!("/integrator/sites/{halo}")).await;
    check("getSite", status, &body);
    assert_eq!(status, 200, "{body}");
    check_site_complete(&body, "getSite");
    assert_eq!(body["availability"], "online");
    // First registered no later than last enriched (both RFC 3339 UTC, so they
    // compare as text).
    let created = body["createdAt"].as_str().unwrap();
    assert!(
        created <= body["enrichedAt"].as_str().unwrap(),
        "createdAt after enrichedAt: {body}"
    );
    assert!(body["heartbeatTimestampUTC"].is_string(), "{body}");
    for (path, want) in [
        ("/integrator/sites/not-a-guid".to_owned(), 400),
        (
            "/integrator/sites/3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_owned(),
            404,
        ),
        // Another practice's site: exactly as unknown.
        (format!("/integrator/sites/{other_halo}"), 404),
    ] {
        let (status, body) = get(path.clone()).await;
        check("getSite", status, &body);
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, body) = request(
        &h,
        Method::GET,
        Some("wrong-key"),
        &format!("/integrator/sites/{halo}"),
        None,
    )
    .await;
    check("getSite", status, &body);
    assert_eq!(status, 401, "{body}");

    // ---- createImmediateQuery before pairing: refused ---------------------------
    let query_path = format!("/integrator/sites/{halo}/queries/immediate");
    let reader = json!({"command": {"text": "SELECT patient_id, first_name FROM patients ORDER BY patient_id LIMIT 2"}});
    let (status, body) = request(
        &h,
        Method::POST,
        Some(&key),
        &query_path,
        Some(reader.clone()),
    )
    .await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 403, "a query needs pairing first: {body}");

    // ---- pair-site and its deprecated alias --------------------------------------
    for op in ["Integrator_PairSite", "pairSite"] {
        let (path, _) = operation(op);
        let pair =
            |crn: &str| format!("{path}?practiceManagementSiteId={crn}&practiceManagementName=D4w");
        for (url, want) in [
            (pair(crn.as_str()), 200),
            (pair("NOSITE9"), 404),
            (pair(other_crn.as_str()), 403),
            (format!("{path}?practiceManagementSiteId={crn}"), 400),
        ] {
            let (status, body) = request(&h, Method::POST, Some(&key), &url, None).await;
            check(op, status, &body);
            assert_eq!(status, want, "{op} {url}: {body}");
            if status == 200 {
                check_site_complete(&body, op);
                assert_eq!(body["id"], halo.to_string());
            }
        }
        let (status, body) = request(&h, Method::POST, None, &pair(crn.as_str()), None).await;
        check(op, status, &body);
        assert_eq!(status, 401, "{body}");
    }

    // ---- createImmediateQuery ----------------------------------------------------
    let post = |body: Value| {
        let h = &h;
        let key = key.clone();
        let path = query_path.clone();
        async move { request(h, Method::POST, Some(&key), &path, Some(body)).await }
    };
    // reader, with executionMode and type left to their defaults.
    let (status, body) = post(reader.clone()).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["maxTimeInQueue"], 30000);
    assert_eq!(body["result"]["rows"], 2);
    assert_eq!(decode(&body["result"]["data"])[0]["patient_id"], 1);
    // scalar: one value.
    let (status, body) = post(json!({"command": {"text": "SELECT count(*) FROM patients", "executionMode": "scalar", "type": "text"}})).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(&body["result"]["data"]), json!(12));
    // nonQuery: rowsAffected.
    let (status, body) = post(json!({"maxTimeInQueue": 5000, "command": {"text": "UPDATE patients SET suburb = suburb WHERE patient_id <= @n", "executionMode": "nonQuery", "parameters": [{"name": "@n", "type": "Int", "value": "3", "direction": "input"}]}})).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["rowsAffected"], 3, "{body}");
    assert_eq!(body["maxTimeInQueue"], 5000);
    // ---- type: storedProcedure: the Link's named procedures ----------------------
    let call = |name: &str, mode: &str, parameters: Value| {
        json!({"command": {"type": "storedProcedure", "text": name, "executionMode": mode,
            "parameters": parameters}})
    };
    let (status, body) = post(call(
        "GetPatient",
        "reader",
        json!([{"name": "@id", "type": "Int", "value": "2"},
               {"name": "@first_name", "direction": "output", "type": "NVarChar", "size": 50},
               {"name": "@status", "direction": "returnValue", "type": "Int"}]),
    ))
    .await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["rows"], 1, "{body}");
    let row = &decode(&body["result"]["data"])[0];
    assert_eq!(row["patient_id"], 2, "{body}");
    // Output values: the first row's column of the same name, in base64 of its
    // text; the return value: the row count (no column of its name).
    let params = body["result"]["parameters"].as_array().unwrap();
    assert_eq!(params.len(), 2, "{body}");
    assert_eq!(params[0]["name"], "@first_name");
    assert_eq!(params[0]["direction"], "output");
    let b64 = |v: &Value| {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        &b64(&params[0]["value"]),
        row["first_name"].as_str().unwrap()
    );
    assert_eq!(params[1]["direction"], "returnValue");
    assert_eq!(b64(&params[1]["value"]), "1");
    // The procedure grant covers the tables its text reads: practice_info is not
    // a granted table (see the 403 below), yet the procedure reads it; names
    // compare as grants do (`dbo.`, brackets, case).
    let (status, body) = post(call(
        "[dbo].[practicename]",
        "reader",
        json!([{"name": "total", "direction": "returnValue"}]),
    ))
    .await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decode(&body["result"]["data"])[0]["practice_name"],
        "Contract Dental"
    );
    assert_eq!(b64(&body["result"]["parameters"][0]["value"]), "1");
    // nonQuery: rowsAffected, and the return value is that count.
    let (status, body) = post(call(
        "TouchPatients",
        "nonQuery",
        json!([{"name": "@n", "type": "Int", "value": "4"},
               {"direction": "returnValue", "type": "Int"}]),
    ))
    .await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["rowsAffected"], 4, "{body}");
    assert_eq!(b64(&body["result"]["parameters"][0]["value"]), "4");
    // Defined at the Link but not authorised: 403, before the Link is asked.
    let (status, body) = post(call("NotGranted", "scalar", json!([]))).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("procedure not authorised"),
        "{body}"
    );
    // Authorised but unknown to the Link: Halo's failed query, SQLite's "no such"
    // class (code 1).
    let (status, body) = post(call("Ghost", "reader", json!([]))).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["status"], "executionFailed", "{body}");
    assert_eq!(body["errorDetails"]["errorType"], "sqlite", "{body}");
    assert_eq!(body["errorDetails"]["errorCode"], 1, "{body}");
    assert!(
        body["errorDetails"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no such procedure: Ghost"),
        "{body}"
    );
    // Not a procedure name; an output parameter without a name: 400, envelope.
    for bad in [
        call("GetPatient; DROP TABLE patients", "reader", json!([])),
        call("a.b.c", "reader", json!([])),
        call(
            "GetPatient",
            "reader",
            json!([{"direction": "output", "type": "Int"}]),
        ),
    ] {
        let (status, body) = post(bad.clone()).await;
        check("createImmediateQuery", status, &body);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.get("error").is_some(), "{body}");
    }

    // The database fails the command: Halo's ExecutionFailedImmediateQuery.
    let (status, body) =
        post(json!({"command": {"text": "SELECT no_such_column FROM patients"}})).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errorDetails"]["errorType"], "sqlite", "{body}");
    assert_eq!(body["errorDetails"]["errorCode"], 1, "{body}");
    // Malformed SQL, bad bodies, bad parameters: 400 in the envelope.
    for bad in [
        json!({"command": {"text": "SELEC 1"}}),
        json!({"command": {"text": "SELECT 1 AS n /* never closed"}}),
        json!({"command": {"text": "SELECT 1 AS n", "executionMode": "writer"}}),
        json!({"command": {"executionMode": "reader"}}),
        json!({"maxTimeInQueue": 60001, "command": {"text": "SELECT 1 AS n"}}),
        json!({"command": {"text": "SELECT ?1 AS n", "parameters": [{"type": "Int", "value": "x"}]}}),
    ] {
        let (status, body) = post(bad.clone()).await;
        check("createImmediateQuery", status, &body);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // An unauthorised table: 403.
    let (status, body) = post(json!({"command": {"text": "SELECT * FROM practice_info"}})).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 403, "{body}");
    // No key, a wrong key: 401.
    let (status, body) = request(&h, Method::POST, None, &query_path, Some(reader.clone())).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 401, "{body}");
    // Unknown site, another practice's site: 404.
    for site in [
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_owned(),
        other_halo.to_string(),
    ] {
        let path = format!("/integrator/sites/{site}/queries/immediate");
        let (status, body) =
            request(&h, Method::POST, Some(&key), &path, Some(reader.clone())).await;
        check("createImmediateQuery", status, &body);
        assert_eq!(status, 404, "{body}");
    }
    // Over the execution limit: 504. (`maxTimeInQueue: 0`: the deadline is the
    // execution limit alone, not the default 30 s queue budget on top of it.)
    let slow = "SELECT count(*) FROM patients a, patients b, patients c, patients d, patients e, patients f, patients g, patients h";
    let (status, body) =
        post(json!({"maxTimeInQueue": 0, "command": {"text": slow, "executionMode": "scalar"}}))
            .await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 504, "{body}");
    // A wrong method: a documented deviation (405).
    let (status, body) = request(&h, Method::GET, Some(&key), &query_path, None).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 405, "{body}");
    // The Link gone: 503.
    link.handle.kill();
    let (status, body) = post(reader.clone()).await;
    check("createImmediateQuery", status, &body);
    assert_eq!(status, 503, "{body}");

    // Unknown routes answer in the envelope too.
    let (status, body) = request(&h, Method::GET, Some(&key), "/integrator/nope", None).await;
    assert_eq!(status, 404, "{body}");
    check_envelope_fields(status, &body, "unknown route");
    h.cloud.stop().await;
}

#[test]
fn contract_the_checker_refuses_what_halo_does_not_document() {
    // A status Halo does not list, and no deviation: refused.
    let refused = std::panic::catch_unwind(|| {
        check(
            "getSites",
            404,
            &json!({"error": {"status": 404, "statusText": "Not Found", "message": "x"}}),
        );
    });
    assert!(refused.is_err(), "404 is not a getSites status");
    // A mistyped field: refused.
    let refused = std::panic::catch_unwind(|| {
        check("getSite", 200, &json!({"id": "not-a-uuid"}));
    });
    assert!(refused.is_err(), "a site id must be a uuid");
    let refused = std::panic::catch_unwind(|| {
        check(
            "getSites",
            200,
            &json!({"sites": [{"availability": "sometimes"}]}),
        );
    });
    assert!(refused.is_err(), "availability is an enum");
    // A success without the fields Halo requires: refused.
    let refused = std::panic::catch_unwind(|| {
        check(
            "createImmediateQuery",
            200,
            &json!({"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}),
        );
    });
    assert!(refused.is_err(), "a query answer has required fields");
    // An integer errorCode only.
    let refused = std::panic::catch_unwind(|| {
        check(
            "createImmediateQuery",
            400,
            &json!({"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                "integratorId": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                "siteId": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "mode": "immediate",
                "status": "executionFailed", "maxTimeInQueue": 1, "commandSize": 1,
                "requestSize": 1, "createdAt": "2026-01-01T00:00:00Z",
                "updatedAt": "2026-01-01T00:00:00Z",
                "errorDetails": {"errorType": "sqlite", "errorCode": "1", "errorMessage": "x"}}),
        );
    });
    assert!(refused.is_err(), "errorCode is an integer");
    // A site without a property Halo documents: refused.
    let refused = std::panic::catch_unwind(|| check_site_complete(&json!({}), "empty"));
    assert!(refused.is_err());
}
