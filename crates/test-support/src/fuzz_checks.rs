//! The properties every fuzz target checks. Each panics on a violation, which is
//! how both libFuzzer and `cargo test` report it: the targets in `fuzz/fuzz_targets`
//! call these under libFuzzer (nightly), and `tests/fuzz_corpus.rs` runs them over the
//! committed seed corpus (`fuzz/corpus/<target>/`) on stable.
//!
//! Targets: the identifier parsers (`halo-ids`) and the two parsers fed from outside
//! the process: SQL commands from integrators ([`sql`], `halo_policy::extract_components`)
//! and WebSocket frames between Cloud and Link ([`protocol`], `halo_protocol::decode`).

use std::fmt::{Debug, Display};
use std::str::FromStr;

use halo_ids::{Crn, Environment, HaloGuid, IdError, LinkGuid, PmsId, PmsType};
use halo_policy::{Components, PolicyError, StatementKind, extract_components};
use halo_protocol::{CloudToLink, LinkToCloud, Message, decode, encode};

/// A site as an integrator or a Link describes it in JSON, built from the id types.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteDescriptor {
    /// The Link serving the database.
    pub link_guid: LinkGuid,
    /// The database.
    pub halo_guid: HaloGuid,
    /// Stage or Production.
    pub environment: Environment,
    /// PMS type and parent CRN.
    pub pms_id: PmsId,
    /// The branch (local) CRNs.
    pub branch_crns: Vec<Crn>,
    /// Free text, the secondary identifier.
    pub practice_name: String,
}

/// Accepted values re-parse to themselves from their canonical text, which is a
/// fixed point; rejected ones carry a short excerpt.
fn round_trip<T>(s: &str) -> Option<T>
where
    T: FromStr<Err = IdError> + Display + PartialEq + Debug,
{
    match s.parse::<T>() {
        Ok(v) => {
            let text = v.to_string();
            let again: T = text.parse().expect("canonical text re-parses");
            assert_eq!(again, v, "parse(display(x)) == x for {s:?}");
            assert_eq!(again.to_string(), text, "display is canonical for {s:?}");
            Some(v)
        }
        Err(e) => {
            assert!(e.excerpt().chars().count() <= IdError::EXCERPT_MAX);
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// GUID parsing: round trip, and the fake CRN of any Halo GUID is a valid CRN.
pub fn guid(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let link = round_trip::<LinkGuid>(s);
    let halo = round_trip::<HaloGuid>(s);
    assert_eq!(
        link.is_some(),
        halo.is_some(),
        "both guid types accept the same text"
    );
    if let (Some(link), Some(halo)) = (link, halo) {
        assert_eq!(link.as_bytes(), halo.as_bytes());
        let fake = halo.fake_crn();
        assert_eq!(fake.as_str().len(), Crn::FAKE_LEN);
        assert_eq!(fake.as_str().parse::<Crn>().ok(), Some(fake));
    }
}

/// CRN parsing, checked against a simple reference model of the rule.
pub fn crn(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let trimmed = s.trim_ascii();
    let model_accepts = (1..=Crn::MAX_LEN).contains(&trimmed.len())
        && trimmed.bytes().all(|b| b.is_ascii_alphanumeric());
    let parsed = round_trip::<Crn>(s);
    assert_eq!(
        parsed.is_some(),
        model_accepts,
        "crn model disagrees on {s:?}"
    );
    if let Some(crn) = parsed {
        assert_eq!(crn.as_str(), trimmed.to_ascii_uppercase());
    }
}

/// PMS type and PMS ID parsing.
pub fn pms(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Some(t) = round_trip::<PmsType>(s) {
        assert_eq!(t.query_name().parse::<PmsType>().ok(), Some(t));
    }
    if let Some(id) = round_trip::<PmsId>(s) {
        let json = serde_json::to_string(&id).expect("a pms id serialises");
        assert_eq!(serde_json::from_str::<PmsId>(&json).ok(), Some(id));
    }
}

/// Environment parsing, checked against the list of accepted names.
pub fn environment(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let t = s.trim_ascii().to_ascii_lowercase();
    let model = matches!(t.as_str(), "stage" | "staging" | "production");
    assert_eq!(round_trip::<Environment>(s).is_some(), model, "{s:?}");
}

/// JSON site descriptors: whatever deserialises serialises to a canonical form that
/// deserialises to the same value.
pub fn site_descriptor(data: &[u8]) {
    let Ok(site) = serde_json::from_slice::<SiteDescriptor>(data) else {
        return;
    };
    let json = serde_json::to_string(&site).expect("a descriptor serialises");
    let again: SiteDescriptor = serde_json::from_str(&json).expect("canonical json re-parses");
    assert_eq!(again, site);
    assert_eq!(serde_json::to_string(&again).expect("serialises"), json);
}

/// The longest error message a parser of outside input may produce: errors quote at
/// most a short excerpt of the input, never the whole of it.
pub const MAX_ERROR_CHARS: usize = 300;

/// A comment appended to every command: it must stay a comment (never tables, never
/// a second statement), and appending it must not change whether a command parses.
pub const TRAILING_COMMENT: &str = " -- ; DROP TABLE patients";

/// The components of a command, whole, for comparison.
fn summary(c: &Components) -> (Vec<String>, Vec<String>, Vec<String>, [bool; 5], usize) {
    let kinds = [
        StatementKind::Read,
        StatementKind::Write,
        StatementKind::Call,
        StatementKind::Ddl,
        StatementKind::Other,
    ]
    .map(|k| c.has(k));
    (
        c.tables().map(str::to_owned).collect(),
        c.procedures().map(str::to_owned).collect(),
        c.catalogues().map(str::to_owned).collect(),
        kinds,
        c.statement_count(),
    )
}

/// Names as `extract_components` promises them: sorted, unique, not blank, and
/// already lowercase (so they compare equal to grants whatever the command's case).
fn check_names<'a>(what: &str, names: impl Iterator<Item = &'a str>, sql: &str) {
    let names: Vec<&str> = names.collect();
    for name in &names {
        assert!(!name.trim().is_empty(), "blank {what} name from {sql:?}");
        assert_eq!(
            name.to_lowercase(),
            *name,
            "{what} name {name:?} not lowercase, from {sql:?}"
        );
    }
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "{what} names not sorted and unique: {names:?} from {sql:?}"
    );
}

/// SQL component extraction (integrator commands): never panics or overflows the
/// stack; is deterministic; a refusal is a SQL error with a short message; a result
/// has at least one statement and one kind, consistent `writes`, and names that are
/// normalised (see [`check_names`]); a trailing line comment changes nothing.
pub fn sql(data: &[u8]) {
    let Some(sql) = text(data) else { return };
    let first = extract_components(sql);
    let again = extract_components(sql);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "not deterministic on {sql:?}"),
        (Err(a), Err(b)) => assert_eq!(a, b, "not deterministic on {sql:?}"),
        _ => panic!("not deterministic on {sql:?}"),
    }
    let commented = extract_components(&format!("{sql}{TRAILING_COMMENT}"));
    match (&first, &commented) {
        (Ok(a), Ok(b)) => assert_eq!(
            summary(a),
            summary(b),
            "a trailing comment changed the components of {sql:?}"
        ),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("a trailing comment changed {a:?} into {b:?} for {sql:?}"),
    }
    match first {
        Ok(c) => {
            assert!(c.statement_count() >= 1, "no statement in {sql:?}");
            let (_, _, _, kinds, _) = summary(&c);
            assert!(kinds.contains(&true), "no statement kind for {sql:?}");
            assert_eq!(
                c.writes(),
                c.has(StatementKind::Write) || c.has(StatementKind::Ddl)
            );
            check_names("table", c.tables(), sql);
            check_names("procedure", c.procedures(), sql);
            check_names("catalogue", c.catalogues(), sql);
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    PolicyError::EmptySql
                        | PolicyError::SqlParse(_)
                        | PolicyError::SqlUnsupported(_)
                        | PolicyError::SqlAmbiguous(_)
                ),
                "unexpected error kind {e:?} for {sql:?}"
            );
            assert!(e.to_string().chars().count() <= MAX_ERROR_CHARS);
        }
    }
}

