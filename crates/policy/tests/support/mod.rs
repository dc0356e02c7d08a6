//! Shared fixture for the policy integration tests: two integrators, one practice,
//! a Stage and a Production site.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use halo_ids::{Environment, HaloGuid, PmsId, PmsType, Timestamp};
use halo_policy::*;

pub const READER_STAGE: &str = "reader-stage-key";
pub const READER_PROD: &str = "reader-prod-key";
pub const WRITER_STAGE: &str = "writer-stage-key";

pub fn id(s: &str) -> IntegratorId {
    s.parse().unwrap()
}

pub fn pms() -> PmsId {
    "D4w:ABC123".parse().unwrap()
}

pub fn stage_site() -> SiteView {
    SiteView {
        halo_guid: HaloGuid::from_u128(0xa1).unwrap(),
        environment: Environment::Stage,
        pms_id: pms(),
        authoritative: true,
        active: true,
    }
}

pub fn prod_site() -> SiteView {
    SiteView {
        halo_guid: HaloGuid::from_u128(0xb2).unwrap(),
        environment: Environment::Production,
        pms_id: pms(),
        authoritative: true,
        active: true,
    }
}

fn grant(integrator: &str, allow_write: bool) -> Vec<PolicyEvent> {
    let i = id(integrator);
    vec![
        PolicyEvent::IntegratorEnabled {
            integrator: i.clone(),
            pms_type: PmsType::D4w,
        },
        PolicyEvent::ComponentsAuthorised {
            integrator: i.clone(),
            pms_type: PmsType::D4w,
            catalogues: vec!["D4W".into()],
            tables: vec![
                "Patients".into(),
                "[dbo].[Appointments]".into(),
                "dbo.Providers".into(),
                "audit.Log".into(),
            ],
            procedures: vec!["GetPatient".into(), "reports.Daily".into(), "fn_age".into()],
            allow_write,
        },
        PolicyEvent::PracticeEnabled {
            integrator: i.clone(),
            pms_id: pms(),
        },
        PolicyEvent::PracticePaired {
            integrator: i.clone(),
            pms_id: pms(),
            environment: Environment::Stage,
        },
        PolicyEvent::PracticePaired {
            integrator: i.clone(),
            pms_id: pms(),
            environment: Environment::Production,
        },
    ]
}

pub fn grants() -> Grants {
    let mut g = Grants::default();
    let mut events = grant("reader", false);
    events.extend(grant("writer", true));
    events.push(PolicyEvent::KeyIssued {
        integrator: id("reader"),
        environment: Environment::Stage,
        key_hash: KeyHash::of(READER_STAGE),
    });
    events.push(PolicyEvent::KeyIssued {
        integrator: id("reader"),
        environment: Environment::Production,
        key_hash: KeyHash::of(READER_PROD),
    });
    events.push(PolicyEvent::KeyIssued {
        integrator: id("writer"),
        environment: Environment::Stage,
        key_hash: KeyHash::of(WRITER_STAGE),
    });
    for e in &events {
        g.apply(e).unwrap();
    }
    g
}

/// Evaluates `sql` end to end (extraction failures deny, fail closed).
pub fn decide(
    policy: &Policy,
    key: &str,
    sql: &str,
    mode: ExecutionMode,
    site: &SiteView,
) -> Result<Allowed, Deny> {
    let components = extract_components(sql).map_err(|e| Deny::unanalysable(&e))?;
    let req = Request {
        key,
        halo_guid: site.halo_guid,
        mode,
        catalogue: None,
        components: &components,
        caller_ip: None,
        now: Timestamp::from_millis(0),
    };
    match evaluate(policy, &req, Some(site)) {
        Decision::Allow(a) => Ok(a),
        Decision::Deny(d) => Err(d),
    }
}
