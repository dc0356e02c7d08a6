//! What a Link's hello registers, and what came of each database it announced.
//!
//! A hello becomes one batch of events: the Link's registration, then for each
//! announced database its attach and its readiness. The writer applies them in order
//! and hands back one result per event. The registration gates the rest: if it is
//! refused, no database is attached (each answers the same refusal). Otherwise each
//! database's events stand on their own (a refused event changes nothing and does
//! not stop the others). [`Registration::outcomes`] reads those
//! results: the caller never pairs results with databases by position itself, and
//! the rule "a database that is already active is not an error" lives here, tested.

use halo_ids::{Environment, HaloGuid, LinkGuid};

use crate::{Event, SiteIdentity, SiteStatus, TenancyError};

/// The events of one Link's hello, built once, and the reading of their results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    sites: Vec<HaloGuid>,
    events: Vec<Event>,
}

/// What came of one announced database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteRegistration {
    /// Attached and made active now (new, or re-attached after it was initialising).
    Registered,
    /// It was already active: re-attached (details refreshed), nothing else changed.
    /// Not an error: a Link says hello again on every reconnection.
    AlreadyActive,
    /// Refused, with the reason to tell the Link. Nothing about it changed.
    Refused(TenancyError),
}

/// Why a whole hello came to nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationRefused {
    /// The Link's own registration was refused (its version text, an environment
    /// change while it serves databases, ...).
    #[error("link registration refused: {0}")]
    Link(TenancyError),
    /// The results do not answer the events one to one (a writer bug): nothing is
    /// taken as registered.
    #[error("expected {expected} registration results, got {got}")]
    ResultCount {
        /// The number of events.
        expected: usize,
        /// The number of results.
        got: usize,
    },
}

impl Registration {
    /// The registration of `link` in `environment` at `version`, announcing
    /// `databases` (each with its Halo GUID), in the order given.
    pub fn new(
        link: LinkGuid,
        environment: Environment,
        version: String,
        databases: impl IntoIterator<Item = (HaloGuid, SiteIdentity)>,
    ) -> Self {
        let mut events = vec![Event::LinkRegistered {
            link,
            environment,
            version,
        }];
        let mut sites = Vec::new();
        for (halo_guid, identity) in databases {
            sites.push(halo_guid);
            events.push(Event::SiteAttached {
                link,
                halo_guid,
                identity,
            });
            events.push(Event::SiteReady { link, halo_guid });
        }
        Self { sites, events }
    }

    /// The events to apply, in this order, each on its own.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads the results of [`Registration::events`] (one per event, in order):
    /// each announced database with what came of it, in the order announced.
    ///
    /// A database is [`SiteRegistration::Refused`] with its attach's error if the
    /// attach was refused, else with its readiness's error, unless that error only
    /// says the site is already active ([`SiteRegistration::AlreadyActive`]).
    ///
    /// # Errors
    /// [`RegistrationRefused::Link`] when the Link's registration was refused, and
    /// [`RegistrationRefused::ResultCount`] when there is not exactly one result per
    /// event.
    pub fn outcomes(
        &self,
        results: Vec<Result<(), TenancyError>>,
    ) -> Result<Vec<(HaloGuid, SiteRegistration)>, RegistrationRefused> {
        if results.len() != self.events.len() {
            return Err(RegistrationRefused::ResultCount {
                expected: self.events.len(),
                got: results.len(),
            });
        }
        let mut results = results.into_iter();
        if let Some(Err(e)) = results.next() {
            return Err(RegistrationRefused::Link(e));
        }
        let mut outcomes = Vec::with_capacity(self.sites.len());
        for &site in &self.sites {
            // Two results per site: the count was checked above.
            let (Some(attached), Some(ready)) = (results.next(), results.next()) else {
                break;
            };
            outcomes.push((site, site_outcome(attached, ready)));
        }
        Ok(outcomes)
    }
}

