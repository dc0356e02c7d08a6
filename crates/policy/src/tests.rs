//! Unit tests of the policy crate.

use std::net::IpAddr;

use halo_ids::{Environment, HaloGuid, PmsId, PmsType, Timestamp};

use crate::limits::{Bucket, MonthlyQuota, month_index};
use crate::*;

const STAGE_KEY: &str = "stage-key";
const PROD_KEY: &str = "prod-key";

fn id(s: &str) -> IntegratorId {
    s.parse().unwrap()
}

fn pms() -> PmsId {
    "D4w:ABC123".parse().unwrap()
}

fn other_pms() -> PmsId {
    "D4w:ZZZ999".parse().unwrap()
}

fn site(env: Environment, n: u128, pms_id: PmsId) -> SiteView {
    SiteView {
        halo_guid: HaloGuid::from_u128(n).unwrap(),
        environment: env,
        pms_id,
        authoritative: true,
        active: true,
    }
}

fn base_events() -> Vec<PolicyEvent> {
    let acme = id("acme");
    vec![
        PolicyEvent::IntegratorEnabled {
            integrator: acme.clone(),
            pms_type: PmsType::D4w,
        },
        PolicyEvent::ComponentsAuthorised {
            integrator: acme.clone(),
            pms_type: PmsType::D4w,
            catalogues: vec!["D4W".into()],
            tables: vec!["Patients".into()],
            procedures: vec!["GetPatient".into()],
            allow_write: false,
        },
        PolicyEvent::PracticeEnabled {
            integrator: acme.clone(),
            pms_id: pms(),
        },
        PolicyEvent::PracticePaired {
            integrator: acme.clone(),
            pms_id: pms(),
            environment: Environment::Stage,
        },
        PolicyEvent::PracticePaired {
            integrator: acme.clone(),
            pms_id: pms(),
            environment: Environment::Production,
        },
        PolicyEvent::KeyIssued {
            integrator: acme.clone(),
            environment: Environment::Stage,
            key_hash: KeyHash::of(STAGE_KEY),
        },
        PolicyEvent::KeyIssued {
            integrator: acme,
            environment: Environment::Production,
            key_hash: KeyHash::of(PROD_KEY),
        },
    ]
}

fn grants_with(extra: &[PolicyEvent]) -> Grants {
    let mut g = Grants::default();
    for e in base_events().iter().chain(extra) {
        g.apply(e).unwrap();
    }
    g
}

struct Call<'a> {
    key: &'a str,
    sql: &'a str,
    mode: ExecutionMode,
    catalogue: Option<&'a str>,
    ip: Option<IpAddr>,
}

impl Default for Call<'_> {
    fn default() -> Self {
        Self {
            key: STAGE_KEY,
            sql: "SELECT * FROM patients",
            mode: ExecutionMode::Reader,
            catalogue: None,
            ip: None,
        }
    }
}

fn run(policy: &Policy, call: Call<'_>, site: Option<&SiteView>, halo: HaloGuid) -> Decision {
    let components = extract_components(call.sql).unwrap();
    let req = Request {
        key: call.key,
        halo_guid: halo,
        mode: call.mode,
        catalogue: call.catalogue,
        components: &components,
        caller_ip: call.ip,
        now: Timestamp::from_millis(0),
    };
    evaluate(policy, &req, site)
}

fn deny_of(d: Decision) -> Deny {
    match d {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected a deny, got {a:?}"),
    }
}

/// Asserts the code of a denial (its HTTP status is the Cloud's table).
fn check_deny(d: Decision, code: DenyCode) {
    let d = deny_of(d);
    assert_eq!(d.code(), code, "{d}");
}

fn stage_site() -> SiteView {
    site(Environment::Stage, 1, pms())
}

fn eval_stage(policy: &Policy, call: Call<'_>) -> Decision {
    let s = stage_site();
    run(policy, call, Some(&s), s.halo_guid)
}

// --- identifiers -----------------------------------------------------------------

#[test]
fn integrator_id_is_a_lowercase_slug() {
    assert_eq!(id("  Acme-Dental ").as_str(), "acme-dental");
    for bad in [
        "",
        " ",
        "-acme",
        "acme-",
        "acme dental",
        "acmé",
        "a_b",
        &"x".repeat(65),
    ] {
        assert!(bad.parse::<IntegratorId>().is_err(), "{bad:?}");
    }
    assert!("x".repeat(64).parse::<IntegratorId>().is_ok());
    let json = serde_json::to_string(&id("acme")).unwrap();
    assert_eq!(json, "\"acme\"");
    assert!(serde_json::from_str::<IntegratorId>("\"not valid\"").is_err());
}

