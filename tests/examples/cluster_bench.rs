//! The forwarding cost of a cluster, in one run, printing one JSON line: immediate
//! queries (closed loop, `--concurrency` keep-alive HTTP clients, `--seconds` per
//! scenario after a warm-up) to one practice whose Link is attached to node `n0`:
//!
//! - `one_node.own`: one `halo-cloud` node on PostgreSQL, requests entering it;
//! - `three_nodes.own`: three nodes on PostgreSQL, requests entering `n0`;
//! - `three_nodes.forwarded`: the same cluster, requests entering `n1`, which
//!   forwards each one to `n0` over the signed node-to-node channel;
//!
//! each with p50 and p99 latency (µs) and throughput, plus the ratios forwarded
//! over own and three nodes over one. The nodes are real processes (the harness of
//! `tests/e2e/processes.rs` and `tests/e2e/cluster.rs`, included below), each
//! cluster on its own throw-away PostgreSQL (`initdb`, `fsync=off`); the Link and
//! the clients run in this process. The nodes are the release `halo-cloud`, which
//! this bench finds but does not build:
//!
//! ```text
//! cargo build --release -p halo-cloud
//! cargo run --release -p halo-tests --example cluster_bench -- [--seconds 5] [--concurrency 8]
//! ```
#![allow(clippy::unwrap_used)] // a bench: a failed unwrap is a failed run

#[allow(dead_code)] // the bench uses a part of the e2e fixtures
#[path = "../e2e/fixture.rs"]
mod fixture;

#[allow(dead_code)]
#[path = "../e2e/processes.rs"]
mod processes;

#[allow(dead_code)]
#[path = "../e2e/cluster.rs"]
mod cluster;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::cluster::{Cluster, QUERY, immediate, until_ok};
use crate::processes::Client;

const USAGE: &str = "cluster_bench [--seconds S (default 5)] [--concurrency C (default 8)]";

struct Args {
    seconds: f64,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args {
        seconds: 5.0,
        concurrency: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next();
        match (flag.as_str(), value) {
            ("--seconds", Some(v)) => args.seconds = v.parse().expect(USAGE),
            ("--concurrency", Some(v)) => args.concurrency = v.parse().expect(USAGE),
            _ => panic!("usage: {USAGE}"),
        }
    }
    assert!(args.seconds > 0.0 && args.concurrency > 0, "usage: {USAGE}");
    args
}

/// The release `halo-cloud` next to this example, checked (not built).
fn check_binary() {
    processes::assume_built();
    let exe = processes::binary("halo-cloud");
    if !exe.is_file() {
        eprintln!(
            "cluster_bench: {} is missing; build it first: cargo build --release -p halo-cloud",
            exe.display()
        );
        std::process::exit(2);
    }
    if cfg!(debug_assertions) {
        eprintln!("cluster_bench: a debug build; measure with --release");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = newest(&root.join("crates")).max(newest(&root.join("Cargo.lock")));
    if modified(&exe) < sources {
        eprintln!(
            "cluster_bench: {} is older than the sources and may be stale: cargo build --release -p halo-cloud",
            exe.display()
        );
    }
    eprintln!("cluster_bench: nodes run {}", exe.display());
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file under `path`.
fn newest(path: &Path) -> Option<SystemTime> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return modified(path);
    };
    entries.flatten().filter_map(|e| newest(&e.path())).max()
}

/// The latencies and outcome of one scenario.
struct Load {
    latencies_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Load {
    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> u64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.latencies_us[rank - 1]
    }

    fn qps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn json(&self) -> Value {
        json!({
            "p50_us": self.percentile(0.50),
            "p99_us": self.percentile(0.99),
            "qps": (self.qps() * 10.0).round() / 10.0,
            "requests": self.latencies_us.len(),
            "errors": self.errors,
        })
    }
}

