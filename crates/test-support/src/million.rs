//! The 1 000 000-site mix shared by `benches/registry_build.rs` and `halo-tenancy`'s
//! `snapshot_1m` example: 100 clusters of 1 000 databases, 800 000 single servers
//! (every fifth with two branch CRNs) and 100 000 backups sharing a primary's CRN.

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType};
use halo_tenancy::{Catalogue, Event, SiteIdentity};

/// Sites in the mix.
pub const SITES: u32 = 1_000_000;
/// Multi-tenant clusters.
pub const CLUSTERS: u32 = 100;
/// Databases per cluster.
pub const PER_CLUSTER: u32 = 1_000;
/// Backup servers.
pub const BACKUPS: u32 = 100_000;

/// The parent CRN of database `i` (`C` and eight digits).
pub fn crn(i: u32) -> Crn {
    format!("C{i:08}")
        .parse()
        .expect("C and digits is a valid CRN")
}

/// Branch CRN `j` of database `i`.
pub fn branch(i: u32, j: u32) -> Crn {
    format!("B{i:08}{j}")
        .parse()
        .expect("B and digits is a valid CRN")
}

/// The Halo GUID of database `i`, spread like random GUIDs.
pub fn halo(i: u32) -> HaloGuid {
    HaloGuid::from_u128((u128::from(i) + 1) * 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
        .expect("an odd constant times a non-zero u32 is never 0 mod 2^128")
}

/// The GUID of Link `i`.
pub fn link(i: u32) -> LinkGuid {
    LinkGuid::from_u128((u128::from(i) + 1) * 0xD1B5_4A32_D192_ED03_A3C9_1B2E_4F5D_6A7B)
        .expect("an odd constant times a non-zero u32 is never 0 mod 2^128")
}

/// A D4W database whose parent CRN is [`crn`]`(parent)`, with `branches` branch CRNs.
pub fn identity(parent: u32, branches: u32) -> SiteIdentity {
    SiteIdentity {
        pms_type: PmsType::D4w,
        parent_crn: crn(parent),
        branch_crns: (0..branches).map(|j| branch(parent, j)).collect(),
        practice_name: format!("Practice number {parent}"),
        pms_version: "9.6.1".into(),
        catalogues: vec![Catalogue {
            name: "D4W".into(),
            is_default: true,
        }],
        is_demo: false,
    }
}

/// Every database of the mix: (database index, Link index, identity).
pub fn databases() -> impl Iterator<Item = (u32, u32, SiteIdentity)> {
    let clustered = CLUSTERS * PER_CLUSTER;
    let singles = SITES - clustered - BACKUPS;
    let cluster = (0..clustered).map(|i| (i, i / PER_CLUSTER, identity(i, 0)));
    let single = (clustered..clustered + singles).map(move |i| {
        let branches = if i % 5 == 0 { 2 } else { 0 };
        (i, CLUSTERS + (i - clustered), identity(i, branches))
    });
    let backup = (0..BACKUPS).map(move |b| {
        let i = clustered + singles + b;
        let primary = clustered + b * (singles / BACKUPS);
        let branches = if primary % 5 == 0 { 2 } else { 0 };
        (i, CLUSTERS + singles + b, identity(primary, branches))
    });
    cluster.chain(single).chain(backup)
}

/// Number of Links in the mix (one per cluster, single server and backup).
pub fn link_count() -> u32 {
    CLUSTERS + (SITES - CLUSTERS * PER_CLUSTER - BACKUPS) + BACKUPS
}

/// The whole log, lazily.
pub fn events() -> impl Iterator<Item = Event> {
    let register = (0..link_count()).map(|k| Event::LinkRegistered {
        link: link(k),
        environment: Environment::Production,
        version: "1.4.2".into(),
    });
    let attach = databases().flat_map(|(i, k, identity)| {
        [
            Event::SiteAttached {
                link: link(k),
                halo_guid: halo(i),
                identity,
            },
            Event::SiteReady {
                link: link(k),
                halo_guid: halo(i),
            },
        ]
    });
    let heartbeat = (0..link_count()).map(|k| Event::Heartbeat { link: link(k) });
    register.chain(attach).chain(heartbeat)
}
