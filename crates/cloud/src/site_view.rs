//! Translation of registry sites into the API's site object.

use halo_ids::Timestamp;
use halo_policy::SiteView;
use halo_tenancy::{Registry, Site, SiteStatus};

use crate::dto::{CatalogueDto, PracticeMetadataDto, SiteDto};
use crate::state::CloudState;

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

/// The API's site object, with its availability at `now` from `state` (the Link's
/// last heartbeat, see [`CloudState::availability_of`]).
pub fn site_dto(registry: &Registry, site: &Site, now: Timestamp, state: &CloudState) -> SiteDto {
    let availability = state.availability_of(site, now);
    let link_version = registry
        .link(site.link_guid())
        .map(|l| l.version().to_owned())
        .unwrap_or_default();
    SiteDto {
        id: site.halo_guid().to_string(),
        pms_type: site.pms_type().to_string(),
        availability: availability.as_str().to_owned(),
        status: site.status().as_str().to_owned(),
        authoritative: site.is_authoritative(),
        halo_link_version: link_version,
        catalogue: site
            .catalogues()
            .iter()
            .map(|c| CatalogueDto {
                name: c.name.to_string(),
                is_default: c.is_default,
            })
            .collect(),
        practice_metadata: PracticeMetadataDto {
            pms_type: site.pms_type().to_string(),
            practice_name: site.practice_name().to_owned(),
            practice_management_site_id: site.crn().to_string(),
            practice_management_version: site.pms_version().to_owned(),
        },
    }
}
