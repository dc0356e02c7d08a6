//! A large async result (`HALO_LARGE_RESULT_MB`, default 20) pages through a real
//! `halo-cloud` and a real `halo-link` process with bounded memory: neither holds
//! more than a few pages. Prints the peak RSS (VmHWM) of both.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use halo_link::demo::generate;
use reqwest::Method;
use serde_json::json;

use crate::fixture::practice;
use crate::processes::{Client, CloudProcess, binary, free_port, peak_rss};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_pages_through_with_bounded_memory() {
    let target_mb: u64 = std::env::var("HALO_LARGE_RESULT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cloud = CloudProcess::start(&dir.path().join("cloud"), port, &[]);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    cloud.wait_ready(&client.http).await;

    let mut p = practice("SMILE01", "Smile Dental");
    p.patients = 2000;
    p.appointments_per_patient = 0;
    let db = dir.path().join("db.sqlite");
    generate(&db, &p).unwrap();
    let token = client.credential("SMILE01").await;
    let key = client.integrator("SMILE01").await;
    let config = dir.path().join("link.toml");
    std::fs::write(
        &config,
        format!(
            "cloud_url = \"ws://127.0.0.1:{port}/link/ws\"\nenvironment = \"stage\"\ntoken = \"{token}\"\nstate_file = \"state.json\"\n\n[[databases]]\npath = \"db.sqlite\"\n"
        ),
    )
    .unwrap();
    let mut link = Command::new(binary("halo-link"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.path().join("state.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let site = loop {
        if let Ok(text) = std::fs::read_to_string(&state) {
            if let Some(guid) = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v["databases"]
                        .as_object()
                        .and_then(|m| m.values().next().cloned())
                        .or_else(|| v["databases"].as_array().and_then(|a| a.first().cloned()))
                })
                .and_then(|d| {
                    d["haloGuid"]
                        .as_str()
                        .or(d["halo_guid"].as_str())
                        .map(str::to_owned)
                })
            {
                break guid;
            }
        }
        assert!(Instant::now() < deadline, "the link wrote no state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Pair once the Link registered the site.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = client
            .call(
                Method::POST,
                &key,
                "/integrator/pair-site?practiceManagementSiteId=SMILE01&practiceManagementName=D4w",
                None,
            )
            .await
            .unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "pairing failed: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // About 100 bytes of JSON per row of this cross join.
    let rows = target_mb * MIB / 100;
    let sql = format!(
        "SELECT a.patient_id, a.first_name, a.last_name, b.patient_id AS other_id, b.first_name AS other_first, b.last_name AS other_last FROM patients a, patients b LIMIT {rows}"
    );
    let started = Instant::now();
    let (status, created) = client
        .call(
            Method::POST,
            &key,
            &format!("/integrator/sites/{site}/queries/async"),
            Some(json!({"command": {"text": sql}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let path = format!("/integrator/sites/{site}/queries/{id}");
    let deadline = Instant::now() + Duration::from_secs(1800);
    let done = loop {
        let (_, q) = client.call(Method::GET, &key, &path, None).await.unwrap();
        if q["status"] == "successful" {
            break q;
        }
        assert!(
            ["queued", "executing", "uploading"].contains(&q["status"].as_str().unwrap()),
            "{q}"
        );
        assert!(Instant::now() < deadline, "too slow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let produced = started.elapsed();
    let size = done["result"]["size"].as_u64().unwrap();
    let pages = done["result"]["pages"].as_array().unwrap();
    assert_eq!(done["result"]["rows"].as_u64().unwrap(), rows);
    assert!(size >= target_mb * MIB * 8 / 10, "{size} bytes");
    // Page through it all, one page at a time.
    let mut seen_rows = 0u64;
    let mut seen_bytes = 0u64;
    for page in pages {
        let n = page["pageNumber"].as_u64().unwrap();
        let (status, body) = client
            .call(Method::GET, &key, &format!("{path}/results/{n}"), None)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let json = base64::engine::general_purpose::STANDARD
            .decode(body["data"].as_str().unwrap())
            .unwrap();
        seen_bytes += json.len() as u64;
        let page_rows: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
        seen_rows += page_rows.len() as u64;
    }
    assert_eq!((seen_rows, seen_bytes), (rows, size));
    let cloud_rss = peak_rss(cloud.pid());
    let link_rss = peak_rss(link.id());
    let line = json!({
        "test": "large_result",
        "result_bytes": size,
        "pages": pages.len(),
        "seconds_to_successful": produced.as_secs_f64(),
        "cloud_peak_rss_mib": cloud_rss / MIB,
        "link_peak_rss_mib": link_rss / MIB,
    });
    println!("{line}");
    eprintln!("{line}");
    let _ = link.kill();
    let _ = link.wait();
    // A few 4 MiB pages in flight, plus each process's own working set: far less
    // than the result, whatever its size.
    let bound = 160 * MIB;
    assert!(cloud_rss < bound, "cloud peak RSS {} MiB", cloud_rss / MIB);
    assert!(link_rss < bound, "link peak RSS {} MiB", link_rss / MIB);
}
