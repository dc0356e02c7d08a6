//! The async path against the immediate path, in one run, printing one JSON line:
//! async throughput for small queries; time to the first page and to the last for a
//! 1 MB and a large (`HALO_BENCH_LARGE_MB`, default 100) result; and the same 1 MB
//! through the immediate path as the baseline.
//!
//! `cargo run --release -p halo-tests --example async_bench`
#![allow(clippy::unwrap_used)] // a bench: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use base64::Engine as _;
use halo_cloud::{CloudConfig, HttpLimits, JobsConfig};
use halo_ids::{Environment, HaloGuid};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, LinkConfig};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token-0123456789";
const MIB: u64 = 1024 * 1024;

struct Bench {
    http: reqwest::Client,
    base: String,
    key: String,
    site: HaloGuid,
}

impl Bench {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}");
        r.json().await.unwrap_or(Value::Null)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(halo_cloud::KEY_HEADER, &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn submit(&self, sql: &str) -> String {
        let (status, created) = self
            .call(
                reqwest::Method::POST,
                &format!("/integrator/sites/{}/queries/async", self.site),
                Some(json!({"command": {"text": sql}})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    async fn wait(&self, id: &str) -> Value {
        loop {
            let (_, q) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/integrator/sites/{}/queries/{id}", self.site),
                    None,
                )
                .await;
            match q["status"].as_str().unwrap() {
                "successful" => return q,
                "queued" | "executing" | "uploading" => {}
                other => panic!("{other}: {q}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn page(&self, id: &str, n: u64) -> usize {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/integrator/sites/{}/queries/{id}/results/{n}", self.site),
                None,
            )
            .await;
        assert_eq!(status, 200);
        base64::engine::general_purpose::STANDARD
            .decode(body["data"].as_str().unwrap())
            .unwrap()
            .len()
    }

    /// (time to the first page in hand, time to the last) for a result of `mb` MiB.
    async fn paged(&self, mb: u64) -> (Duration, Duration, u64) {
        let sql = big_sql(mb);
        let started = Instant::now();
        let id = self.submit(&sql).await;
        let q = self.wait(&id).await;
        let pages = q["result"]["pages"].as_array().unwrap();
        let mut bytes = self.page(&id, 1).await as u64;
        let first = started.elapsed();
        for p in &pages[1..] {
            bytes += self.page(&id, p["pageNumber"].as_u64().unwrap()).await as u64;
        }
        (first, started.elapsed(), bytes)
    }
}

fn big_sql(mb: u64) -> String {
    // About 100 bytes of JSON per row.
    let rows = mb * MIB / 100;
    format!(
        "SELECT a.patient_id, a.first_name, a.last_name, b.patient_id AS other_id, b.first_name AS other_first, b.last_name AS other_last FROM patients a, patients b LIMIT {rows}"
    )
}

#[tokio::main]
async fn main() {
    let large_mb: u64 = std::env::var("HALO_BENCH_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let cloud = halo_cloud::start_with(
        CloudConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: Some(dir.path().join("cloud")),
            admin_token: ADMIN.to_owned(),
            router: RouterConfig::standard(),
            availability: AvailabilityConfig::default(),
            snapshot_every: 1000,
            accept_damaged_log: false,
            max_databases_per_link: halo_cloud::app::MAX_DATABASES_PER_LINK,
            http: HttpLimits::default(),
        },
        JobsConfig {
            tick: Duration::from_millis(50),
            ..JobsConfig::default()
        },
    )
    .await
    .unwrap();
    let mut b = Bench {
        http: reqwest::Client::new(),
        base: format!("http://{}", cloud.addr),
        key: String::new(),
        site: HaloGuid::from_u128(1).unwrap(),
    };
    let mut p = DemoPractice::new("BENCH01".parse().unwrap(), "Bench Dental");
    p.patients = 3000;
    p.appointments_per_patient = 0;
    let db = dir.path().join("db.sqlite");
    generate(&db, &p).unwrap();
    use reqwest::Method;
    let token = b
        .admin(
            Method::POST,
            "/admin/link-credentials",
            json!({"label": "bench", "environment": "stage", "practices": ["D4w:BENCH01"], "demoCopies": false}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let i = "/admin/integrators/bench";
    b.admin(
        Method::POST,
        &format!("{i}/enable"),
        json!({"pmsType": "D4w"}),
    )
    .await;
    b.admin(
        Method::PUT,
        &format!("{i}/components"),
        json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": ["patients"], "allowWrite": false}),
    )
    .await;
    b.admin(
        Method::POST,
        &format!("{i}/practices"),
        json!({"pmsId": "D4w:BENCH01"}),
    )
    .await;
    b.key = b
        .admin(
            Method::POST,
            &format!("{i}/keys"),
            json!({"environment": "stage"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = Agent::prepare(LinkConfig::new(
        format!("ws://{}/link/ws", cloud.addr),
        Environment::Stage,
        token,
        dir.path().join("state.json"),
        vec![db],
    ))
    .unwrap();
    b.site = agent.databases()[0].halo_guid();
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(10))
        .await
        .unwrap();
    let (status, _) = b
        .call(
            Method::POST,
            "/integrator/pair-site?practiceManagementSiteId=BENCH01&practiceManagementName=D4w",
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Small queries: 200, 32 in flight at a time.
    let small = 200usize;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(small);
    for chunk in 0..small / 32 + 1 {
        let n = (small - chunk * 32).min(32);
        let batch: Vec<String> = futures_util::future::join_all((0..n).map(|k| {
            let sql = format!(
                "SELECT first_name FROM patients WHERE patient_id = {}",
                k + 1
            );
            let b = &b;
            async move { b.submit(&sql).await }
        }))
        .await;
        for id in &batch {
            b.wait(id).await;
        }
        ids.extend(batch);
    }
    let small_secs = started.elapsed().as_secs_f64();

    // The immediate baseline: the same 1 MiB result.
    let started = Instant::now();
    let (status, body) = b
        .call(
            Method::POST,
            &format!("/integrator/sites/{}/queries/immediate", b.site),
            Some(json!({"command": {"text": big_sql(1), "executionMode": "reader"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let immediate_1mb = started.elapsed();

    let (first_1, total_1, bytes_1) = b.paged(1).await;
    let (first_l, total_l, bytes_l) = b.paged(large_mb).await;
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    let line = json!({
        "bench": "async_path",
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "async_small_queries": small,
        "async_small_queries_per_s": (small as f64 / small_secs).round(),
        "immediate_1mb_ms": ms(immediate_1mb),
        "async_1mb_bytes": bytes_1,
        "async_1mb_first_page_ms": ms(first_1),
        "async_1mb_total_ms": ms(total_1),
        "async_1mb_total_vs_immediate": (total_1.as_secs_f64() / immediate_1mb.as_secs_f64() * 100.0).round() / 100.0,
        "async_large_bytes": bytes_l,
        "async_large_first_page_ms": ms(first_l),
        "async_large_total_ms": ms(total_l),
        "async_large_mib_per_s": ((bytes_l as f64 / MIB as f64) / total_l.as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{line}");
    link.kill();
    cloud.stop().await;
}
