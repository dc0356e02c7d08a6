//! The one-pass `Event` decoder accepts what serde's internally tagged derive
//! accepted, and refuses what it refused.

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType};
use serde::Deserialize;

use crate::{Catalogue, Event, SiteIdentity};

/// The derive the decoder replaced, kept here as the reference.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum Derived {
    LinkRegistered {
        link: LinkGuid,
        environment: Environment,
        version: String,
    },
    #[serde(rename = "DatabaseAttached")]
    SiteAttached {
        link: LinkGuid,
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        identity: SiteIdentity,
    },
    #[serde(rename = "DatabaseReady")]
    SiteReady {
        link: LinkGuid,
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    #[serde(rename = "DatabaseRemoved")]
    SiteRemoved {
        link: LinkGuid,
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    LinkUninstalled {
        link: LinkGuid,
    },
    Reinstalled {
        link: LinkGuid,
        previous: HaloGuid,
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    Heartbeat {
        link: LinkGuid,
    },
    BranchCrnsChanged {
        link: LinkGuid,
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        branch_crns: Vec<Crn>,
    },
    Promoted {
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        actor: String,
        reason: String,
    },
}

impl From<Derived> for Event {
    fn from(d: Derived) -> Self {
        match d {
            Derived::LinkRegistered {
                link,
                environment,
                version,
            } => Event::LinkRegistered {
                link,
                environment,
                version,
            },
            Derived::SiteAttached {
                link,
                halo_guid,
                identity,
            } => Event::SiteAttached {
                link,
                halo_guid,
                identity,
            },
            Derived::SiteReady { link, halo_guid } => Event::SiteReady { link, halo_guid },
            Derived::SiteRemoved { link, halo_guid } => Event::SiteRemoved { link, halo_guid },
            Derived::LinkUninstalled { link } => Event::LinkUninstalled { link },
            Derived::Reinstalled {
                link,
                previous,
                halo_guid,
            } => Event::Reinstalled {
                link,
                previous,
                halo_guid,
            },
            Derived::Heartbeat { link } => Event::Heartbeat { link },
            Derived::BranchCrnsChanged {
                link,
                halo_guid,
                branch_crns,
            } => Event::BranchCrnsChanged {
                link,
                halo_guid,
                branch_crns,
            },
            Derived::Promoted {
                halo_guid,
                actor,
                reason,
            } => Event::Promoted {
                halo_guid,
                actor,
                reason,
            },
        }
    }
}

fn every_variant() -> Vec<Event> {
    let link = LinkGuid::from_u128(7).unwrap();
    let site = HaloGuid::from_u128(8).unwrap();
    let previous = HaloGuid::from_u128(9).unwrap();
    let crn: Crn = "AB123".parse().unwrap();
    let branch: Crn = "AB124".parse().unwrap();
    vec![
        Event::LinkRegistered {
            link,
            environment: Environment::Stage,
            version: "1.2".into(),
        },
        Event::SiteAttached {
            link,
            halo_guid: site,
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: crn,
                branch_crns: vec![branch],
                practice_name: "Smile \"Dental\"".into(),
                pms_version: "9.6".into(),
                catalogues: vec![Catalogue {
                    name: "D4W".into(),
                    is_default: true,
                }],
                is_demo: true,
            },
        },
        Event::SiteReady {
            link,
            halo_guid: site,
        },
        Event::SiteRemoved {
            link,
            halo_guid: site,
        },
        Event::LinkUninstalled { link },
        Event::Reinstalled {
            link,
            previous,
            halo_guid: site,
        },
        Event::Heartbeat { link },
        Event::BranchCrnsChanged {
            link,
            halo_guid: site,
            branch_crns: vec![branch, crn],
        },
        Event::Promoted {
            halo_guid: site,
            actor: "support".into(),
            reason: "primary failed".into(),
        },
    ]
}

/// Both decoders' results on `json`: equal events, or both errors.
fn same(json: &str) -> Option<Event> {
    let ours = serde_json::from_str::<Event>(json);
    let derived = serde_json::from_str::<Derived>(json).map(Event::from);
    match (ours, derived) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{json}");
            Some(a)
        }
        (Err(_), Err(_)) => None,
        (a, b) => panic!("decoders disagree on {json}: ours {a:?}, derive {b:?}"),
    }
}

#[test]
fn every_variant_round_trips_like_the_derive() {
    for event in every_variant() {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(same(&json), Some(event), "{json}");
    }
}

#[test]
fn key_order_unknown_keys_and_other_variants_fields_change_nothing() {
    for event in every_variant() {
        let value = serde_json::to_value(&event).unwrap();
        let object = value.as_object().unwrap();
        // The tag last, keys reversed.
        let mut reversed: Vec<(String, serde_json::Value)> =
            object.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        reversed.reverse();
        let text = format!(
            "{{{}}}",
            reversed
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(same(&text).as_ref(), Some(&event), "{text}");
        // After the tag: an unknown key, and keys of other variants (mistyped for
        // this one, so a decoder that read them would fail).
        let tag_first = format!(
            "{{\"type\":{},\"comment\":{{\"a\":[1]}},\"actor\":42,\"identity\":\"x\",{}}}",
            serde_json::to_string(&object["type"]).unwrap(),
            object
                .iter()
                .filter(|(k, _)| k.as_str() != "type")
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect::<Vec<_>>()
                .join(",")
        );
        let tag_first = tag_first.replace(",}", "}");
        let ours = serde_json::from_str::<Event>(&tag_first);
        let derived = serde_json::from_str::<Derived>(&tag_first).map(Event::from);
        match (&ours, &derived) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{tag_first}"),
            // A field the variant has, given twice or mistyped, fails both.
            (Err(_), Err(_)) => {}
            _ => panic!("decoders disagree on {tag_first}: ours {ours:?}, derive {derived:?}"),
        }
    }
}

#[test]
fn refusals_match_the_derive() {
    let cases = [
        r#"{"link":"00000000-0000-0000-0000-000000000007"}"#,
        r#"{"type":"Nope","link":"00000000-0000-0000-0000-000000000007"}"#,
        r#"{"type":"Heartbeat"}"#,
        r#"{"type":"Heartbeat","link":"00000000-0000-0000-0000-000000000007","link":"00000000-0000-0000-0000-000000000007"}"#,
        r#"{"type":"Heartbeat","type":"Heartbeat","link":"00000000-0000-0000-0000-000000000007"}"#,
        r#"{"type":"Heartbeat","link":"00000000-0000-0000-0000-000000000000"}"#,
        r#"{"type":"Promoted","site":"00000000-0000-0000-0000-000000000008","actor":"a"}"#,
        r#"{"type":"DatabaseReady","link":"00000000-0000-0000-0000-000000000007","site":12}"#,
        r#"{"type":"LinkRegistered","link":"00000000-0000-0000-0000-000000000007","environment":"prod","version":"1"}"#,
        r#"["Heartbeat"]"#,
        r#""Heartbeat""#,
        r#"{"type":7,"link":"00000000-0000-0000-0000-000000000007"}"#,
    ];
    for json in cases {
        assert_eq!(same(json), None, "{json} should be refused");
    }
    // Still accepted: a version-one event whose Halo GUID was written braced.
    let accepted = r#"{"type":"DatabaseReady","link":"00000000-0000-0000-0000-000000000007","site":"00000000-0000-0000-0000-000000000008"}"#;
    assert!(same(accepted).is_some());
}