/// `concurrency` clients, each on its own keep-alive connection to `cluster`'s
/// node `entry`, each sending the next query to the first site when the last one
/// answered: a warm-up, then `seconds` recorded.
async fn measure(label: &str, cluster: &Cluster, entry: usize, args: &Args) -> Load {
    let (seconds, concurrency) = (args.seconds, args.concurrency);
    let (base, key, site) = (
        &cluster.nodes[entry].client.base,
        &cluster.key,
        cluster.sites[0],
    );
    let warm_up = Duration::from_secs_f64((seconds / 5.0).min(1.0));
    let window = Duration::from_secs_f64(seconds);
    eprintln!("cluster_bench: {label}: {concurrency} clients, {warm_up:?} warm-up, {window:?}");
    let start = Instant::now();
    let recorded = start + warm_up;
    let end = recorded + window;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = Client {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: base.to_owned(),
        };
        let key = key.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let (status, _, body) = immediate(&client, &key, site).await;
                let took = sent.elapsed();
                if sent < recorded {
                    continue;
                }
                if status == 200 {
                    latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors += 1;
                    first_error.get_or_insert(format!("{status} {body}"));
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut load = Load {
        latencies_us: Vec::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let (latencies, errors, first_error) = worker.await.unwrap();
        load.latencies_us.extend(latencies);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.elapsed = recorded.elapsed();
    load.latencies_us.sort_unstable();
    eprintln!("cluster_bench: {label}: {}", load.json());
    if let Some(error) = &load.first_error {
        eprintln!("cluster_bench: {label}: first error: {error}");
    }
    load
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        return 0.0;
    }
    ((a / b) * 1000.0).round() / 1000.0
}

#[tokio::main]
async fn main() {
    let args = args();
    check_binary();

    eprintln!("cluster_bench: one node on a fresh PostgreSQL, one Link");
    let one = Cluster::start(1, &["SMILE01"]).await;
    let own = &one.nodes[0].client;
    until_ok(own, &one.key, one.sites[0], Duration::from_secs(10)).await;
    let (_, _, sample) = immediate(own, &one.key, one.sites[0]).await;
    let one_own = measure("one_node.own", &one, 0, &args).await;
    assert_eq!(one.sessions(0), 1, "the Link reconnected during the run");
    drop(one);

    eprintln!("cluster_bench: three nodes on a fresh PostgreSQL, the Link on n0");
    let three = Cluster::start(3, &["SMILE01"]).await;
    let (own, other) = (&three.nodes[0].client, &three.nodes[1].client);
    // n1 forwards once it has learnt n0's lease (within one renewal round); until
    // then it answers 503, which the nodes log.
    eprintln!("cluster_bench: waiting until n1 forwards (its 503s meanwhile are expected)");
    for entry in [own, other] {
        until_ok(entry, &three.key, three.sites[0], Duration::from_secs(10)).await;
    }
    let three_own = measure("three_nodes.own", &three, 0, &args).await;
    let forwarded = measure("three_nodes.forwarded", &three, 1, &args).await;
    // Still the first session, on n0: "own" was own and "forwarded" was forwarded.
    assert_eq!(three.sessions(0), 1, "the Link reconnected during the run");
    drop(three);

    let p50 = |l: &Load| l.percentile(0.50) as f64;
    let p99 = |l: &Load| l.percentile(0.99) as f64;
    let line = json!({
        "bench": "cluster_immediate",
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "query": QUERY,
        "response_bytes": sample.len(),
        "one_node": {"own": one_own.json()},
        "three_nodes": {"own": three_own.json(), "forwarded": forwarded.json()},
        "ratios": {
            "forwarded_over_own_p50": ratio(p50(&forwarded), p50(&three_own)),
            "forwarded_over_own_p99": ratio(p99(&forwarded), p99(&three_own)),
            "forwarded_over_own_qps": ratio(forwarded.qps(), three_own.qps()),
            "three_over_one_own_p50": ratio(p50(&three_own), p50(&one_own)),
            "three_over_one_own_qps": ratio(three_own.qps(), one_own.qps()),
            "forwarded_three_over_own_one_p50": ratio(p50(&forwarded), p50(&one_own)),
        },
    });
    println!("{line}");
    let errors = one_own.errors + three_own.errors + forwarded.errors;
    if errors > 0 {
        eprintln!("cluster_bench: {errors} requests did not answer 200");
        std::process::exit(1);
    }
}
