//! A small driver for registry tests: numbered ids, a ticking clock, and checks.

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};

use crate::{Catalogue, Change, Event, LogEntry, Registry, SiteIdentity, TenancyError};

/// Halo GUID number `n`; the number is in the first and last digits, so that fake
/// CRNs (the first eight characters) differ.
pub(super) fn h(n: u128) -> HaloGuid {
    HaloGuid::from_u128((n << 96) | n).unwrap()
}

pub(super) fn l(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

pub(super) fn crn(s: &str) -> Crn {
    s.parse().unwrap()
}

pub(super) fn identity(parent: &str, branches: &[&str]) -> SiteIdentity {
    SiteIdentity {
        pms_type: PmsType::D4w,
        parent_crn: crn(parent),
        branch_crns: branches.iter().map(|b| crn(b)).collect(),
        practice_name: format!("Practice {parent}"),
        pms_version: "9.6".into(),
        catalogues: vec![Catalogue {
            name: "D4W".into(),
            is_default: true,
        }],
        is_demo: false,
    }
}

pub(super) fn demo_identity(real: &str) -> SiteIdentity {
    SiteIdentity {
        is_demo: true,
        ..identity(real, &[])
    }
}

/// A registry, a clock that ticks one second per event, and the log so far.
#[derive(Debug, Default)]
pub(super) struct Fx {
    pub(super) reg: Registry,
    pub(super) now: u64,
    pub(super) log: Vec<LogEntry>,
}

impl Fx {
    pub(super) fn new() -> Self {
        Self {
            now: 1_000_000,
            ..Self::default()
        }
    }

    pub(super) fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    /// Applies an event; on error checks that nothing changed.
    pub(super) fn try_apply(&mut self, event: Event) -> Result<Vec<Change>, TenancyError> {
        self.now += 1_000;
        let before = self.reg.clone();
        let result = self.reg.apply(&event, self.now());
        match &result {
            Ok(_) => self.log.push(LogEntry::new(self.now(), event)),
            Err(_) => assert_eq!(self.reg, before, "a refused event changed the registry"),
        }
        result
    }

    pub(super) fn apply(&mut self, event: Event) -> Vec<Change> {
        let e = format!("{event:?}");
        self.try_apply(event)
            .unwrap_or_else(|err| panic!("{e} refused: {err}"))
    }

    pub(super) fn link(&mut self, n: u128, environment: Environment) {
        self.apply(Event::LinkRegistered {
            link: l(n),
            environment,
            version: "1.4.2".into(),
        });
    }

    pub(super) fn attach(
        &mut self,
        link: u128,
        site: u128,
        identity: SiteIdentity,
    ) -> Result<Vec<Change>, TenancyError> {
        self.try_apply(Event::SiteAttached {
            link: l(link),
            halo_guid: h(site),
            identity,
        })
    }

    pub(super) fn ready(&mut self, link: u128, site: u128) {
        self.apply(Event::SiteReady {
            link: l(link),
            halo_guid: h(site),
        });
    }

    pub(super) fn promote(&mut self, site: u128) -> Result<Vec<Change>, TenancyError> {
        self.try_apply(Event::Promoted {
            halo_guid: h(site),
            actor: "support:alice".into(),
            reason: "server migration".into(),
        })
    }

    /// The registry rebuilt from the log equals the live one.
    pub(super) fn check_replay(&self) {
        let replayed = Registry::replay(&self.log).unwrap();
        assert_eq!(replayed, self.reg);
    }

    pub(super) fn authoritative(&self, site: u128) -> bool {
        self.reg.site(h(site)).unwrap().is_authoritative()
    }
}
