//! Unit and property tests of the identifier types.

use proptest::prelude::*;

use crate::{Crn, Environment, Field, HaloGuid, IdError, LinkGuid, PmsId, PmsType, Rule};

const GUID: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

fn err<T: std::str::FromStr<Err = IdError> + std::fmt::Debug>(input: &str) -> IdError {
    input.parse::<T>().expect_err("input should be rejected")
}

#[test]
fn guid_accepts_every_documented_form() {
    let canonical: HaloGuid = GUID.parse().unwrap();
    for form in [
        "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
        "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
        "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
        "3f2504e04f8911d39a0c0305e82c3301",
        "  \t3f2504e0-4f89-11d3-9a0c-0305e82c3301\r\n",
    ] {
        assert_eq!(form.parse::<HaloGuid>().unwrap(), canonical, "{form:?}");
    }
    assert_eq!(canonical.to_string(), GUID);
}

#[test]
fn guid_rejects_bad_shapes_with_typed_rules() {
    let check = |input: &str, rule: Rule| {
        let e = err::<LinkGuid>(input);
        assert_eq!((e.field(), e.rule()), (Field::LinkGuid, rule), "{input:?}");
    };
    check("", Rule::Empty);
    check("   ", Rule::Empty);
    check("00000000-0000-0000-0000-000000000000", Rule::NilGuid);
    check("{00000000000000000000000000000000}", Rule::GuidShape);
    check("{3f2504e0-4f89-11d3-9a0c-0305e82c3301", Rule::GuidShape);
    check("3f2504e0-4f89-11d3-9a0c-0305e82c330", Rule::GuidShape);
    check(
        "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        Rule::GuidShape,
    );
    check("3f2504e0-4f89-11d3-9a0c-0305e82c330g", Rule::GuidShape);
    check("3f2504e0 4f89 11d3 9a0c 0305e82c3301", Rule::GuidShape);
    check("3f2504e04f89-11d3-9a0c-0305e82c3301-", Rule::GuidShape);
}

#[test]
fn link_and_halo_guid_errors_name_their_own_field() {
    assert_eq!(err::<HaloGuid>("nope").field(), Field::HaloGuid);
    assert_eq!(err::<LinkGuid>("nope").field(), Field::LinkGuid);
    assert_eq!(HaloGuid::from_u128(0).unwrap_err().rule(), Rule::NilGuid);
}

#[test]
fn error_message_names_field_rule_and_escaped_excerpt() {
    let e = err::<Crn>("AB-12\n");
    assert_eq!(
        e.to_string(),
        "invalid crn: must hold only ascii letters and digits (input \"AB-12\\n\")"
    );
    let long = format!("{}{}", "Z".repeat(30), "!".repeat(1000));
    let msg = err::<Crn>(&long).to_string();
    assert!(msg.len() < 200, "message carries the whole input: {msg}");
    assert!(err::<Crn>(&long).excerpt().chars().count() <= IdError::EXCERPT_MAX);
}

#[test]
fn crn_rules() {
    assert_eq!(" ab12cd ".parse::<Crn>().unwrap().as_str(), "AB12CD");
    assert_eq!("a".repeat(20).parse::<Crn>().unwrap().as_str().len(), 20);
    let check = |input: &str, rule: Rule| {
        assert_eq!(err::<Crn>(input).rule(), rule, "{input:?}");
    };
    check("", Rule::Empty);
    check(" \t ", Rule::Empty);
    check(&"a".repeat(21), Rule::CrnTooLong);
    check("AB 12", Rule::CrnCharacter);
    check("AB-12", Rule::CrnCharacter);
    check("AB\u{0}12", Rule::CrnCharacter);
    check("ÄB12", Rule::CrnCharacter);
    check("AB12\u{a0}", Rule::CrnCharacter);
}

#[test]
fn fake_crn_is_first_eight_characters_of_the_halo_guid() {
    let halo: HaloGuid = GUID.parse().unwrap();
    let fake = halo.fake_crn();
    assert_eq!(fake.as_str(), "3F2504E0");
    assert!(fake.is_fake_for(&halo));
    let other = HaloGuid::from_u128(7).unwrap();
    assert!(!fake.is_fake_for(&other));
    assert_eq!(other.fake_crn().as_str(), "00000000");
}

#[test]
fn pms_type_accepts_api_and_query_names() {
    for (input, want) in [
        ("D4w", PmsType::D4w),
        ("d4w", PmsType::D4w),
        ("BestPractice", PmsType::BestPractice),
        ("Best Practice", PmsType::BestPractice),
        (" best practice ", PmsType::BestPractice),
        ("ZEDMED", PmsType::Zedmed),
    ] {
        assert_eq!(input.parse::<PmsType>().unwrap(), want, "{input:?}");
    }
    assert_eq!(
        err::<PmsType>("Best  Practice").rule(),
        Rule::UnknownPmsType
    );
    assert_eq!(err::<PmsType>("").rule(), Rule::Empty);
    assert_eq!(PmsType::BestPractice.to_string(), "BestPractice");
    assert_eq!(PmsType::BestPractice.query_name(), "Best Practice");
}

#[test]
fn pms_id_parses_type_and_site() {
    let id: PmsId = "best practice:ab12".parse().unwrap();
    assert_eq!(id.pms_type(), PmsType::BestPractice);
    assert_eq!(id.site_id().as_str(), "AB12");
    assert_eq!(id.to_string(), "BestPractice:AB12");
    let e = err::<PmsId>("D4wAB12");
    assert_eq!((e.field(), e.rule()), (Field::PmsId, Rule::PmsIdShape));
    let e = err::<PmsId>("D4w:AB 12");
    assert_eq!((e.field(), e.rule()), (Field::PmsId, Rule::CrnCharacter));
    assert_eq!(err::<PmsId>("Dentrix:1").rule(), Rule::UnknownPmsType);
}