#[test]
fn key_hash_is_sha256_and_round_trips() {
    let h = KeyHash::of("abc");
    assert_eq!(
        h.to_string(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(h.to_string().parse::<KeyHash>().unwrap(), h);
    assert_eq!(h.to_string().to_uppercase().parse::<KeyHash>().unwrap(), h);
    assert_ne!(KeyHash::of("abc "), h);
    assert!("abc".parse::<KeyHash>().is_err());
    assert!("zz".repeat(32).parse::<KeyHash>().is_err());
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(serde_json::from_str::<KeyHash>(&json).unwrap(), h);
    assert!(!format!("{h:?}").contains(&h.to_string()));
}

#[test]
fn key_hash_equality_sees_every_byte() {
    let base = KeyHash::of("k");
    for i in 0..32 {
        let mut bytes = *base.as_bytes();
        bytes[i] ^= 0x01;
        assert_ne!(KeyHash::from_bytes(bytes), base, "byte {i}");
    }
    assert_eq!(KeyHash::from_bytes(*base.as_bytes()), base);
}

// --- events ----------------------------------------------------------------------

/// Version-1 event JSON, frozen: these must keep loading.
const V1_EVENTS: &[&str] = &[
    r#"{"event":"integratorEnabled","integrator":"acme","pmsType":"D4w"}"#,
    r#"{"event":"integratorDisabled","integrator":"acme","pmsType":"BestPractice"}"#,
    r#"{"event":"componentsAuthorised","integrator":"acme","pmsType":"D4w","catalogues":["D4W"],"tables":["dbo.Patients"],"procedures":["GetPatient"],"allowWrite":false}"#,
    r#"{"event":"practiceEnabled","integrator":"acme","pmsId":"D4w:ABC123"}"#,
    r#"{"event":"practiceDisabled","integrator":"acme","pmsId":"D4w:ABC123"}"#,
    r#"{"event":"sitePaired","integrator":"acme","pmsId":"D4w:ABC123"}"#,
    r#"{"event":"keyIssued","integrator":"acme","environment":"production","keyHash":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}"#,
    r#"{"event":"keyRevoked","integrator":"acme","keyHash":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}"#,
    r#"{"event":"quotaSet","integrator":"acme","perMonth":1000}"#,
    r#"{"event":"quotaSet","integrator":"acme","pmsId":"D4w:ABC123","perMonth":null}"#,
    r#"{"event":"rateLimitSet","integrator":"acme","limit":{"perSecond":10,"burst":20}}"#,
    r#"{"event":"ipAllowlistSet","integrator":"acme","cidrs":["203.0.113.0/24"]}"#,
];

#[test]
fn version_one_events_still_load_and_round_trip() {
    assert_eq!(EVENT_FORMAT_VERSION, 1);
    for json in V1_EVENTS {
        let e: PolicyEvent =
            serde_json::from_str(json).unwrap_or_else(|err| panic!("{json}: {err}"));
        let again: PolicyEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(again, e);
        assert_eq!(e.integrator().as_str(), "acme");
    }
    let e: PolicyEvent = serde_json::from_str(V1_EVENTS[8]).unwrap();
    assert_eq!(
        e,
        PolicyEvent::QuotaSet {
            integrator: id("acme"),
            pms_id: None,
            per_month: Some(1000)
        }
    );
}

#[test]
fn event_json_rejects_invalid_ids() {
    let bad = r#"{"event":"practiceEnabled","integrator":"acme","pmsId":"D4w:AB 123"}"#;
    assert!(serde_json::from_str::<PolicyEvent>(bad).is_err());
    let bad = r#"{"event":"integratorEnabled","integrator":"Not Valid","pmsType":"D4w"}"#;
    assert!(serde_json::from_str::<PolicyEvent>(bad).is_err());
}

// --- grants ----------------------------------------------------------------------

#[test]
fn replaying_events_gives_equal_grants() {
    let events = base_events();
    let mut a = Grants::default();
    let mut b = Grants::default();
    for e in &events {
        a.apply(e).unwrap();
    }
    for json in events.iter().map(|e| serde_json::to_string(e).unwrap()) {
        b.apply(&serde_json::from_str(&json).unwrap()).unwrap();
    }
    assert_eq!(a, b);
    assert_eq!(a.integrator_count(), 1);
}

#[test]
fn refused_events_leave_grants_unchanged() {
    let g = grants_with(&[]);
    let refused = [
        PolicyEvent::KeyIssued {
            integrator: id("other"),
            environment: Environment::Stage,
            key_hash: KeyHash::of(STAGE_KEY),
        },
        PolicyEvent::KeyRevoked {
            integrator: id("other"),
            key_hash: KeyHash::of(STAGE_KEY),
        },
        PolicyEvent::QuotaSet {
            integrator: id("acme"),
            pms_id: None,
            per_month: Some(0),
        },
        PolicyEvent::RateLimitSet {
            integrator: id("acme"),
            pms_id: None,
            limit: Some(RateLimit {
                per_second: 0,
                burst: 1,
            }),
        },
        PolicyEvent::IpAllowlistSet {
            integrator: id("acme"),
            cidrs: vec!["10.0.0.0/8".into(), "not-an-ip".into()],
        },
        PolicyEvent::ComponentsAuthorised {
            integrator: id("acme"),
            pms_type: PmsType::D4w,
            catalogues: vec![],
            tables: vec!["ok".into(), "a.b.c".into()],
            procedures: vec![],
            allow_write: true,
        },
    ];
    let expected_errors = [
        PolicyError::KeyInUse,
        PolicyError::KeyNotIssued,
        PolicyError::InvalidLimit("quota must be at least 1"),
        PolicyError::InvalidLimit("rate and burst must be at least 1"),
        PolicyError::InvalidCidr("not-an-ip".into()),
        PolicyError::InvalidName("a.b.c".into()),
    ];
    for (e, want) in refused.iter().zip(expected_errors) {
        let mut h = g.clone();
        assert_eq!(h.apply(e), Err(want));
        assert_eq!(h, g, "{e:?} changed the grants");
    }
}

#[test]
fn grant_names_are_normalised_like_commands() {
    let g = grants_with(&[PolicyEvent::ComponentsAuthorised {
        integrator: id("acme"),
        pms_type: PmsType::D4w,
        catalogues: vec!["[D4W]".into()],
        tables: vec!["[dbo].[PATIENTS]".into(), "Audit.[Log]".into()],
        procedures: vec![],
        allow_write: false,
    }]);
    let p = g.compile();
    for sql in [
        "SELECT * FROM patients",
        "SELECT * FROM d4w.dbo.Patients JOIN audit.log l ON 1=1",
    ] {
        assert!(
            matches!(
                eval_stage(
                    &p,
                    Call {
                        sql,
                        ..Call::default()
                    }
                ),
                Decision::Allow(_)
            ),
            "{sql}"
        );
    }
}

#[test]
fn revoked_key_and_disabled_practice_deny_again() {
    let p = grants_with(&[PolicyEvent::KeyRevoked {
        integrator: id("acme"),
        key_hash: KeyHash::of(STAGE_KEY),
    }])
    .compile();
    check_deny(eval_stage(&p, Call::default()), DenyCode::UnknownKey);

    let p = grants_with(&[
        PolicyEvent::PracticeDisabled {
            integrator: id("acme"),
            pms_id: pms(),
        },
        // Re-enabling does not restore the old pairing.
        PolicyEvent::PracticeEnabled {
            integrator: id("acme"),
            pms_id: pms(),
        },
    ])
    .compile();
    check_deny(eval_stage(&p, Call::default()), DenyCode::NotPaired);
}

#[test]
fn pairing_before_enabling_grants_nothing() {
    let mut g = Grants::default();
    let acme = id("acme");
    g.apply(&PolicyEvent::PracticePaired {
        integrator: acme.clone(),
        pms_id: pms(),
        environment: Environment::Stage,
    })
    .unwrap();
    g.apply(&PolicyEvent::PracticeEnabled {
        integrator: acme,
        pms_id: pms(),
    })
    .unwrap();
    let paired = g.integrators.values().next().unwrap().practices[&pms()].paired;
    assert!(!paired.contains(Environment::Stage));
    assert!(!paired.contains(Environment::Production));
}

/// Grants where the practice is enabled for acme (keys in both environments) and
/// paired only in `paired_in`.
fn paired_only_in(paired_in: &[Environment]) -> Policy {
    let mut g = Grants::default();
    for e in base_events()
        .into_iter()
        .filter(|e| !matches!(e, PolicyEvent::PracticePaired { .. }))
    {
        g.apply(&e).unwrap();
    }
    for environment in paired_in {
        g.apply(&PolicyEvent::PracticePaired {
            integrator: id("acme"),
            pms_id: pms(),
            environment: *environment,
        })
        .unwrap();
    }
    g.compile()
}

fn eval_prod(policy: &Policy) -> Decision {
    let prod = site(Environment::Production, 2, pms());
    let call = Call {
        key: PROD_KEY,
        ..Call::default()
    };
    run(policy, call, Some(&prod), prod.halo_guid)
}

#[test]
fn stage_pairing_does_not_pair_production() {
    let p = paired_only_in(&[Environment::Stage]);
    assert!(matches!(
        eval_stage(&p, Call::default()),
        Decision::Allow(_)
    ));
    let d = deny_of(eval_prod(&p));
    assert_eq!(d.code(), DenyCode::NotPaired);
    assert_eq!(
        d.message(),
        "integrator has not paired with this site in this environment"
    );
}

#[test]
fn production_pairing_does_not_pair_stage() {
    let p = paired_only_in(&[Environment::Production]);
    assert!(matches!(eval_prod(&p), Decision::Allow(_)));
    check_deny(eval_stage(&p, Call::default()), DenyCode::NotPaired);
    let p = paired_only_in(&[]);
    check_deny(eval_stage(&p, Call::default()), DenyCode::NotPaired);
    check_deny(eval_prod(&p), DenyCode::NotPaired);
    let p = paired_only_in(&[Environment::Production, Environment::Stage]);
    assert!(matches!(
        eval_stage(&p, Call::default()),
        Decision::Allow(_)
    ));
    assert!(matches!(eval_prod(&p), Decision::Allow(_)));
}

#[test]
fn a_legacy_pairing_event_pairs_stage_only() {
    let legacy: PolicyEvent =
        serde_json::from_str(r#"{"event":"sitePaired","integrator":"acme","pmsId":"D4w:ABC123"}"#)
            .unwrap();
    assert_eq!(
        legacy,
        PolicyEvent::PracticePaired {
            integrator: id("acme"),
            pms_id: pms(),
            environment: LEGACY_PAIRING_ENVIRONMENT,
        }
    );
    assert_eq!(LEGACY_PAIRING_ENVIRONMENT, Environment::Stage);
    let mut g = Grants::default();
    for e in base_events()
        .into_iter()
        .filter(|e| !matches!(e, PolicyEvent::PracticePaired { .. }))
        .chain([legacy])
    {
        g.apply(&e).unwrap();
    }
    let p = g.compile();
    assert!(matches!(
        eval_stage(&p, Call::default()),
        Decision::Allow(_)
    ));
    check_deny(eval_prod(&p), DenyCode::NotPaired);
}

#[test]
fn pairing_events_carry_their_environment_in_json() {
    for environment in Environment::ALL {
        let e = PolicyEvent::PracticePaired {
            integrator: id("acme"),
            pms_id: pms(),
            environment,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"event":"sitePaired","integrator":"acme","pmsId":"D4w:ABC123","environment":"{environment}"}}"#
            )
        );
        assert_eq!(serde_json::from_str::<PolicyEvent>(&json).unwrap(), e);
    }
}

