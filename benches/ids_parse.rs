//! Identifier parsing throughput.
//!
//! Run: `cargo bench -p halo-benches --bench ids_parse`. The baseline is
//! `uuid::Uuid::parse_str` on the same text, which does less validation.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use halo_ids::{Crn, HaloGuid, PmsId};

fn parse(c: &mut Criterion) {
    let braced = "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}";
    let hyphenated = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let mut g = c.benchmark_group("ids_parse");
    g.bench_function("baseline_uuid_parse_str", |b| {
        b.iter(|| uuid::Uuid::parse_str(black_box(hyphenated)))
    });
    g.bench_function("halo_guid_hyphenated", |b| {
        b.iter(|| black_box(hyphenated).parse::<HaloGuid>())
    });
    g.bench_function("halo_guid_braced", |b| {
        b.iter(|| black_box(braced).parse::<HaloGuid>())
    });
    g.bench_function("crn", |b| b.iter(|| black_box(" ab12345 ").parse::<Crn>()));
    g.bench_function("pms_id", |b| {
        b.iter(|| black_box("Best Practice:ab12345").parse::<PmsId>())
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