#[test]
fn environment_names() {
    for (input, want) in [
        ("stage", Environment::Stage),
        ("Staging", Environment::Stage),
        (" STAGE ", Environment::Stage),
        ("Production", Environment::Production),
    ] {
        assert_eq!(input.parse::<Environment>().unwrap(), want, "{input:?}");
    }
    assert_eq!(err::<Environment>("prod").rule(), Rule::UnknownEnvironment);
    assert_eq!(Environment::Production.to_string(), "production");
}

#[test]
fn serde_uses_canonical_text_and_validates() {
    let halo: HaloGuid = GUID.parse().unwrap();
    assert_eq!(serde_json::to_string(&halo).unwrap(), format!("\"{GUID}\""));
    let braced = format!("\"{{{}}}\"", GUID.to_uppercase());
    assert_eq!(serde_json::from_str::<HaloGuid>(&braced).unwrap(), halo);
    assert!(serde_json::from_str::<HaloGuid>("\"00000000000000000000000000000000\"").is_err());
    assert!(serde_json::from_str::<Crn>("\"a b\"").is_err());
    assert!(serde_json::from_str::<Crn>("12").is_err());
    let id: PmsId = serde_json::from_str("\"D4w:abc\"").unwrap();
    assert_eq!(serde_json::to_string(&id).unwrap(), "\"D4w:ABC\"");
    let env: Environment = serde_json::from_str("\"STAGING\"").unwrap();
    assert_eq!(serde_json::to_string(&env).unwrap(), "\"stage\"");
    let msg = serde_json::from_str::<Crn>("\"a-b\"")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("invalid crn"), "{msg}");
}

#[test]
fn crn_orders_and_hashes_by_text() {
    let a: Crn = "AB".parse().unwrap();
    let b: Crn = "ab".parse().unwrap();
    let c: Crn = "ABC".parse().unwrap();
    let d: Crn = "B".parse().unwrap();
    assert_eq!(a, b);
    assert!(a < c && c < d, "lexicographic, not by length");
    let set: std::collections::HashSet<Crn> = [a, b, c].into_iter().collect();
    assert_eq!(set.len(), 2);
}

fn crn_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,20}"
}

fn pms_type() -> impl Strategy<Value = PmsType> {
    prop::sample::select(PmsType::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn guid_round_trips(v in 1u128..) {
        let halo = HaloGuid::from_u128(v).unwrap();
        let text = halo.to_string();
        prop_assert_eq!(text.parse::<HaloGuid>().unwrap(), halo);
        let link = LinkGuid::from_u128(v).unwrap();
        prop_assert_eq!(link.to_string().parse::<LinkGuid>().unwrap(), link);
    }

    #[test]
    fn guid_variants_compare_equal(v in 1u128.., upper in any::<bool>(), braced in any::<bool>(),
                                   simple in any::<bool>(), pad in "[ \t\r\n]{0,3}") {
        let uuid = uuid::Uuid::from_u128(v);
        let mut text = if simple { uuid.simple().to_string() } else { uuid.hyphenated().to_string() };
        if upper { text = text.to_uppercase(); }
        if braced && !simple { text = format!("{{{text}}}"); }
        let text = format!("{pad}{text}{pad}");
        let parsed: HaloGuid = text.parse().unwrap();
        prop_assert_eq!(parsed, HaloGuid::from_u128(v).unwrap());
        // display(parse(s)) is canonical.
        prop_assert_eq!(parsed.to_string(), uuid.hyphenated().to_string());
    }

    #[test]
    fn crn_round_trips_and_is_canonical(s in crn_text(), pad in "[ \t]{0,2}") {
        let crn: Crn = format!("{pad}{s}{pad}").parse().unwrap();
        prop_assert_eq!(crn.as_str(), s.to_ascii_uppercase());
        prop_assert_eq!(crn.to_string().parse::<Crn>().unwrap(), crn);
        let lower: Crn = s.to_ascii_lowercase().parse().unwrap();
        prop_assert_eq!(lower, crn);
    }

    #[test]
    fn pms_id_round_trips(t in pms_type(), s in crn_text()) {
        let id = PmsId::new(t, s.parse().unwrap());
        prop_assert_eq!(id.to_string().parse::<PmsId>().unwrap(), id);
        let query = format!("{}:{}", t.query_name().to_lowercase(), s);
        prop_assert_eq!(query.parse::<PmsId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<PmsId>(&json).unwrap(), id);
    }

    #[test]
    fn arbitrary_strings_never_panic_and_accepted_ones_are_canonical(s in any::<String>()) {
        check_all(&s)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(s) = std::str::from_utf8(&bytes) {
            check_all(s)?;
        }
    }
}

/// Parses `s` as every type; anything accepted must display canonically and re-parse
/// to the same value; anything rejected must carry a short excerpt.
fn check_all(s: &str) -> Result<(), TestCaseError> {
    fn one<T>(s: &str) -> Result<(), TestCaseError>
    where
        T: std::str::FromStr<Err = IdError> + std::fmt::Display + PartialEq + std::fmt::Debug,
    {
        match s.parse::<T>() {
            Ok(v) => {
                let text = v.to_string();
                prop_assert_eq!(text.parse::<T>().unwrap(), v);
                prop_assert_eq!(text.parse::<T>().unwrap().to_string(), text);
            }
            Err(e) => prop_assert!(e.excerpt().chars().count() <= IdError::EXCERPT_MAX),
        }
        Ok(())
    }
    one::<LinkGuid>(s)?;
    one::<HaloGuid>(s)?;
    one::<Crn>(s)?;
    one::<PmsType>(s)?;
    one::<PmsId>(s)?;
    one::<Environment>(s)
}