#[test]
fn practice_enabled_needs_the_practice_and_its_pms_type() {
    let p = grants_with(&[]).compile();
    let who = authenticate(&p, STAGE_KEY, None).unwrap();
    assert!(practice_enabled(&p, &who, pms()));
    assert!(!practice_enabled(&p, &who, other_pms()));
    // Same site id, another PMS type the integrator is not enabled for.
    assert!(!practice_enabled(
        &p,
        &who,
        "Zedmed:ABC123".parse().unwrap()
    ));
    // Disabled practice, disabled PMS type.
    let p = grants_with(&[PolicyEvent::PracticeDisabled {
        integrator: id("acme"),
        pms_id: pms(),
    }])
    .compile();
    assert!(!practice_enabled(&p, &who, pms()));
    let p = grants_with(&[
        PolicyEvent::PracticeEnabled {
            integrator: id("acme"),
            pms_id: "Zedmed:ABC123".parse().unwrap(),
        },
        PolicyEvent::IntegratorDisabled {
            integrator: id("acme"),
            pms_type: PmsType::D4w,
        },
    ])
    .compile();
    assert!(!practice_enabled(&p, &who, pms()));
    assert!(!practice_enabled(&Policy::empty(), &who, pms()));
}

// --- evaluate: every deny code with its status ------------------------------------

#[test]
fn allows_a_fully_granted_request() {
    let p = grants_with(&[]).compile();
    match eval_stage(&p, Call::default()) {
        Decision::Allow(a) => {
            assert_eq!(a.integrator(), &id("acme"));
            assert_eq!(a.environment(), Environment::Stage);
            assert_eq!(a.pms_id(), pms());
            assert_eq!(a.halo_guid(), stage_site().halo_guid);
        }
        Decision::Deny(d) => panic!("{d}"),
    }
}

#[test]
fn denies_missing_key_401() {
    let p = grants_with(&[]).compile();
    check_deny(
        eval_stage(
            &p,
            Call {
                key: "",
                ..Call::default()
            },
        ),
        DenyCode::MissingKey,
    );
    assert_eq!(
        authenticate(&p, "", None).unwrap_err().code(),
        DenyCode::MissingKey
    );
}

#[test]
fn denies_unknown_key_401() {
    let p = grants_with(&[]).compile();
    check_deny(
        eval_stage(
            &p,
            Call {
                key: "guess",
                ..Call::default()
            },
        ),
        DenyCode::UnknownKey,
    );
    // A key differing only by whitespace is a different key.
    let k = format!("{STAGE_KEY} ");
    check_deny(
        eval_stage(
            &p,
            Call {
                key: &k,
                ..Call::default()
            },
        ),
        DenyCode::UnknownKey,
    );
}

