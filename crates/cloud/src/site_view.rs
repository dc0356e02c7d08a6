//! Translation of registry sites into the API's site object.

use halo_ids::{LinkGuid, Timestamp};
use halo_policy::SiteView;
use halo_tenancy::{Availability, Registry, Site, SiteStatus};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::App;
use crate::dto::{
    AvailabilityDto, CatalogueDto, PracticeMetadataDto, SiteDto, SiteStatusDto, rfc3339,
};

/// The policy's view of a registry site.
pub fn policy_view(site: &Site) -> SiteView {
    SiteView {
        halo_guid: site.halo_guid(),
        environment: site.environment(),
        pms_id: site.pms_id(),
        authoritative: site.is_authoritative(),
        active: site.status() == SiteStatus::Active,
    }
}

/// Each Link's own clock at its last heartbeat (the site's `clientTimestampUTC`).
/// Like heartbeats, kept in memory only: after a restart a Link has no client
/// timestamp until it beats again, which is the truth.
///
/// Each Link has its own slot, an atomic its session holds ([`ClientClocks::of`]):
/// a heartbeat stores into it and takes no lock.
#[derive(Debug, Default)]
pub struct ClientClocks {
    at: RwLock<HashMap<LinkGuid, Arc<ClientClock>>>,
}

/// One Link's clock at its last heartbeat (milliseconds; Relaxed: a lone value that
/// guards nothing).
#[derive(Debug)]
pub struct ClientClock(AtomicU64);

/// No clock kept: no heartbeat yet, or one RFC 3339 cannot write (never a kept
/// value, as those are at most [`crate::dto::MAX_RFC3339_MILLIS`]).
const NO_CLOCK: u64 = u64::MAX;

impl ClientClock {
    /// Records the Link's clock of a heartbeat. The Link controls the value: one
    /// RFC 3339 cannot write (past year 9999) is not kept.
    pub fn record(&self, at: Timestamp) {
        let ms = at.as_millis();
        let kept = if ms > crate::dto::MAX_RFC3339_MILLIS {
            NO_CLOCK
        } else {
            ms
        };
        self.0.store(kept, Ordering::Relaxed);
    }

    fn last(&self) -> Option<Timestamp> {
        match self.0.load(Ordering::Relaxed) {
            NO_CLOCK => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }
}

impl ClientClocks {
    /// The Link's slot, made on first use (a session takes it once, at attach).
    pub fn of(&self, link: LinkGuid) -> Arc<ClientClock> {
        if let Some(clock) = self.at.read().get(&link) {
            return Arc::clone(clock);
        }
        let mut clocks = self.at.write();
        Arc::clone(
            clocks
                .entry(link)
                .or_insert_with(|| Arc::new(ClientClock(AtomicU64::new(NO_CLOCK)))),
        )
    }

    /// Records the Link's clock of a heartbeat (see [`ClientClock::record`]).
    pub fn record(&self, link: LinkGuid, at: Timestamp) {
        self.of(link).record(at);
    }

    /// The Link's clock at its last heartbeat, if one arrived since the start.
    pub fn last(&self, link: LinkGuid) -> Option<Timestamp> {
        self.at.read().get(&link).and_then(|c| c.last())
    }
}

fn availability(a: Availability) -> AvailabilityDto {
    match a {
        Availability::Online => AvailabilityDto::Online,
        Availability::Offline => AvailabilityDto::Offline,
        Availability::Unreachable => AvailabilityDto::Unreachable,
    }
}

fn status(s: SiteStatus) -> SiteStatusDto {
    match s {
        SiteStatus::Initialising => SiteStatusDto::Initialising,
        SiteStatus::Active => SiteStatusDto::Active,
        SiteStatus::Removed => SiteStatusDto::Removed,
        SiteStatus::Uninstalled => SiteStatusDto::Uninstalled,
    }
}

/// The API's site object, with its availability at `now` (the Link's last
/// heartbeat, see [`crate::state::CloudState::availability_of`]).
pub fn site_dto(registry: &Registry, site: &Site, now: Timestamp, app: &App) -> SiteDto {
    let link_version = registry
        .link(site.link_guid())
        .map(|l| l.version().to_owned())
        .unwrap_or_default();
    let crn = site.crn().to_string();
    let heard = app.state.router().last_heard(site.link_guid());
    SiteDto {
        id: site.halo_guid().to_string(),
        pms_type: site.pms_type().into(),
        availability: availability(app.state.availability_of(site, now)),
        status: status(site.status()),
        halo_link_version: link_version,
        // The site's own time in the registry is when its Link last announced it
        // (re-reading the practice's identity from the database).
        enriched_at: rfc3339(site.last_heard()),
        catalogue: site
            .catalogues()
            .iter()
            .map(|c| CatalogueDto {
                name: c.name.to_string(),
                is_default: c.is_default,
            })
            .collect(),
        practice_metadata: PracticeMetadataDto {
            pms_type: site.pms_type().into(),
            practice_name: site.practice_name().to_owned(),
            practice_management_site_id: crn.clone(),
            practice_management_version: site.pms_version().to_owned(),
        },
        name: site.practice_name().to_owned(),
        practice_management_site_id: crn,
        practice_management_name: site.pms_type().into(),
        practice_management_version: site.pms_version().to_owned(),
        created_at: site.created_at().map(rfc3339),
        authoritative: site.is_authoritative(),
        client_timestamp_utc: app.client_clocks.last(site.link_guid()).map(rfc3339),
        heartbeat_timestamp_utc: heard.filter(|t| t.as_millis() > 0).map(rfc3339),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_links_clock_is_kept_only_when_it_can_be_written() {
        let clocks = ClientClocks::default();
        let link = LinkGuid::from_u128(7).unwrap();
        assert_eq!(clocks.last(link), None);
        clocks.record(link, Timestamp::from_millis(1_000));
        assert_eq!(clocks.last(link), Some(Timestamp::from_millis(1_000)));
        // A hostile Link's clock past year 9999 is dropped, not kept or formatted.
        clocks.record(link, Timestamp::from_millis(u64::MAX));
        assert_eq!(clocks.last(link), None);
        // A session's slot and the map are one value.
        let slot = clocks.of(link);
        slot.record(Timestamp::from_millis(2_000));
        assert_eq!(clocks.last(link), Some(Timestamp::from_millis(2_000)));
        assert_eq!(clocks.last(LinkGuid::from_u128(8).unwrap()), None);
    }
}
