#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;

use super::*;

fn link(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

fn pms(text: &str) -> PmsId {
    text.parse().unwrap()
}

fn issued(token: &str, scope: Option<Scope>) -> CredentialEvent {
    CredentialEvent::Issued {
        token_hash: KeyHash::of(token),
        label: token.into(),
        scope,
        actor: None,
    }
}

fn practice_scope(env: Environment, practices: &[&str]) -> Scope {
    Scope::practices(env, ScopeKind::OnPremises, practices.iter().map(|p| pms(p)))
}

fn with(events: &[CredentialEvent]) -> Credentials {
    let mut c = Credentials::default();
    for e in events {
        c.apply(e).unwrap();
    }
    c
}

#[test]
fn first_link_owns_a_credential_and_others_are_refused() {
    let a = KeyHash::of("a");
    let creds = with(&[
        issued(
            "a",
            Some(practice_scope(Environment::Stage, &["D4w:BRIGHT77"])),
        ),
        CredentialEvent::Bound {
            token_hash: a,
            link: link(1),
        },
    ]);
    assert!(
        !creds
            .admit(&a, link(1), Environment::Stage)
            .unwrap()
            .first_use
    );
    assert_eq!(
        creds.admit(&a, link(2), Environment::Stage).unwrap_err(),
        CredentialError::OtherLink
    );
}

#[test]
fn a_bound_link_is_refused_with_any_other_credential() {
    // The session hijack: a fresh credential presented with another Link's GUID.
    let victim = KeyHash::of("victim");
    let fresh = KeyHash::of("fresh");
    let scope = practice_scope(Environment::Stage, &["D4w:BRIGHT77"]);
    let mut creds = with(&[
        issued("victim", Some(scope.clone())),
        issued("fresh", Some(scope)),
        CredentialEvent::Bound {
            token_hash: victim,
            link: link(1),
        },
    ]);
    assert_eq!(
        creds
            .admit(&fresh, link(1), Environment::Stage)
            .unwrap_err(),
        CredentialError::LinkBoundElsewhere
    );
    // Nor can the binding be recorded, should anyone try.
    assert_eq!(
        creds.apply(&CredentialEvent::Bound {
            token_hash: fresh,
            link: link(1),
        }),
        Err(CredentialError::LinkBoundElsewhere)
    );
    // The fresh credential still works for a Link of its own.
    assert!(
        creds
            .admit(&fresh, link(2), Environment::Stage)
            .unwrap()
            .first_use
    );
}

#[test]
fn environment_and_missing_scope_are_refused() {
    let creds = with(&[
        issued("stage", Some(practice_scope(Environment::Stage, &[]))),
        issued("legacy", None),
    ]);
    assert_eq!(
        creds
            .admit(&KeyHash::of("stage"), link(1), Environment::Production)
            .unwrap_err(),
        CredentialError::WrongEnvironment {
            credential: Environment::Stage,
            hello: Environment::Production
        }
    );
    assert_eq!(
        creds
            .admit(&KeyHash::of("legacy"), link(1), Environment::Stage)
            .unwrap_err(),
        CredentialError::NoScope
    );
    assert_eq!(
        creds
            .admit(&KeyHash::of("never"), link(1), Environment::Stage)
            .unwrap_err(),
        CredentialError::Unknown
    );
}

#[test]
fn scope_admits_listed_practices_and_demo_copies_only_where_allowed() {
    let scope = practice_scope(Environment::Stage, &["D4w:BRIGHT77"]);
    assert!(scope.admit_database(pms("D4w:BRIGHT77"), false).is_ok());
    assert_eq!(
        scope.admit_database(pms("D4w:HARBOUR01"), false),
        Err(DatabaseRefusal::PracticeNotInScope(pms("D4w:HARBOUR01")))
    );
    assert_eq!(
        scope.admit_database(pms("D4w:BRIGHT77"), true),
        Err(DatabaseRefusal::DemoNotInScope)
    );
    let demo = Scope::demo_only();
    assert!(demo.admit_database(pms("D4w:HARBOUR01"), true).is_ok());
    assert!(demo.admit_database(pms("D4w:HARBOUR01"), false).is_err());
    let mut creds = Credentials::default();
    let mut production_demo = Scope::demo_only();
    production_demo.environment = Environment::Production;
    assert_eq!(
        creds.apply(&issued("x", Some(production_demo))),
        Err(CredentialError::DemoInProduction)
    );
    assert!(creds.is_empty(), "a refused event changes nothing");
}

#[test]
fn support_extends_a_hosting_scope() {
    let token = KeyHash::of("cluster");
    let mut creds = with(&[issued(
        "cluster",
        Some(Scope::practices(
            Environment::Production,
            ScopeKind::Hosting,
            [pms("D4w:A1")],
        )),
    )]);
    let extend = |actor: &str| CredentialEvent::ScopeExtended {
        token_hash: token,
        practices: vec![pms("D4w:B2")],
        actor: actor.into(),
        reason: "practice moved onto the cluster".into(),
    };
    assert_eq!(
        creds.apply(&extend(" ")),
        Err(CredentialError::Missing("actor"))
    );
    creds.apply(&extend("support:ann")).unwrap();
    let admitted = creds
        .admit(&token, link(1), Environment::Production)
        .unwrap();
    assert!(admitted.scope.admit_database(pms("D4w:B2"), false).is_ok());
    assert!(admitted.scope.admit_database(pms("D4w:C3"), false).is_err());
}

#[test]
fn revoked_credentials_are_refused_and_rotation_moves_the_link() {
    let old = KeyHash::of("old");
    let new = KeyHash::of("new");
    let mut creds = with(&[
        issued("old", Some(practice_scope(Environment::Stage, &["D4w:A1"]))),
        CredentialEvent::Bound {
            token_hash: old,
            link: link(1),
        },
    ]);
    creds
        .apply(&CredentialEvent::Revoked {
            token_hash: old,
            actor: Some("support".into()),
            reason: Some("leaked".into()),
        })
        .unwrap();
    assert_eq!(
        creds.admit(&old, link(1), Environment::Stage).unwrap_err(),
        CredentialError::Revoked
    );
    creds
        .apply(&CredentialEvent::Rotated {
            from: old,
            to: new,
            actor: "support".into(),
            reason: "after the leak".into(),
        })
        .unwrap();
    let admitted = creds.admit(&new, link(1), Environment::Stage).unwrap();
    assert!(!admitted.first_use, "the new token inherits the binding");
    assert_eq!(
        creds.admit(&new, link(2), Environment::Stage).unwrap_err(),
        CredentialError::OtherLink
    );
    assert_eq!(creds.of_link(link(1)).map(|(h, _)| *h), Some(new));
}

#[test]
fn ids_are_stable_and_parse_back() {
    let hash = KeyHash::of("token");
    let id = CredentialId::of(&hash);
    let text = id.to_string();
    assert_eq!(text.len(), 3 + 16);
    assert_eq!(text.parse::<CredentialId>().unwrap(), id);
    assert!("lc_xyz".parse::<CredentialId>().is_err());
    assert!("0123456789abcdef".parse::<CredentialId>().is_err());
    let creds = with(&[issued("token", None)]);
    assert_eq!(creds.find(id).map(|(h, _)| *h), Some(hash));
}

#[test]
fn version_1_events_and_snapshots_still_load() {
    // As the Cloud wrote them before scopes: no scope, no actor, no reason.
    let hash = KeyHash::of("legacy");
    let issued: CredentialEvent = serde_json::from_str(&format!(
        r#"{{"type":"issued","tokenHash":"{hash}","label":"old"}}"#
    ))
    .unwrap();
    let revoked: CredentialEvent =
        serde_json::from_str(&format!(r#"{{"type":"revoked","tokenHash":"{hash}"}}"#)).unwrap();
    let bound: CredentialEvent = serde_json::from_str(&format!(
        r#"{{"type":"bound","tokenHash":"{hash}","link":"{}"}}"#,
        link(3)
    ))
    .unwrap();
    let creds = with(&[issued, bound, revoked]);
    let snapshot: Credentials = serde_json::from_str(&format!(
        r#"{{"by_hash":{{"{hash}":{{"label":"old","link":"{}","revoked":true}}}}}}"#,
        link(3)
    ))
    .unwrap();
    assert_eq!(
        snapshot, creds,
        "the v1 snapshot form loads, with its link index"
    );
}

fn event_strategy() -> impl Strategy<Value = CredentialEvent> {
    let token = (0u8..4).prop_map(|t| KeyHash::of(&format!("t{t}")));
    let scope = prop_oneof![
        Just(None),
        Just(Some(Scope::demo_only())),
        Just(Some(practice_scope(Environment::Stage, &["D4w:A1"]))),
    ];
    prop_oneof![
        (token.clone(), scope).prop_map(|(token_hash, scope)| CredentialEvent::Issued {
            token_hash,
            label: "l".into(),
            scope,
            actor: None
        }),
        (token.clone(), 1u128..4).prop_map(|(token_hash, l)| CredentialEvent::Bound {
            token_hash,
            link: link(l)
        }),
        token
            .clone()
            .prop_map(|token_hash| CredentialEvent::Revoked {
                token_hash,
                actor: None,
                reason: None
            }),
        (token.clone(), token).prop_map(|(from, to)| CredentialEvent::Rotated {
            from,
            to,
            actor: "a".into(),
            reason: "r".into()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// One to one: every live binding is unique both ways, a refused event changes
    /// nothing, and the snapshot form round-trips to an equal value.
    #[test]
    fn bindings_stay_one_to_one(events in proptest::collection::vec(event_strategy(), 0..30)) {
        let mut creds = Credentials::default();
        for e in &events {
            let before = creds.clone();
            if creds.apply(e).is_err() {
                prop_assert_eq!(&creds, &before);
            }
            // Each Link admits with at most one live credential.
            for l in 1u128..4 {
                let live: Vec<_> = (0u8..4)
                    .map(|t| KeyHash::of(&format!("t{t}")))
                    .filter(|h| creds.admit(h, link(l), Environment::Stage).is_ok())
                    .filter(|h| creds.check(h).is_ok_and(|c| c.link == Some(link(l))))
                    .collect();
                prop_assert!(live.len() <= 1, "link {} bound to {:?}", l, live);
            }
        }
        let json = serde_json::to_string(&creds).unwrap();
        let back: Credentials = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, creds);
    }
}

proptest! {
    /// A clone is a value of its own: changes to the original (which shares the
    /// clone's structure until then) never show in the clone. The Cloud publishes
    /// such clones to its readers while its writer keeps changing the original.
    #[test]
    fn a_clone_never_sees_the_originals_later_changes(
        events in proptest::collection::vec(event_strategy(), 0..30),
        at in 0usize..30,
    ) {
        let mut creds = Credentials::default();
        let mut published = None;
        for (i, e) in events.iter().enumerate() {
            if i == at {
                let copy = creds.clone();
                let frozen = serde_json::to_string(&copy).unwrap();
                published = Some((copy, frozen));
            }
            let _ = creds.apply(e);
        }
        if let Some((copy, frozen)) = published {
            prop_assert_eq!(serde_json::to_string(&copy).unwrap(), frozen);
            prop_assert_eq!(copy.iter().count(), copy.len());
        }
    }
}