fn site_outcome(
    attached: Result<(), TenancyError>,
    ready: Result<(), TenancyError>,
) -> SiteRegistration {
    match (attached, ready) {
        (Err(e), _) => SiteRegistration::Refused(e),
        (Ok(()), Ok(())) => SiteRegistration::Registered,
        (
            Ok(()),
            Err(TenancyError::InvalidTransition {
                from: SiteStatus::Active,
                to: SiteStatus::Active,
                ..
            }),
        ) => SiteRegistration::AlreadyActive,
        (Ok(()), Err(e)) => SiteRegistration::Refused(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use halo_ids::{PmsType, Timestamp};

    use super::*;
    use crate::Registry;

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    fn link(n: u128) -> LinkGuid {
        LinkGuid::from_u128(n).unwrap()
    }

    fn halo(n: u128) -> HaloGuid {
        HaloGuid::from_u128(n).unwrap()
    }

    fn identity(crn: &str, demo: bool) -> SiteIdentity {
        SiteIdentity {
            pms_type: PmsType::D4w,
            parent_crn: crn.parse().unwrap(),
            branch_crns: vec![],
            practice_name: format!("Practice {crn}"),
            pms_version: "9.6".into(),
            catalogues: vec![],
            is_demo: demo,
        }
    }

    fn hello(l: u128, environment: Environment, databases: &[(u128, &str, bool)]) -> Registration {
        Registration::new(
            link(l),
            environment,
            "1.0".into(),
            databases
                .iter()
                .map(|&(h, crn, demo)| (halo(h), identity(crn, demo))),
        )
    }

    /// Applies the events as the Cloud's writer does: in order, each on its own.
    fn apply(reg: &mut Registry, r: &Registration) -> Vec<Result<(), TenancyError>> {
        r.events()
            .iter()
            .map(|e| reg.apply(e, NOW).map(drop))
            .collect()
    }

    #[test]
    fn a_first_hello_registers_every_database_and_a_second_finds_them_active() {
        let mut reg = Registry::new();
        let r = hello(
            1,
            Environment::Stage,
            &[(1, "AB1", false), (2, "AB2", false)],
        );
        assert_eq!(r.events().len(), 5);
        let outcomes = r.outcomes(apply(&mut reg, &r)).unwrap();
        assert_eq!(
            outcomes,
            vec![
                (halo(1), SiteRegistration::Registered),
                (halo(2), SiteRegistration::Registered)
            ]
        );
        assert_eq!(reg.site(halo(1)).unwrap().status(), SiteStatus::Active);
        // The Link reconnects: same hello, plus a new database.
        let r = hello(
            1,
            Environment::Stage,
            &[(1, "AB1", false), (2, "AB2", false), (3, "AB3", false)],
        );
        let outcomes = r.outcomes(apply(&mut reg, &r)).unwrap();
        assert_eq!(
            outcomes,
            vec![
                (halo(1), SiteRegistration::AlreadyActive),
                (halo(2), SiteRegistration::AlreadyActive),
                (halo(3), SiteRegistration::Registered)
            ]
        );
    }

    #[test]
    fn a_hello_repeated_unchanged_changes_nothing_and_a_changed_one_does() {
        let mut reg = Registry::new();
        let r = hello(
            1,
            Environment::Stage,
            &[(1, "AB1", false), (2, "AB2", true)],
        );
        assert!(!r.events().iter().any(|e| reg.changes_nothing(e)));
        r.outcomes(apply(&mut reg, &r)).unwrap();
        // Again: the Link's registration and both attaches change nothing; the
        // readiness is refused as "already active" (never logged either).
        let unchanged: Vec<bool> = r.events().iter().map(|e| reg.changes_nothing(e)).collect();
        assert_eq!(unchanged, [true, true, false, true, false]);
        // Another version, another name, another environment, another Link: changes.
        let other_version = Event::LinkRegistered {
            link: link(1),
            environment: Environment::Stage,
            version: "1.1".into(),
        };
        assert!(!reg.changes_nothing(&other_version));
        let other_env = Event::LinkRegistered {
            link: link(1),
            environment: Environment::Production,
            version: "1.0".into(),
        };
        assert!(!reg.changes_nothing(&other_env));
        let mut renamed = identity("AB1", false);
        renamed.practice_name = "Renamed".into();
        let attach = |l: u128, id: SiteIdentity| Event::SiteAttached {
            link: link(l),
            halo_guid: halo(1),
            identity: id,
        };
        assert!(reg.changes_nothing(&attach(1, identity("AB1", false))));
        assert!(!reg.changes_nothing(&attach(1, renamed)));
        assert!(!reg.changes_nothing(&attach(2, identity("AB1", false))));
        let mut branched = identity("AB1", false);
        branched.branch_crns = vec!["BR1".parse().unwrap()];
        assert!(!reg.changes_nothing(&attach(1, branched)));
        // The same branches in another order and with the parent repeated are the
        // same, as the registry normalises them.
        let mut both = identity("AB1", false);
        both.branch_crns = vec!["BR2".parse().unwrap(), "BR1".parse().unwrap()];
        reg.apply(&attach(1, both), NOW).unwrap();
        let mut shuffled = identity("AB1", false);
        shuffled.branch_crns = vec![
            "BR1".parse().unwrap(),
            "AB1".parse().unwrap(),
            "BR2".parse().unwrap(),
        ];
        assert!(reg.changes_nothing(&attach(1, shuffled)));
    }

    #[test]
    fn each_database_is_refused_on_its_own_with_its_reason() {
        let mut reg = Registry::new();
        let r = hello(1, Environment::Production, &[(1, "AB1", false)]);
        r.outcomes(apply(&mut reg, &r)).unwrap();
        // Another Link names the first one's Halo GUID, a demo copy in Production,
        // and one good database: the outcomes follow the Halo GUIDs, not positions.
        let r = hello(
            2,
            Environment::Production,
            &[(1, "AB1", false), (5, "DEMO1", true), (6, "CD6", false)],
        );
        let outcomes = r.outcomes(apply(&mut reg, &r)).unwrap();
        assert_eq!(
            outcomes,
            vec![
                (
                    halo(1),
                    SiteRegistration::Refused(TenancyError::SiteOwnedByOtherLink(halo(1)))
                ),
                (
                    halo(5),
                    SiteRegistration::Refused(TenancyError::DemoInProduction)
                ),
                (halo(6), SiteRegistration::Registered),
            ]
        );
        assert_eq!(reg.site(halo(1)).unwrap().link_guid(), link(1));
        assert!(reg.site(halo(5)).is_none());
    }

    #[test]
    fn a_refused_link_registration_refuses_the_hello() {
        let mut reg = Registry::new();
        let r = Registration::new(
            link(1),
            Environment::Stage,
            "x".repeat(10_000),
            [(halo(1), identity("AB1", false))],
        );
        let refused = r.outcomes(apply(&mut reg, &r)).unwrap_err();
        assert!(
            matches!(
                refused,
                RegistrationRefused::Link(TenancyError::InvalidText { .. })
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .starts_with("link registration refused: ")
        );
    }

    #[test]
    fn an_attach_refusal_wins_over_its_readiness() {
        let r = hello(1, Environment::Stage, &[(1, "AB1", false)]);
        let attach = TenancyError::IdentityChanged(halo(1));
        let already = TenancyError::InvalidTransition {
            halo_guid: halo(1),
            from: SiteStatus::Active,
            to: SiteStatus::Active,
        };
        let outcomes = r
            .outcomes(vec![Ok(()), Err(attach.clone()), Err(already.clone())])
            .unwrap();
        assert_eq!(outcomes, vec![(halo(1), SiteRegistration::Refused(attach))]);
        // Only "already active" is not an error; another transition refusal is.
        let retired = TenancyError::InvalidTransition {
            halo_guid: halo(1),
            from: SiteStatus::Removed,
            to: SiteStatus::Active,
        };
        let outcomes = r
            .outcomes(vec![Ok(()), Ok(()), Err(retired.clone())])
            .unwrap();
        assert_eq!(
            outcomes,
            vec![(halo(1), SiteRegistration::Refused(retired))]
        );
        let outcomes = r.outcomes(vec![Ok(()), Ok(()), Err(already)]).unwrap();
        assert_eq!(outcomes, vec![(halo(1), SiteRegistration::AlreadyActive)]);
    }

    #[test]
    fn results_that_do_not_answer_every_event_register_nothing() {
        let r = hello(
            1,
            Environment::Stage,
            &[(1, "AB1", false), (2, "AB2", false)],
        );
        for n in [0, 1, 4, 6] {
            assert_eq!(
                r.outcomes(vec![Ok(()); n]),
                Err(RegistrationRefused::ResultCount {
                    expected: 5,
                    got: n
                }),
                "{n}"
            );
        }
        let empty = hello(1, Environment::Stage, &[]);
        assert_eq!(empty.outcomes(vec![Ok(())]), Ok(vec![]));
    }
}
