//! What an integrator is told about a CRN it names (find sites and pair site, by
//! PMS ID): the core decides, the HTTP adapter translates.
//!
//! A branch CRN and a demo copy's real CRN never route; an integrator entitled to
//! the practice they belong to is told which it named (a 400 with guidance, so it
//! can use the right CRN). Anyone else gets exactly the answer of a CRN that no
//! database has: [`resolve_crn`] hands back the CRN itself as the practice to ask
//! the policy about, so the rest of the request (and its status and body) cannot
//! differ from the unknown-CRN path. Otherwise the guidance would be an oracle for
//! which CRNs are other practices' branches or copies.

use halo_ids::{Crn, PmsId, PmsType};
use halo_policy::{Authenticated, Policy, practice_enabled};
use halo_tenancy::{CrnLookup, Registry};

/// Why a CRN an entitled integrator named is refused, with guidance. Neither names
/// the parent practice nor the fake CRN. The Cloud answers it with its message (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CrnRefusal {
    /// A branch (local) CRN of a practice the caller is enabled for.
    #[error(
        "this is a branch (local) CRN; Halo Connect uses the parent practice's CRN, which the practice can provide"
    )]
    BranchCrn,
    /// The real, non-unique CRN of a demo or de-identified copy that the caller is
    /// entitled to be told about.
    #[error(
        "this CRN belongs to a demo or de-identified copy and is not unique; use the fake CRN from the Halo Link log"
    )]
    DemoRealCrn,
}