#[test]
fn denies_key_of_the_other_environment_401() {
    let p = grants_with(&[]).compile();
    check_deny(
        eval_stage(
            &p,
            Call {
                key: PROD_KEY,
                ..Call::default()
            },
        ),
        DenyCode::WrongEnvironment,
    );
    let prod = site(Environment::Production, 2, pms());
    check_deny(
        run(&p, Call::default(), Some(&prod), prod.halo_guid),
        DenyCode::WrongEnvironment,
    );
    assert!(matches!(
        run(
            &p,
            Call {
                key: PROD_KEY,
                ..Call::default()
            },
            Some(&prod),
            prod.halo_guid
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn denies_integrator_not_enabled_403() {
    let p = grants_with(&[PolicyEvent::IntegratorDisabled {
        integrator: id("acme"),
        pms_type: PmsType::D4w,
    }])
    .compile();
    check_deny(
        eval_stage(&p, Call::default()),
        DenyCode::IntegratorNotEnabled,
    );
    let p = grants_with(&[]).compile();
    let zedmed: PmsId = "Zedmed:ABC123".parse().unwrap();
    let d = authorise_practice(&p, STAGE_KEY, None, zedmed).unwrap_err();
    assert_eq!(d.code(), DenyCode::IntegratorNotEnabled);
}

#[test]
fn denies_practice_not_enabled_403_by_pms_id() {
    let p = grants_with(&[]).compile();
    let d = authorise_practice(&p, STAGE_KEY, None, other_pms()).unwrap_err();
    assert_eq!(d.code(), DenyCode::PracticeNotEnabled);
    let who = authorise_practice(&p, STAGE_KEY, None, pms()).unwrap();
    assert_eq!(who.integrator(), &id("acme"));
    assert_eq!(who.environment(), Environment::Stage);
}

#[test]
fn denies_not_paired_403() {
    let mut g = grants_with(&[]);
    g.apply(&PolicyEvent::PracticeEnabled {
        integrator: id("acme"),
        pms_id: other_pms(),
    })
    .unwrap();
    let p = g.compile();
    let s = site(Environment::Stage, 3, other_pms());
    check_deny(
        run(&p, Call::default(), Some(&s), s.halo_guid),
        DenyCode::NotPaired,
    );
}

#[test]
fn denies_component_not_authorised_403() {
    let p = grants_with(&[]).compile();
    for sql in [
        "SELECT * FROM secrets",
        "EXEC Other",
        "DROP TABLE patients",
        "SELECT * FROM other.dbo.patients",
    ] {
        check_deny(
            eval_stage(
                &p,
                Call {
                    sql,
                    ..Call::default()
                },
            ),
            DenyCode::ComponentNotAuthorised,
        );
    }
    check_deny(
        eval_stage(
            &p,
            Call {
                catalogue: Some("master"),
                ..Call::default()
            },
        ),
        DenyCode::ComponentNotAuthorised,
    );
    for ok in ["D4W", "[d4w]", " d4w "] {
        assert!(
            matches!(
                eval_stage(
                    &p,
                    Call {
                        catalogue: Some(ok),
                        ..Call::default()
                    }
                ),
                Decision::Allow(_)
            ),
            "{ok}"
        );
    }
    let d = Deny::unanalysable(&extract_components("SELEC 1").unwrap_err());
    assert_eq!(d.code(), DenyCode::ComponentNotAuthorised);
    // Malformed commands are told apart (the Cloud answers them 400); a construct
    // the analyser does not read is not malformed.
    assert!(
        extract_components("SELEC 1")
            .unwrap_err()
            .is_malformed_command()
    );
    assert!(
        extract_components("   ")
            .unwrap_err()
            .is_malformed_command()
    );
    assert!(
        extract_components("SELECT 1 /* open")
            .unwrap_err()
            .is_malformed_command()
    );
    assert!(!PolicyError::SqlUnsupported("TABLE statement").is_malformed_command());
}

#[test]
fn deny_message_names_only_the_callers_component() {
    let p = grants_with(&[]).compile();
    let d = deny_of(eval_stage(
        &p,
        Call {
            sql: "SELECT * FROM [Secrets]",
            ..Call::default()
        },
    ));
    assert_eq!(d.message(), "table not authorised: secrets");
}

#[test]
fn denies_write_not_authorised_403() {
    let p = grants_with(&[]).compile();
    check_deny(
        eval_stage(
            &p,
            Call {
                mode: ExecutionMode::NonQuery,
                ..Call::default()
            },
        ),
        DenyCode::WriteNotAuthorised,
    );
    check_deny(
        eval_stage(
            &p,
            Call {
                sql: "DELETE FROM patients",
                ..Call::default()
            },
        ),
        DenyCode::WriteNotAuthorised,
    );
}

#[test]
fn denies_site_not_authoritative_403() {
    let p = grants_with(&[]).compile();
    let mut s = stage_site();
    s.authoritative = false;
    check_deny(
        run(&p, Call::default(), Some(&s), s.halo_guid),
        DenyCode::SiteNotAuthoritative,
    );
}

#[test]
fn denies_caller_ip_not_allowed_403_in_production_only() {
    let p = grants_with(&[PolicyEvent::IpAllowlistSet {
        integrator: id("acme"),
        cidrs: vec!["203.0.113.0/24".into(), "2001:db8::1".into()],
    }])
    .compile();
    let prod = site(Environment::Production, 2, pms());
    let call = |ip: Option<&str>| Call {
        key: PROD_KEY,
        ip: ip.map(|s| s.parse().unwrap()),
        ..Call::default()
    };
    check_deny(
        run(&p, call(Some("198.51.100.7")), Some(&prod), prod.halo_guid),
        DenyCode::CallerIpNotAllowed,
    );
    check_deny(
        run(&p, call(None), Some(&prod), prod.halo_guid),
        DenyCode::CallerIpNotAllowed,
    );
    check_deny(
        run(&p, call(Some("2001:db8::2")), Some(&prod), prod.halo_guid),
        DenyCode::CallerIpNotAllowed,
    );
    for ok in ["203.0.113.9", "2001:db8::1"] {
        assert!(
            matches!(
                run(&p, call(Some(ok)), Some(&prod), prod.halo_guid),
                Decision::Allow(_)
            ),
            "{ok}"
        );
    }
    // The IP check comes before any site lookup: nothing about sites is revealed.
    check_deny(
        run(&p, call(Some("198.51.100.7")), None, prod.halo_guid),
        DenyCode::CallerIpNotAllowed,
    );
    // Stage keys are not subject to the allowlist.
    assert!(matches!(
        eval_stage(
            &p,
            Call {
                ip: Some("198.51.100.7".parse().unwrap()),
                ..Call::default()
            }
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn denies_unknown_site_404() {
    let p = grants_with(&[]).compile();
    let s = stage_site();
    check_deny(
        run(&p, Call::default(), None, s.halo_guid),
        DenyCode::UnknownSite,
    );
    // A site view for a different GUID than the request names is not used.
    let other = HaloGuid::from_u128(99).unwrap();
    check_deny(
        run(&p, Call::default(), Some(&s), other),
        DenyCode::UnknownSite,
    );
    let mut inactive = s;
    inactive.active = false;
    check_deny(
        run(&p, Call::default(), Some(&inactive), s.halo_guid),
        DenyCode::UnknownSite,
    );
}

#[test]
fn a_site_not_enabled_looks_exactly_like_no_site() {
    let p = grants_with(&[]).compile();
    let missing = deny_of(run(
        &p,
        Call::default(),
        None,
        HaloGuid::from_u128(7).unwrap(),
    ));
    // Another practice's sites, whatever their environment, status or authority.
    for env in Environment::ALL {
        for (authoritative, active) in [(true, true), (false, true), (true, false)] {
            let mut s = site(env, 7, other_pms());
            s.authoritative = authoritative;
            s.active = active;
            for key in [STAGE_KEY, PROD_KEY] {
                let d = deny_of(run(
                    &p,
                    Call {
                        key,
                        ..Call::default()
                    },
                    Some(&s),
                    s.halo_guid,
                ));
                assert_eq!(d, missing);
            }
        }
    }
    // A practice enabled for another PMS type only.
    let bp = site(
        Environment::Stage,
        7,
        "BestPractice:ABC123".parse().unwrap(),
    );
    assert_eq!(
        deny_of(run(&p, Call::default(), Some(&bp), bp.halo_guid)),
        missing
    );
}

#[test]
fn denies_rate_limited_429_and_quota_exhausted_403() {
    let p = grants_with(&[
        PolicyEvent::RateLimitSet {
            integrator: id("acme"),
            pms_id: None,
            limit: Some(RateLimit {
                per_second: 10,
                burst: 2,
            }),
        },
        PolicyEvent::QuotaSet {
            integrator: id("acme"),
            pms_id: Some(pms()),
            per_month: Some(3),
        },
    ])
    .compile();
    let prod = site(Environment::Production, 2, pms());
    let Decision::Allow(a) = run(
        &p,
        Call {
            key: PROD_KEY,
            ..Call::default()
        },
        Some(&prod),
        prod.halo_guid,
    ) else {
        panic!("allowed")
    };
    let t0 = Timestamp::from_millis(1_700_000_000_000);
    assert!(p.take(&a, t0).is_ok());
    assert!(p.take(&a, t0).is_ok());
    let d = p.take(&a, t0).unwrap_err();
    assert_eq!(
        d.code(),
        DenyCode::RateLimited {
            retry_after_ms: 100
        }
    );
    assert!(matches!(d.code(), DenyCode::RateLimited { .. }), "{d}");
    // After the wait a token is back; the third query of the month is the last.
    let t1 = Timestamp::from_millis(t0.as_millis() + 100);
    assert!(p.take(&a, t1).is_ok());
    let t2 = Timestamp::from_millis(t1.as_millis() + 1000);
    let d = p.take(&a, t2).unwrap_err();
    assert_eq!(d.code(), DenyCode::QuotaExhausted);
    // Next month the quota is fresh.
    let next_month = Timestamp::from_millis(t0.as_millis() + 31 * 86_400_000);
    assert!(p.take(&a, next_month).is_ok());
}

#[test]
fn stage_has_no_limits() {
    let p = grants_with(&[PolicyEvent::QuotaSet {
        integrator: id("acme"),
        pms_id: None,
        per_month: Some(1),
    }])
    .compile();
    let Decision::Allow(a) = eval_stage(&p, Call::default()) else {
        panic!("allowed")
    };
    for _ in 0..10 {
        assert!(p.take(&a, Timestamp::from_millis(5)).is_ok());
    }
}

#[test]
fn compile_with_carries_counters_unless_the_limit_changes() {
    let quota = |n| PolicyEvent::QuotaSet {
        integrator: id("acme"),
        pms_id: None,
        per_month: Some(n),
    };
    let g = grants_with(&[quota(1)]);
    let p1 = g.compile();
    let prod = site(Environment::Production, 2, pms());
    let Decision::Allow(a) = run(
        &p1,
        Call {
            key: PROD_KEY,
            ..Call::default()
        },
        Some(&prod),
        prod.halo_guid,
    ) else {
        panic!("allowed")
    };
    let now = Timestamp::from_millis(1_000);
    assert!(p1.take(&a, now).is_ok());
    let p2 = g.compile_with(&p1);
    assert_eq!(
        p2.take(&a, now).unwrap_err().code(),
        DenyCode::QuotaExhausted
    );
    assert!(g.compile().take(&a, now).is_ok(), "compile() starts fresh");
    let mut g3 = g.clone();
    g3.apply(&quota(2)).unwrap();
    assert!(
        g3.compile_with(&p2).take(&a, now).is_ok(),
        "a changed quota starts fresh"
    );
}

#[test]
fn empty_policy_denies() {
    let p = Policy::empty();
    assert_eq!(p.integrator_count(), 0);
    assert_eq!(p.key_count(), 0);
    check_deny(eval_stage(&p, Call::default()), DenyCode::UnknownKey);
    assert!(authenticate(&p, STAGE_KEY, None).is_err());
}

#[test]
fn site_visible_requires_enabled_practice_and_same_environment() {
    let p = grants_with(&[]).compile();
    let who = authenticate(&p, STAGE_KEY, None).unwrap();
    assert!(site_visible(&p, &who, &stage_site()));
    assert!(!site_visible(
        &p,
        &who,
        &site(Environment::Production, 2, pms())
    ));
    assert!(!site_visible(
        &p,
        &who,
        &site(Environment::Stage, 3, other_pms())
    ));
}

#[test]
fn site_status_access_hides_what_the_caller_may_not_see() {
    let p = grants_with(&[]).compile();
    let stage = authenticate(&p, STAGE_KEY, None).unwrap();
    let production = authenticate(&p, PROD_KEY, None).unwrap();
    let denied = |who: &Authenticated, s: Option<&SiteView>| {
        site_status_access(&p, who, s).map_err(|d| (d.code(), d.message().to_owned()))
    };
    let unknown = Err((DenyCode::UnknownSite, "site not found".to_owned()));

    // Its own practice, in its key's environment: whatever the site's state.
    assert_eq!(denied(&stage, Some(&stage_site())), Ok(()));
    for (authoritative, active) in [(false, true), (true, false), (false, false)] {
        let s = SiteView {
            authoritative,
            active,
            ..stage_site()
        };
        assert_eq!(denied(&stage, Some(&s)), Ok(()), "{s:?}");
    }
    // No such site, and another practice's site (in either environment), answer the
    // same, byte for byte.
    assert_eq!(denied(&stage, None), unknown);
    let other_stage = site(Environment::Stage, 3, other_pms());
    let other_production = site(Environment::Production, 4, other_pms());
    assert_eq!(denied(&stage, Some(&other_stage)), unknown);
    assert_eq!(denied(&stage, Some(&other_production)), unknown);
    assert_eq!(denied(&production, Some(&other_stage)), unknown);
    // A site of another PMS type than the integrator is enabled for: unknown too.
    let zedmed = site(Environment::Stage, 5, "Zedmed:ABC123".parse().unwrap());
    assert_eq!(denied(&stage, Some(&zedmed)), unknown);
    // Its own practice, with a key of the other environment: told so (401).
    let production_site = site(Environment::Production, 2, pms());
    let wrong = Err((
        DenyCode::WrongEnvironment,
        "subscription key is for another environment than the site".to_owned(),
    ));
    assert_eq!(denied(&stage, Some(&production_site)), wrong);
    assert_eq!(denied(&production, Some(&stage_site())), wrong);
    assert_eq!(denied(&production, Some(&production_site)), Ok(()));
}

#[test]
fn site_status_access_follows_the_grants() {
    let p = grants_with(&[PolicyEvent::PracticeDisabled {
        integrator: id("acme"),
        pms_id: pms(),
    }])
    .compile();
    let who = authenticate(&p, STAGE_KEY, None).unwrap();
    let d = site_status_access(&p, &who, Some(&stage_site())).unwrap_err();
    assert_eq!(d.code(), DenyCode::UnknownSite);
    // Pairing is not needed to read a site's status.
    let p = paired_only_in(&[]);
    let who = authenticate(&p, STAGE_KEY, None).unwrap();
    assert_eq!(site_status_access(&p, &who, Some(&stage_site())), Ok(()));
    // An integrator that is gone from the policy sees nothing.
    let d = site_status_access(&Policy::empty(), &who, Some(&stage_site())).unwrap_err();
    assert_eq!(d.code(), DenyCode::UnknownSite);
}

#[test]
fn deny_codes_have_distinct_names() {
    let codes = [
        DenyCode::MissingKey,
        DenyCode::UnknownKey,
        DenyCode::WrongEnvironment,
        DenyCode::IntegratorNotEnabled,
        DenyCode::PracticeNotEnabled,
        DenyCode::NotPaired,
        DenyCode::ComponentNotAuthorised,
        DenyCode::WriteNotAuthorised,
        DenyCode::SiteNotAuthoritative,
        DenyCode::CallerIpNotAllowed,
        DenyCode::QuotaExhausted,
        DenyCode::UnknownSite,
        DenyCode::RateLimited { retry_after_ms: 1 },
    ];
    let names: std::collections::BTreeSet<_> = codes.iter().map(DenyCode::as_str).collect();
    assert_eq!(names.len(), codes.len());
}

#[test]
fn execution_mode_uses_api_names() {
    assert_eq!(
        serde_json::to_string(&ExecutionMode::NonQuery).unwrap(),
        "\"nonQuery\""
    );
    assert_eq!(
        serde_json::from_str::<ExecutionMode>("\"reader\"").unwrap(),
        ExecutionMode::Reader
    );
    assert_eq!(
        serde_json::from_str::<ExecutionMode>("\"scalar\"").unwrap(),
        ExecutionMode::Scalar
    );
}

#[test]
fn policy_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<Decision>();
    assert_send_sync::<Components>();
}

// --- limits ----------------------------------------------------------------------

#[test]
fn month_index_follows_the_calendar() {
    let day = 86_400_000u64;
    assert_eq!(month_index(Timestamp::from_millis(0)), 0);
    assert_eq!(month_index(Timestamp::from_millis(31 * day - 1)), 0);
    assert_eq!(month_index(Timestamp::from_millis(31 * day)), 1);
    // 2000-02-29 and 2000-03-01 (11_016 and 11_017 days after the epoch).
    assert_eq!(
        month_index(Timestamp::from_millis(11_016 * day)),
        30 * 12 + 1
    );
    assert_eq!(
        month_index(Timestamp::from_millis(11_017 * day)),
        30 * 12 + 2
    );
    // 2026-11-27.
    assert_eq!(
        month_index(Timestamp::from_millis(20_784 * day)),
        56 * 12 + 10
    );
}

#[test]
fn bucket_allows_burst_then_refills_at_rate() {
    let b = Bucket::new(RateLimit {
        per_second: 4,
        burst: 3,
    });
    let t = |ms| Timestamp::from_millis(ms);
    for _ in 0..3 {
        assert!(b.take(t(1000)).is_ok());
    }
    assert_eq!(b.take(t(1000)), Err(250));
    assert_eq!(b.take(t(1100)), Err(150));
    assert!(b.take(t(1250)).is_ok());
    assert!(b.take(t(1250)).is_err());
    // A long quiet period refills to the burst, not beyond.
    for _ in 0..3 {
        assert!(b.take(t(100_000)).is_ok());
    }
    assert!(b.take(t(100_000)).is_err());
}

#[test]
fn quota_counts_per_month_and_ignores_clock_steps_back() {
    let q = MonthlyQuota::new(2);
    let day = 86_400_000u64;
    let feb = Timestamp::from_millis(40 * day);
    let jan = Timestamp::from_millis(10 * day);
    assert!(q.take(feb).is_ok());
    assert!(q.take(jan).is_ok());
    assert!(q.take(feb).is_err());
    q.give_back();
    assert!(q.take(feb).is_ok());
    assert!(q.take(Timestamp::from_millis(70 * day)).is_ok());
}

#[test]
fn bucket_is_exact_under_contention() {
    let b = std::sync::Arc::new(Bucket::new(RateLimit {
        per_second: 1,
        burst: 1000,
    }));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..500)
                    .filter(|_| b.take(Timestamp::from_millis(0)).is_ok())
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 1000);
}

// --- extraction limits -------------------------------------------------------------

/// Runs `f` on a thread with the 2 MiB stack tokio gives its workers.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_or_long_commands_are_errors_not_stack_overflows() {
    let refused = [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!(
            "SELECT * FROM {}SELECT 1 AS a{}",
            "(SELECT * FROM ".repeat(100),
            ") x".repeat(100)
        ),
        format!("SELECT 1{}", " + 1".repeat(10_000)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(10_000)),
        format!(
            "SELECT CASE {}1 {}",
            "WHEN 1 = 1 THEN CASE ".repeat(30),
            "END ".repeat(31)
        ),
    ];
    for sql in refused {
        let r = on_small_stack(move || extract_components(&sql));
        assert!(
            matches!(
                r,
                Err(PolicyError::SqlUnsupported(_) | PolicyError::SqlParse(_))
            ),
            "{r:?}"
        );
    }
}

#[test]
fn the_longest_accepted_chains_fit_a_small_stack() {
    // Just under MAX_TOKENS: a left-deep tree about 2 000 levels deep.
    let plus = format!("SELECT 1{}", " + 1".repeat((MAX_TOKENS - 4) / 2));
    let and = format!(
        "SELECT * FROM patients WHERE 1 = 1{}",
        " AND 1 = 1".repeat((MAX_TOKENS - 10) / 4)
    );
    for sql in [plus, and] {
        assert!(on_small_stack(move || extract_components(&sql)).is_ok());
    }
    let nested = format!(
        "SELECT * FROM {}SELECT 1 AS a{}",
        "(SELECT * FROM ".repeat(MAX_NESTING - 1),
        ") x".repeat(MAX_NESTING - 1)
    );
    // Within the parenthesis limit; the parser's own recursion limit may still
    // refuse it, but it must not crash.
    let _ = on_small_stack(move || extract_components(&nested));
}

#[test]
fn batches_count_statements_and_union_their_kinds() {
    let c = extract_components("SELECT * FROM a; INSERT INTO b VALUES (1); EXEC p").unwrap();
    assert_eq!(c.statement_count(), 3);
    assert!(
        c.has(StatementKind::Read) && c.has(StatementKind::Write) && c.has(StatementKind::Call)
    );
    assert!(c.writes());
    assert!(!c.has(StatementKind::Ddl) && !c.has(StatementKind::Other));
    assert_eq!(c.tables().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(c.procedures().collect::<Vec<_>>(), ["p"]);
}

/// A named procedure call (`type: storedProcedure`) is authorised as its one
/// procedure component, named as grants name it; an ungranted one, SQL Server's
/// dynamic-SQL procedures and a nonQuery call without write permission are denied.
#[test]
fn procedure_calls_are_authorised_by_their_name_alone() {
    let policy = grants_with(&[]).compile();
    let decide = |name: &str, mode: ExecutionMode| {
        let components = procedure_components(name).unwrap();
        let s = stage_site();
        let req = Request {
            key: STAGE_KEY,
            halo_guid: s.halo_guid,
            mode,
            catalogue: None,
            components: &components,
            caller_ip: None,
            now: Timestamp::from_millis(0),
        };
        evaluate(&policy, &req, Some(&s))
    };
    for granted in ["GetPatient", "[dbo].[getpatient]", "main.GETPATIENT"] {
        let c = procedure_components(granted).unwrap();
        assert_eq!(c.procedures().collect::<Vec<_>>(), ["getpatient"]);
        assert_eq!(c.tables().count(), 0);
        assert!(c.has(StatementKind::Call) && !c.writes());
        assert!(
            matches!(decide(granted, ExecutionMode::Reader), Decision::Allow(_)),
            "{granted}"
        );
    }
    check_deny(
        decide("GetAppointments", ExecutionMode::Reader),
        DenyCode::ComponentNotAuthorised,
    );
    check_deny(
        decide("sp_executesql", ExecutionMode::Reader),
        DenyCode::ComponentNotAuthorised,
    );
    check_deny(
        decide("GetPatient", ExecutionMode::NonQuery),
        DenyCode::WriteNotAuthorised,
    );
    assert_eq!(
        normalise_procedure("[dbo].[GetPatient]").unwrap(),
        "getpatient"
    );
    for bad in ["", "a.b.c", "GetPatient; DROP TABLE x", "1abc("] {
        assert!(procedure_components(bad).is_err(), "{bad:?}");
    }
}

fn run_stored(policy: &Policy, key_hash: &KeyHash, sql: &str) -> Decision {
    let components = extract_components(sql).unwrap();
    let req = Request {
        key: "",
        halo_guid: HaloGuid::from_u128(1).unwrap(),
        mode: ExecutionMode::Reader,
        catalogue: None,
        components: &components,
        caller_ip: None,
        now: Timestamp::from_millis(0),
    };
    let s = site(Environment::Stage, 1, pms());
    evaluate_stored(policy, key_hash, &req, Some(&s))
}

#[test]
fn stored_work_is_decided_again_by_the_policy_of_now() {
    let stored = KeyHash::of(STAGE_KEY);
    let p = grants_with(&[]).compile();
    match run_stored(&p, &stored, "SELECT * FROM patients") {
        Decision::Allow(a) => {
            assert_eq!(a.integrator(), &id("acme"));
            assert_eq!(a.environment(), Environment::Stage);
        }
        Decision::Deny(d) => panic!("{d}"),
    }
    assert_eq!(
        authenticate_stored(&p, &stored, None).unwrap().integrator(),
        &id("acme")
    );
    // Every check of `evaluate` runs: a table not granted is denied.
    check_deny(
        run_stored(&p, &stored, "SELECT * FROM appointments"),
        DenyCode::ComponentNotAuthorised,
    );
    // The key revoked since: denied.
    let revoked = grants_with(&[PolicyEvent::KeyRevoked {
        integrator: id("acme"),
        key_hash: stored,
    }])
    .compile();
    check_deny(
        run_stored(&revoked, &stored, "SELECT * FROM patients"),
        DenyCode::UnknownKey,
    );
    assert!(authenticate_stored(&revoked, &stored, None).is_err());
    // The practice disabled since: the site is as unknown.
    let disabled = grants_with(&[PolicyEvent::PracticeDisabled {
        integrator: id("acme"),
        pms_id: pms(),
    }])
    .compile();
    check_deny(
        run_stored(&disabled, &stored, "SELECT * FROM patients"),
        DenyCode::UnknownSite,
    );
    // A hash nobody issued.
    check_deny(
        run_stored(&p, &KeyHash::of("never-issued"), "SELECT * FROM patients"),
        DenyCode::UnknownKey,
    );
}

// ---- Counters shared by the nodes of a cluster (`shared.rs`) ----

/// The shared totals, as the Cloud keeps them in PostgreSQL.
#[derive(Default)]
struct SharedTotals(std::collections::HashMap<(String, u64), u64>);

impl SharedTotals {
    /// One node's round: drain, add, read every total back, absorb.
    fn round(&mut self, node: &mut SharedCounters, policy: &Policy, now: Timestamp) {
        let sent = node.drain(policy);
        for d in &sent {
            *self.0.entry((d.key.clone(), d.period)).or_default() += d.delta;
        }
        let totals: Vec<CounterTotal> = self
            .0
            .iter()
            .map(|((key, period), total)| CounterTotal {
                key: key.clone(),
                period: *period,
                total: *total,
            })
            .collect();
        node.absorb(policy, &sent, &totals, now);
    }
}

fn prod_allowed(p: &Policy) -> Allowed {
    let prod = site(Environment::Production, 2, pms());
    let Decision::Allow(a) = run(
        p,
        Call {
            key: PROD_KEY,
            ..Call::default()
        },
        Some(&prod),
        prod.halo_guid,
    ) else {
        panic!("allowed")
    };
    a
}

/// Two nodes (two compiled policies: counters of their own) admitting `offered`
/// requests each per step, sharing every `sync_every` steps (never when 0).
fn two_nodes_admit(extra: &[PolicyEvent], steps: u64, step_ms: u64, sync_every: u64) -> (u64, u64) {
    let g = grants_with(extra);
    let nodes = [g.compile(), g.compile()];
    let a = prod_allowed(&nodes[0]);
    let mut shared = SharedTotals::default();
    let mut sides = [SharedCounters::new(), SharedCounters::new()];
    let mut admitted = [0, 0];
    let t0 = 1_800_000_000_000;
    for step in 0..steps {
        let now = Timestamp::from_millis(t0 + step * step_ms);
        for (n, p) in nodes.iter().enumerate() {
            if p.take(&a, now).is_ok() {
                admitted[n] += 1;
            }
        }
        if sync_every > 0 && step % sync_every == sync_every - 1 {
            for (p, side) in nodes.iter().zip(&mut sides) {
                shared.round(side, p, now);
            }
        }
    }
    (admitted[0], admitted[1])
}

#[test]
fn a_monthly_quota_holds_across_nodes_within_one_round_of_overshoot() {
    let quota = PolicyEvent::QuotaSet {
        integrator: id("acme"),
        pms_id: None,
        per_month: Some(100),
    };
    // Each node alone would admit the whole quota: 200 together.
    let (a, b) = two_nodes_admit(std::slice::from_ref(&quota), 300, 1, 0);
    assert_eq!(a + b, 200);
    // Sharing after every 3 requests per node: at most one round's worth over.
    let (a, b) = two_nodes_admit(&[quota], 300, 1, 3);
    assert!((100..=103).contains(&(a + b)), "admitted {a} + {b}");
    assert!(a >= 45 && b >= 45, "both nodes got a share: {a}, {b}");
}

#[test]
fn a_rate_limit_holds_across_nodes() {
    let rate = PolicyEvent::RateLimitSet {
        integrator: id("acme"),
        pms_id: Some(pms()),
        limit: Some(RateLimit {
            per_second: 10,
            burst: 10,
        }),
    };
    // 5 s, each node offered a request every 10 ms, sharing every 100 ms.
    let (a, b) = two_nodes_admit(std::slice::from_ref(&rate), 500, 10, 0);
    assert_eq!(a + b, 2 * (10 + 49), "unshared: each node admits the limit");
    let (a, b) = two_nodes_admit(&[rate], 500, 10, 10);
    // The cluster's limit is 10 + 5 × 10 = 60; the overshoot is bounded by the
    // other node's burst plus one round at the rate.
    assert!((55..=72).contains(&(a + b)), "admitted {a} + {b}");
}

#[test]
fn a_fresh_node_counts_from_the_clusters_total() {
    let g = grants_with(&[PolicyEvent::QuotaSet {
        integrator: id("acme"),
        pms_id: Some(pms()),
        per_month: Some(5),
    }]);
    let (old, fresh) = (g.compile(), g.compile());
    let a = prod_allowed(&old);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let mut shared = SharedTotals::default();
    for _ in 0..5 {
        old.take(&a, now).unwrap();
    }
    shared.round(&mut SharedCounters::new(), &old, now);
    assert!(
        fresh.take(&a, now).is_ok(),
        "a fresh node alone counts from 0"
    );
    let fresh = g.compile();
    shared.round(&mut SharedCounters::new(), &fresh, now);
    assert_eq!(
        fresh.take(&a, now).unwrap_err().code(),
        DenyCode::QuotaExhausted
    );
    // Next month starts again from 0.
    let next_month = Timestamp::from_millis(now.as_millis() + 31 * 86_400_000);
    assert!(fresh.take(&a, next_month).is_ok());
}

#[test]
fn a_failed_round_keeps_its_deltas_for_the_next() {
    let g = grants_with(&[PolicyEvent::QuotaSet {
        integrator: id("acme"),
        pms_id: None,
        per_month: Some(50),
    }]);
    let p = g.compile();
    let a = prod_allowed(&p);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let mut side = SharedCounters::new();
    for _ in 0..3 {
        p.take(&a, now).unwrap();
    }
    let first = side.drain(&p);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delta, 3);
    assert_eq!(first[0].key, "quota/i/acme");
    assert_eq!(first[0].period, month_index(now));
    // The round failed (no absorb): the next drain sends them again, with more.
    p.take(&a, now).unwrap();
    let second = side.drain(&p);
    assert_eq!(second[0].delta, 4);
    side.absorb(&p, &second, &[], now);
    assert!(
        side.drain(&p).is_empty(),
        "acknowledged deltas are not resent"
    );
}

#[test]
fn shared_counter_names_never_collide_and_unknown_ones_are_ignored() {
    let g = grants_with(&[
        PolicyEvent::QuotaSet {
            integrator: id("acme"),
            pms_id: None,
            per_month: Some(2),
        },
        PolicyEvent::QuotaSet {
            integrator: id("acme"),
            pms_id: Some(pms()),
            per_month: Some(1000),
        },
    ]);
    let p = g.compile();
    let a = prod_allowed(&p);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let month = month_index(now);
    let total = |key: &str, total| CounterTotal {
        key: key.to_owned(),
        period: month,
        total,
    };
    let mut side = SharedCounters::new();
    // The practice's total says nothing about the integrator's; names that do
    // not parse, or name nobody, change nothing.
    side.absorb(
        &p,
        &[],
        &[
            total(&format!("quota/p/{}/acme", pms()), 900),
            total("quota/i/nobody", 900),
            total("quota/x/acme", 900),
            total("bogus", 900),
        ],
        now,
    );
    assert!(p.take(&a, now).is_ok());
    side.absorb(&p, &[], &[total("quota/i/acme", 2)], now);
    assert_eq!(
        p.take(&a, now).unwrap_err().code(),
        DenyCode::QuotaExhausted
    );
}
