//! The one-pass `Record` decoder (`src/record_de.rs`) accepts what serde's internally
//! tagged derive accepted, gives the same records, and refuses what it refused: on
//! every record of the frozen v1 fixture and an audit record, with their keys in
//! every rotation, with unknown keys, and on damaged records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use halo_cloud::audit::AuditEntry;
use halo_cloud::{CredentialEvent, Record};
use halo_ids::Timestamp;
use halo_policy::PolicyEvent;
use halo_tenancy::LogEntry;
use serde::Deserialize;

/// The derive the decoder replaced, kept here as the reference.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Derived {
    Tenancy(LogEntry),
    Policy {
        version: u32,
        at: Timestamp,
        event: PolicyEvent,
    },
    Credential {
        version: u32,
        at: Timestamp,
        event: CredentialEvent,
    },
    Audit {
        version: u32,
        at: Timestamp,
        #[serde(default, rename = "coversNext")]
        covers_next: bool,
        entry: AuditEntry,
    },
}

impl From<Derived> for Record {
    fn from(d: Derived) -> Record {
        match d {
            Derived::Tenancy(e) => Record::Tenancy(e),
            Derived::Policy { version, at, event } => Record::Policy { version, at, event },
            Derived::Credential { version, at, event } => Record::Credential { version, at, event },
            Derived::Audit {
                version,
                at,
                covers_next,
                entry,
            } => Record::Audit {
                version,
                at,
                covers_next,
                entry,
            },
        }
    }
}

const RECORDS: &str = include_str!("fixtures/records_v1.jsonl");
const AUDIT: &str = r#"{"kind":"audit","version":1,"at":1800000000000,"coversNext":true,"entry":{"kind":"keyIssued","actor":"bob","reason":"first key","integrator":"acme","environment":"stage","detail":"stage key issued (sha256 c980bcae4f6d)"}}"#;

fn lines() -> Vec<String> {
    RECORDS
        .lines()
        .map(str::to_owned)
        .chain([AUDIT.to_owned()])
        .collect()
}

/// Both decoders on one text: the same record, or both refuse.
fn agree(text: &str) -> Option<Record> {
    let ours = serde_json::from_str::<Record>(text);
    let theirs = serde_json::from_str::<Derived>(text).map(Record::from);
    match (ours, theirs) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decoded differently: {text}");
            Some(a)
        }
        (Err(_), Err(_)) => None,
        (a, b) => panic!("one decoder accepted, one refused: {text}\nours {a:?}\nderive {b:?}"),
    }
}

/// The object's top-level entries rotated by `n` (so `kind` comes anywhere).
fn rotated(text: &str, n: usize) -> String {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
    let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
    let len = entries.len();
    entries.rotate_left(n % len);
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[test]
fn every_fixture_record_decodes_as_the_derive_did_in_any_key_order() {
    let all = lines();
    assert!(all.len() > 8);
    for line in &all {
        let record = agree(line).expect("a fixture record decodes");
        // Round trip through the (derived) serializer.
        let written = serde_json::to_string(&record).unwrap();
        assert_eq!(agree(&written), Some(record.clone()));
        for n in 1..8 {
            let moved = rotated(line, n);
            assert_eq!(agree(&moved).as_ref(), Some(&record), "{moved}");
        }
    }
}

#[test]
fn unknown_and_foreign_keys_are_ignored_as_the_derive_did() {
    for line in lines() {
        let body = line.strip_prefix('{').unwrap();
        for extra in [
            r#""x":1,"#,
            r#""entry":{"no":"matter"},"#,
            r#""event":[1,2],"#,
            r#""coversNext":"not a bool","#,
        ] {
            // Before the kind and after it.
            agree(&format!("{{{extra}{body}"));
            let tail = line.strip_suffix('}').unwrap();
            agree(&format!("{tail},{}}}", extra.trim_end_matches(',')));
        }
    }
}

#[test]
fn damaged_records_are_refused_by_both() {
    let policy = RECORDS
        .lines()
        .find(|l| l.starts_with(r#"{"kind":"policy""#))
        .unwrap();
    let tenancy = RECORDS
        .lines()
        .find(|l| l.starts_with(r#"{"kind":"tenancy""#))
        .unwrap();
    let cases = [
        // Missing or unknown kind, duplicated keys.
        tenancy.replacen(r#""kind":"tenancy","#, "", 1),
        tenancy.replacen(r#""kind":"tenancy""#, r#""kind":"gossip""#, 1),
        tenancy.replacen(
            r#""kind":"tenancy","#,
            r#""kind":"tenancy","kind":"tenancy","#,
            1,
        ),
        tenancy.replacen(r#""at":"#, r#""at":1,"at":"#, 1),
        policy.replacen(r#""version":1,"#, r#""version":1,"version":1,"#, 1),
        // Missing fields: a tenancy record's version is optional, a policy's is not.
        tenancy.replacen(r#""version":1,"#, "", 1),
        policy.replacen(r#""version":1,"#, "", 1),
        AUDIT.replacen(r#""coversNext":true,"#, "", 1),
        AUDIT.replacen(r#""version":1,"#, "", 1),
        policy.replacen(r#""at":"#, r#""when":"#, 1),
        // Wrong types, a body that is not the kind's.
        policy.replacen(r#""at":"#, r#""at":"soon","ignored":"#, 1),
        tenancy.replacen(r#""kind":"tenancy""#, r#""kind":"policy""#, 1),
        AUDIT.replacen(r#""kind":"audit""#, r#""kind":"tenancy""#, 1),
        "[]".to_owned(),
        "{}".to_owned(),
        "null".to_owned(),
    ];
    let mut refused = 0;
    for case in &cases {
        if agree(case).is_none() {
            refused += 1;
        }
        for n in 1..5 {
            if case.starts_with('{') && case.len() > 2 {
                agree(&rotated(case, n));
            }
        }
    }
    // Only the two with an optional field left out decode.
    assert_eq!(refused, cases.len() - 2);
}