/// Resolves a CRN named by an authenticated integrator, in its key's environment,
/// to the PMS ID to ask the policy about
/// ([`halo_policy::authorise_practice`]), or refuses it with guidance.
///
/// - A CRN some live site holds (a practice, or a demo copy's fake CRN), an unknown
///   CRN: `Ok` with that CRN. A demo copy never shadows a practice
///   ([`Registry::lookup_crn`]).
/// - A branch CRN: [`CrnRefusal::BranchCrn`] if the caller is enabled
///   ([`practice_enabled`]) for the parent practice that claims it; otherwise `Ok`
///   with the branch CRN itself, exactly as for an unknown CRN.
/// - A demo copy's real CRN (no live real site holds it): [`CrnRefusal::DemoRealCrn`]
///   if the caller is enabled for that real CRN's practice (the copies were made
///   from it) or for the fake CRN of one of the live copies carrying it; otherwise
///   `Ok` with the CRN itself, exactly as for an unknown CRN.
///
/// # Errors
/// [`CrnRefusal`] as above.
pub fn resolve_crn(
    registry: &Registry,
    policy: &Policy,
    who: &Authenticated,
    pms_type: PmsType,
    crn: Crn,
) -> Result<PmsId, CrnRefusal> {
    let entitled = |pms_id: PmsId| practice_enabled(policy, who, pms_id);
    match registry.lookup_crn_for(who.environment(), pms_type, crn, entitled) {
        CrnLookup::Branch => Err(CrnRefusal::BranchCrn),
        CrnLookup::DemoRealCrn => Err(CrnRefusal::DemoRealCrn),
        CrnLookup::Site(_) | CrnLookup::Vacant | CrnLookup::Unknown => {
            Ok(PmsId::new(pms_type, crn))
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use halo_ids::{Environment, HaloGuid, LinkGuid, Timestamp};
    use halo_policy::{
        Authenticated, Deny, Grants, IntegratorId, Policy, PolicyEvent, ReadAccess, authenticate,
        authorise_practice,
    };
    use halo_tenancy::{Event, Registry, SiteIdentity};

    use super::*;

    const STAGE: Environment = Environment::Stage;

    fn crn(s: &str) -> Crn {
        s.parse().unwrap()
    }

    fn d4w(s: &str) -> PmsId {
        PmsId::new(PmsType::D4w, crn(s))
    }

    /// Halo GUID `n`, with `n` in its first digits so that fake CRNs differ.
    fn halo(n: u128) -> HaloGuid {
        HaloGuid::from_u128((n << 96) | n).unwrap()
    }

    fn identity(real: &str, branches: &[&str], demo: bool) -> SiteIdentity {
        SiteIdentity {
            pms_type: PmsType::D4w,
            parent_crn: crn(real),
            branch_crns: branches.iter().map(|b| crn(b)).collect(),
            practice_name: format!("Practice {real}"),
            pms_version: "1".into(),
            catalogues: vec![],
            is_demo: demo,
        }
    }

    /// Stage: HARBOUR01 (branch HARBOUR02), BRIGHT77; two demo copies of DEMO1; a
    /// demo copy announcing HARBOUR01 (and one HARBOUR02) as its real CRN.
    fn registry() -> Registry {
        let mut r = Registry::new();
        let now = Timestamp::from_millis(1);
        let link = LinkGuid::from_u128(1).unwrap();
        let events = [
            Event::LinkRegistered {
                link,
                environment: STAGE,
                version: "1".into(),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(1),
                identity: identity("HARBOUR01", &["HARBOUR02"], false),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(2),
                identity: identity("BRIGHT77", &[], false),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(3),
                identity: identity("DEMO1", &[], true),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(4),
                identity: identity("DEMO1", &[], true),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(5),
                identity: identity("HARBOUR01", &[], true),
            },
            Event::SiteAttached {
                link,
                halo_guid: halo(6),
                identity: identity("HARBOUR02", &[], true),
            },
        ];
        for e in &events {
            r.apply(e, now).unwrap();
        }
        r
    }

    /// One integrator per name, enabled for D4W and for `practices`, with a Stage key
    /// named after it and a Production key `<name>-prod`.
    fn policy(integrators: &[(&str, &[PmsId])]) -> Policy {
        let mut g = Grants::default();
        for (name, practices) in integrators {
            let id: IntegratorId = name.parse().unwrap();
            let prod_key = format!("{name}-prod");
            for (environment, key) in [(STAGE, *name), (Environment::Production, &*prod_key)] {
                let access = ReadAccess {
                    integrator: &id,
                    pms_type: PmsType::D4w,
                    environment,
                    key,
                    catalogues: &[],
                    tables: &["patients"],
                };
                for e in access.integrator_events() {
                    g.apply(&e).unwrap();
                }
            }
            for pms_id in *practices {
                g.apply(&PolicyEvent::PracticeEnabled {
                    integrator: id.clone(),
                    pms_id: *pms_id,
                })
                .unwrap();
            }
        }
        g.compile()
    }

    fn who(policy: &Policy, key: &str) -> Authenticated {
        authenticate(policy, key, None).unwrap()
    }

    fn resolve(reg: &Registry, policy: &Policy, key: &str, c: &str) -> Result<PmsId, CrnRefusal> {
        resolve_crn(reg, policy, &who(policy, key), PmsType::D4w, crn(c))
    }

    /// The whole by-PMS-ID answer: resolve, then the policy's practice check.
    fn answer(reg: &Registry, policy: &Policy, key: &str, c: &str) -> Result<PmsId, String> {
        let pms_id = resolve(reg, policy, key, c).map_err(|r| format!("refused {r}"))?;
        authorise_practice(policy, key, None, pms_id)
            .map(|_| pms_id)
            .map_err(|d: Deny| format!("{} {}", d.code().as_str(), d.message()))
    }

    #[test]
    fn existence_oracle_branch_crn_of_another_practice_answers_like_an_unknown_crn() {
        let reg = registry();
        let p = policy(&[("bright", &[d4w("BRIGHT77")])]);
        assert_eq!(
            resolve(&reg, &p, "bright", "HARBOUR02"),
            Ok(d4w("HARBOUR02"))
        );
        let unknown = answer(&reg, &p, "bright", "NOBODY1");
        assert_eq!(
            unknown,
            Err("practiceNotEnabled practice not enabled for this integrator".to_owned())
        );
        assert_eq!(answer(&reg, &p, "bright", "HARBOUR02"), unknown);
        // The caller enabled for the parent is told, without the parent's name.
        let p = policy(&[("harbour", &[d4w("HARBOUR01")])]);
        let refusal = resolve(&reg, &p, "harbour", "HARBOUR02").unwrap_err();
        assert_eq!(refusal, CrnRefusal::BranchCrn);
        assert!(refusal.to_string().contains("branch"));
        assert!(!refusal.to_string().contains("HARBOUR01"));
        // Being "enabled" for the branch CRN as if it were a practice is not
        // being enabled for its parent.
        let p = policy(&[("sly", &[d4w("HARBOUR02")])]);
        assert_eq!(resolve(&reg, &p, "sly", "HARBOUR02"), Ok(d4w("HARBOUR02")));
    }

    #[test]
    fn existence_oracle_demo_real_crn_of_other_copies_answers_like_an_unknown_crn() {
        let reg = registry();
        let p = policy(&[("bright", &[d4w("BRIGHT77")])]);
        assert_eq!(resolve(&reg, &p, "bright", "DEMO1"), Ok(d4w("DEMO1")));
        assert_eq!(
            answer(&reg, &p, "bright", "DEMO1"),
            answer(&reg, &p, "bright", "NOBODY1")
        );
        // Enabled for a copy (by its fake CRN), or for the practice the copies were
        // made from: told to use the fake CRN.
        let fake = PmsId::new(PmsType::D4w, halo(4).fake_crn());
        let p = policy(&[("copy", &[fake]), ("origin", &[d4w("DEMO1")])]);
        for key in ["copy", "origin"] {
            let refusal = resolve(&reg, &p, key, "DEMO1").unwrap_err();
            assert_eq!(refusal, CrnRefusal::DemoRealCrn, "{key}");
            assert!(refusal.to_string().contains("demo"));
            assert!(!refusal.to_string().contains(fake.site_id().as_str()));
        }
    }

    #[test]
    fn demo_copy_does_not_shadow_a_practice() {
        let reg = registry();
        let p = policy(&[
            ("harbour", &[d4w("HARBOUR01")]),
            ("bright", &[d4w("BRIGHT77")]),
        ]);
        // The copy announcing HARBOUR01 changes nothing for anyone.
        assert_eq!(
            resolve(&reg, &p, "harbour", "HARBOUR01"),
            Ok(d4w("HARBOUR01"))
        );
        assert_eq!(
            answer(&reg, &p, "harbour", "HARBOUR01"),
            Ok(d4w("HARBOUR01"))
        );
        assert_eq!(
            answer(&reg, &p, "bright", "HARBOUR01"),
            Err("practiceNotEnabled practice not enabled for this integrator".to_owned())
        );
        // Nor does the copy announcing the branch HARBOUR02: still a branch.
        assert_eq!(
            resolve(&reg, &p, "harbour", "HARBOUR02"),
            Err(CrnRefusal::BranchCrn)
        );
    }

    #[test]
    fn guidance_needs_the_pms_type_and_the_key_environment() {
        let reg = registry();
        let p = policy(&[("harbour", &[d4w("HARBOUR01")])]);
        // A Production key: the branch is a Stage branch, unknown in Production.
        assert_eq!(
            resolve(&reg, &p, "harbour-prod", "HARBOUR02"),
            Ok(d4w("HARBOUR02"))
        );
        // The vendor disables the integrator for D4W: no longer entitled.
        let mut g = Grants::default();
        let id: IntegratorId = "harbour".parse().unwrap();
        let access = ReadAccess {
            integrator: &id,
            pms_type: PmsType::D4w,
            environment: STAGE,
            key: "harbour",
            catalogues: &[],
            tables: &[],
        };
        for e in access.events([d4w("HARBOUR01")]) {
            g.apply(&e).unwrap();
        }
        g.apply(&PolicyEvent::IntegratorEnabled {
            integrator: id.clone(),
            pms_type: PmsType::Zedmed,
        })
        .unwrap();
        g.apply(&PolicyEvent::IntegratorDisabled {
            integrator: id,
            pms_type: PmsType::D4w,
        })
        .unwrap();
        let p = g.compile();
        assert_eq!(
            resolve(&reg, &p, "harbour", "HARBOUR02"),
            Ok(d4w("HARBOUR02"))
        );
    }
}
