//! The properties every fuzz target checks. Each panics on a violation, which is
//! how both libFuzzer and `cargo test` report it. Only `halo_ids`, `serde` and
//! `serde_json` are used, so the stable test crate can include this file by path.

use std::fmt::{Debug, Display};
use std::str::FromStr;

use halo_ids::{Crn, Environment, HaloGuid, IdError, LinkGuid, PmsId, PmsType};

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

/// A property check over one input.
pub type Check = fn(&[u8]);

/// Every target by name, for the corpus runner.
pub const TARGETS: [(&str, Check); 5] = [
    ("fuzz_guid", guid),
    ("fuzz_crn", crn),
    ("fuzz_pms", pms),
    ("fuzz_environment", environment),
    ("fuzz_site_descriptor", site_descriptor),
];