/// One direction of the wire format: a frame that decodes re-encodes to a canonical
/// frame that decodes to the same message and encodes to itself again.
fn wire<M: Message + PartialEq + Debug>(frame: &str) {
    match decode::<M>(frame) {
        Ok(msg) => {
            let canonical = encode(&msg).expect("a decoded message encodes");
            let again: M = decode(&canonical).expect("a canonical frame decodes");
            assert_eq!(again, msg, "decode(encode(m)) == m for {frame:?}");
            assert_eq!(
                encode(&again).expect("encodes"),
                canonical,
                "encoding is canonical for {frame:?}"
            );
        }
        Err(e) => {
            assert!(
                e.to_string().chars().count() <= MAX_ERROR_CHARS,
                "long error for {frame:?}: {e}"
            );
        }
    }
}

/// The Cloud <-> Link wire format: any text frame, decoded as either direction,
/// never panics, errors stay short, what decodes round-trips through `encode`, and
/// the fast paths decode exactly what the general decoder does.
pub fn protocol(data: &[u8]) {
    let Some(frame) = text(data) else { return };
    wire::<LinkToCloud>(frame);
    wire::<CloudToLink>(frame);
    assert_eq!(
        halo_protocol::decode_link_frame(frame).ok(),
        decode::<LinkToCloud>(frame).ok(),
        "the Cloud's fast path disagrees on {frame:?}"
    );
    assert_eq!(
        halo_protocol::decode_cloud_frame(frame).ok(),
        decode::<CloudToLink>(frame).ok(),
        "the Link's fast path disagrees on {frame:?}"
    );
}

/// A property check over one input.
pub type Check = fn(&[u8]);

/// Every target by name, for the corpus runner.
pub const TARGETS: [(&str, Check); 7] = [
    ("fuzz_guid", guid),
    ("fuzz_crn", crn),
    ("fuzz_pms", pms),
    ("fuzz_environment", environment),
    ("fuzz_site_descriptor", site_descriptor),
    ("fuzz_sql", sql),
    ("fuzz_protocol", protocol),
];
