//! Round-trip latency and throughput of small immediate queries over loopback:
//! integrator HTTP -> Cloud -> WebSocket -> Link -> SQLite and back, against a
//! direct SQLite query of the same statement on an open connection (the baseline)
//! measured in the same run.
//!
//! `cargo run --release -p halo-demo --example loopback_bench -- [QUERIES] [CONCURRENCY]`
//! (defaults 4000 and 8). Prints one JSON line.
#![allow(clippy::unwrap_used)] // a benchmark: any failure aborts the run

use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_demo as demo;

const SQL: &str = "SELECT patient_id, first_name, last_name FROM patients WHERE patient_id = 7";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn direct(path: &std::path::Path, n: usize) -> (Vec<Duration>, Duration) {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut stmt = conn.prepare_cached(SQL).unwrap();
        let rows: Vec<serde_json::Value> = stmt
            .query_map([], |r| {
                Ok(serde_json::json!({"patient_id": r.get::<_, i64>(0)?, "first_name": r.get::<_, String>(1)?, "last_name": r.get::<_, String>(2)?}))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(serde_json::to_vec(&rows).unwrap());
        lat.push(t.elapsed());
    }
    (lat, start.elapsed())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let queries: usize = args.get(1).map_or(4000, |a| a.parse().unwrap());
    let concurrency: usize = args.get(2).map_or(8, |a| a.parse().unwrap());
    let demo = demo::start_demo("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let site = demo.sites[0].halo_guid;
    let db_path = demo.work_dir.join("practice-0.sqlite");
    let url = format!(
        "http://{}/integrator/sites/{site}/queries/immediate",
        demo.cloud.addr
    );
    let body =
        serde_json::json!({"command": {"text": SQL, "executionMode": "reader", "type": "text"}});
    let client = reqwest::Client::new();
    // Warm up.
    for _ in 0..200 {
        let r = client
            .post(&url)
            .header(halo_cloud::KEY_HEADER, &demo.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let (mut base_lat, base_total) = direct(&db_path, queries);
    let per_task = queries / concurrency;
    let lat = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(queries)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, lat) = (
            client.clone(),
            url.clone(),
            demo.key.clone(),
            body.clone(),
            Arc::clone(&lat),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header(halo_cloud::KEY_HEADER, &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let _ = r.bytes().await.unwrap();
                mine.push(t.elapsed());
            }
            lat.lock().extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = start.elapsed();
    let mut lat = lat.lock().clone();
    lat.sort();
    base_lat.sort();
    let done = lat.len() as f64;
    let e2e_qps = done / total.as_secs_f64();
    let base_qps = queries as f64 / base_total.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "queries": lat.len(),
            "concurrency": concurrency,
            "e2e_p50_us": percentile(&lat, 0.50),
            "e2e_p99_us": percentile(&lat, 0.99),
            "e2e_qps": e2e_qps,
            "sqlite_p50_us": percentile(&base_lat, 0.50),
            "sqlite_p99_us": percentile(&base_lat, 0.99),
            "sqlite_qps": base_qps,
            "p50_ratio": percentile(&lat, 0.50) / percentile(&base_lat, 0.50),
            "qps_ratio": e2e_qps / base_qps,
        })
    );
    let _ = demo.link.shutdown().await;
    demo.cloud.stop().await;
}
