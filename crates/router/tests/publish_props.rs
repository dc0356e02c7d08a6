//! Property test of the writer's invariants over arbitrary publish/unpublish sequences:
//! the table never holds two authoritative records in one group, and an authoritative
//! record's epoch never goes below one already published for its group.

use std::collections::HashMap;
use std::sync::Arc;

use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, PmsType};
use halo_router::{Router, RouterConfig, SiteRoute};
use halo_tenancy::{Epoch, SiteStatus};
use proptest::prelude::*;

const SITES: u128 = 6;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        site: u128,
        group: u8,
        authoritative: bool,
        active: bool,
        epoch: u64,
    },
    Unpublish(u128),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SITES, 0u8..2, any::<bool>(), any::<bool>(), 0u64..6).prop_map(
            |(site, group, authoritative, active, epoch)| Op::Publish {
                site,
                group,
                authoritative,
                active,
                epoch
            }
        ),
        1 => (0..SITES).prop_map(Op::Unpublish),
    ]
}

fn halo(n: u128) -> HaloGuid {
    HaloGuid::from_u128(100 + n).expect("non-nil")
}

fn pms_id(group: u8) -> PmsId {
    PmsId::new(
        PmsType::D4w,
        format!("G{group}").parse().expect("valid crn"),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn at_most_one_holder_per_group_and_epochs_never_go_back(ops in prop::collection::vec(op(), 1..40)) {
        let router = Router::new(RouterConfig::standard());
        let mut floor: HashMap<PmsId, Epoch> = HashMap::new();
        for op in ops {
            match op {
                Op::Publish { site, group, authoritative, active, epoch } => {
                    let _ = router.publish(SiteRoute {
                        halo_guid: halo(site),
                        link: LinkGuid::from_u128(1 + site).expect("non-nil"),
                        environment: Environment::Stage,
                        pms_id: pms_id(group),
                        status: if active { SiteStatus::Active } else { SiteStatus::Initialising },
                        authoritative,
                        epoch: Epoch::new(epoch),
                        catalogues: Arc::from(Vec::new()),
                    });
                }
                Op::Unpublish(site) => router.unpublish(halo(site)),
            }
            let mut holders: HashMap<PmsId, u32> = HashMap::new();
            for n in 0..SITES {
                if let Some(route) = router.resolve(halo(n)) {
                    if route.is_authoritative() {
                        let group = route.site().pms_id;
                        *holders.entry(group).or_default() += 1;
                        let seen = floor.entry(group).or_insert(route.epoch());
                        prop_assert!(route.epoch() >= *seen, "epoch went back in {group}");
                        *seen = route.epoch();
                    }
                }
            }
            for (group, count) in holders {
                prop_assert!(count <= 1, "{count} holders in {group}");
            }
        }
    }
}
