//! The whole path, end to end: wrk → HTTP → policy → router → WebSocket → a
//! **separate Link process** (the `halo-link` binary) → SQLite → back, against two
//! baselines measured in the same run:
//!
//! - throughput: the Cloud's own `GET /healthz`, with the same client (wrk), the
//!   same threads and connections, alternated with the query runs (`rounds` times
//!   each; the ratio reported is the median of the per-round ratios);
//! - throughput floor (`floor_over_healthz`): the same client, with the query's
//!   request, against a bare axum endpoint on this runtime that does one WebSocket
//!   round trip per request to a separate echo process (frames the size of a job
//!   and of its answer) and answers: the prescribed transport with nothing of ours
//!   in it, wrk'd in the same rounds. Our ratio can reach at most about this one;
//!   `query_over_floor` is our throughput over the floor's;
//! - latency: one connection, one request at a time; the p50 overhead is the
//!   query's p50 minus the p50 of running the same statement directly on SQLite
//!   (an open read-only connection, a cached prepared statement, the rows turned
//!   into the same JSON).
//!
//! `cpu_us_per_request` gives the CPU each process spent per request over the rounds
//! (this process, which serves the Cloud and the floor's endpoint; the Link or the
//! floor's echo process; wrk), read from `/proc`: a query at twice `/healthz`'s total
//! is what 0.5 × `/healthz` throughput would need on these cores.
//!
//! It also prints a per-stage breakdown measured in process (`stages_us`): what
//! each step of the path costs on its own, so that the remainder is the transport
//! (HTTP, WebSocket, the hops between tasks, threads and processes).
//!
//! And the transport floor, measured in the same run (`floor_us`): the one-connection
//! p50 of `/healthz` (an HTTP round trip through the Cloud's serve loop and wrk) plus
//! the p50 of a WebSocket round trip between this process and a child process (this
//! binary again, `--ws-echo URL`: a tokio-tungstenite client that sends each frame
//! back, as the Link does with its answer), with frames the size of a job and of
//! its answer. The query's p50 minus the direct SQLite p50 minus that floor is the
//! work of the path itself (`p50_overhead_over_floor_us`).
//!
//! ```sh
//! apt-get install wrk   # once
//! cargo build --release -p halo-link --bin halo-link
//! cargo run --release -p halo-demo --example e2e_bench -- [--secs 3] [--connections 8] [--threads 2] [--rounds 3] [--workers N]
//! ```
//! Prints one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halo_cloud::admin::new_secret;
use halo_cloud::app::{CloudConfig, HttpLimits, MAX_DATABASES_PER_LINK, start};
use halo_cloud::clock::now;
use halo_cloud::record::CredentialEvent;
use halo_credentials::Scope;
use halo_ids::{Crn, Environment, PmsId, PmsType};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, LinkConfig};
use halo_policy::{IntegratorId, KeyHash, ReadAccess};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;

/// mimalloc: glibc's malloc and free were about a tenth of the in-process Cloud's samples on
/// the query path (PERFORMANCE.md, "Whole path").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SQL: &str = "SELECT patient_id, first_name, last_name FROM patients WHERE patient_id = 7";
const TABLES: [&str; 4] = ["patients", "providers", "appointments", "treatments"];

struct Args {
    secs: u64,
    connections: u32,
    threads: u32,
    rounds: usize,
    link: PathBuf,
    /// Where to write a `perf record` of the Cloud and the Link under query load.
    perf: Option<PathBuf>,
    /// The Cloud's runtime: worker threads (`0`: tokio's default, one per core), as
    /// `halo-cloud serve --workers`.
    workers: usize,
}

fn args() -> Args {
    let mut out = Args {
        secs: 3,
        connections: 8,
        threads: 2,
        rounds: 3,
        link: std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("halo-link"),
        perf: None,
        workers: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => out.secs = value.parse().unwrap(),
            "--connections" => out.connections = value.parse().unwrap(),
            "--threads" => out.threads = value.parse().unwrap(),
            "--rounds" => out.rounds = value.parse().unwrap(),
            "--link" => out.link = value.into(),
            "--perf" => out.perf = Some(value.into()),
            "--workers" => out.workers = value.parse().unwrap(),
            "--ws-echo" => {
                ws_echo(&value);
                std::process::exit(0);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    out
}

/// One wrk run's summary, as the Lua `done` callback prints it.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// CPU seconds from `/proc/PID/stat`: the process's own, and that of its children
/// it has waited for (wrk, once a run ended).
fn cpu_secs(pid: u32, tick: f64) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which may hold spaces): state is field 3;
    // utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 4 {
        return (0.0, 0.0);
    }
    ((f[0] + f[1]) / tick, (f[2] + f[3]) / tick)
}

/// Clock ticks per second of `/proc`'s CPU times.
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU spent by each process over wrk runs of one kind, summed over the rounds.
#[derive(Default)]
struct Spent {
    requests: f64,
    /// This process: the Cloud (and the floor's endpoint).
    cloud: f64,
    /// The Link, or the floor's echo process.
    peer: f64,
    wrk: f64,
}

impl Spent {
    /// Runs `run` (one wrk run) and adds what each process spent during it; `peer`
    /// is the process on the other side of the WebSocket, if any.
    fn measure(&mut self, peer: Option<u32>, tick: f64, run: impl FnOnce() -> Wrk) -> Wrk {
        let me = std::process::id();
        let (own0, kids0) = cpu_secs(me, tick);
        let peer0 = peer.map_or(0.0, |p| cpu_secs(p, tick).0);
        let out = run();
        let (own1, kids1) = cpu_secs(me, tick);
        let peer1 = peer.map_or(0.0, |p| cpu_secs(p, tick).0);
        self.requests += out.requests;
        self.cloud += own1 - own0;
        self.wrk += kids1 - kids0;
        self.peer += peer1 - peer0;
        out
    }

    /// µs of CPU per request of each process (the peer under `peer`'s name, if
    /// any), and their total.
    fn per_request(&self, peer: Option<&str>) -> serde_json::Value {
        let us = |s: f64| (s * 1e6 / self.requests.max(1.0) * 10.0).round() / 10.0;
        let mut out = serde_json::json!({
            "cloud": us(self.cloud),
            "wrk": us(self.wrk),
            "total": (self.total_us() * 10.0).round() / 10.0,
        });
        if let Some(peer) = peer {
            out[peer] = us(self.peer).into();
        }
        out
    }

    /// µs of CPU per request of all three processes together.
    fn total_us(&self) -> f64 {
        (self.cloud + self.peer + self.wrk) * 1e6 / self.requests.max(1.0)
    }
}

/// The Lua script: the request (for the query, a POST) and a `done` callback that
/// prints one parseable line and fails the run on any error or non-2xx answer.
fn lua(request: Option<(&str, &str)>) -> String {
    let mut s = String::new();
    if let Some((key, body)) = request {
        s.push_str("wrk.method = \"POST\"\n");
        s.push_str(&format!("wrk.body = [[{body}]]\n"));
        s.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
        s.push_str(&format!(
            "wrk.headers[\"{}\"] = \"{key}\"\n",
            halo_cloud::KEY_HEADER
        ));
    }
    s.push_str(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON %d %d %d %.1f %.1f %d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), e.status))
end
"#,
    );
    s
}

fn wrk(script: &Path, url: &str, threads: u32, connections: u32, secs: u64) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk not found: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .unwrap_or_else(|| panic!("wrk printed no summary: {text}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f[2], 0.0, "socket errors in the run: {text}");
    assert_eq!(f[5], 0.0, "non-2xx answers in the run: {text}");
    Wrk {
        requests: f[0],
        rps: f[0] / (f[1] / 1e6),
        p50_us: f[3],
        p99_us: f[4],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The statement run directly: an open read-only connection, a cached prepared
/// statement, rows to the same compact JSON. Returns the p50 in µs.
fn direct_p50(path: &Path, n: usize) -> f64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut lat = Vec::with_capacity(n);
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
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    median(lat)
}

/// Mean µs of `f` over `n` calls.
fn mean_us(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The child side of the WebSocket floor: connects to `url` and sends every text
/// frame back, until the socket closes.
fn ws_echo(url: &str) {
    use futures_util::{SinkExt as _, StreamExt as _};
    let url = url.to_owned();
    // One thread, as `halo-link` runs.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                // As the Link connects: Nagle off.
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
                    .await
                    .unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        // An answer of its own, about the size of this bench's result
                        // frame, led by the frame's id (its text up to the first space).
                        let id = t.as_str().split(' ').next().unwrap_or_default();
                        let answer = format!(
                            "{id} {{\"echo\":{},\"data\":\"{}\"}}",
                            t.len(),
                            "A".repeat(160)
                        );
                        if ws.send(answer.into()).await.is_err() {
                            break;
                        }
                    }
                }
            });
    })
    .join()
    .unwrap();
}

/// A WebSocket accepted on this runtime from a child process (this binary again,
/// `--ws-echo`) that answers each frame, and that process.
async fn echo_peer() -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    LinkProcess,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let child = LinkProcess(
        Command::new(std::env::current_exe().unwrap())
            .args(["--ws-echo", &url])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    (tokio_tungstenite::accept_async(tcp).await.unwrap(), child)
}

/// The p50, in µs, of `n` WebSocket round trips between this process (the server,
/// on this runtime, as the Cloud is) and a child process that answers each frame.
/// `frame` is sent each time (a job's size).
async fn ws_round_trip_p50(frame: &str, n: usize) -> f64 {
    use futures_util::{SinkExt as _, StreamExt as _};
    let (mut ws, child) = echo_peer().await;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        ws.send(frame.to_owned().into()).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        std::hint::black_box(answer);
        if i >= n / 10 {
            // the first tenth warms up
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = ws.close(None).await;
    drop(child);
    median(lat)
}

/// The throughput floor's server: an axum endpoint on this runtime (axum, hyper and
/// tokio, as the Cloud) whose every request does one WebSocket round trip, with
/// `frame` (a job's size), to a separate process (this binary again, `--ws-echo`)
/// and answers with that process's frame (a result's size). The request task
/// writes its frame itself, under a lock on the socket's write half, and one reader
/// task hands each answer to its request by id: about the least a request that
/// waits on another process over a WebSocket costs on this stack, with nothing of
/// ours in it (no policy, routing, job queue, Link or SQLite). `POST /floor`.
async fn floor_server(frame: &str) -> (std::net::SocketAddr, LinkProcess) {
    use futures_util::{SinkExt as _, StreamExt as _};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::Message;

    let (ws, child) = echo_peer().await;
    let (sink, mut stream) = ws.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let pending: Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<String>>>> = Arc::default();
    let answers = Arc::clone(&pending);
    tokio::spawn(async move {
        while let Some(Ok(Message::Text(t))) = stream.next().await {
            let (id, answer) = t.as_str().split_once(' ').unwrap();
            if let Some(tx) = answers.lock().remove(&id.parse::<u64>().unwrap()) {
                let _ = tx.send(answer.to_owned());
            }
        }
    });
    let next = Arc::new(AtomicU64::new(1));
    let frame: Arc<str> = frame.into();
    let app = axum::Router::new().route(
        "/floor",
        axum::routing::post(move |_body: axum::body::Bytes| {
            let (sink, pending, next, frame) = (
                Arc::clone(&sink),
                Arc::clone(&pending),
                Arc::clone(&next),
                Arc::clone(&frame),
            );
            async move {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                pending.lock().insert(id, tx);
                sink.lock()
                    .await
                    .send(Message::text(format!("{id} {frame}")))
                    .await
                    .unwrap();
                rx.await.unwrap()
            }
        }),
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
    (addr, child)
}

struct LinkProcess(Child);

impl Drop for LinkProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args = args();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        runtime.worker_threads(args.workers);
    }
    runtime.enable_all().build().unwrap().block_on(run(args));
}

async fn run(args: Args) {
    assert!(
        args.link.exists(),
        "{} not found: cargo build --release -p halo-link --bin halo-link",
        args.link.display()
    );
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let crn: Crn = "BENCH01".parse().unwrap();
    let db_path = dir.join("practice.sqlite");
    generate(&db_path, &DemoPractice::new(crn, "Bench Dental")).unwrap();

    let cloud = start(CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.join("cloud")),
        admin_token: new_secret("adm_"),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 10_000,
        accept_damaged_log: false,
        max_databases_per_link: MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    })
    .await
    .unwrap();
    let state = &cloud.app.state;
    let pms_id = PmsId::new(PmsType::D4w, crn);

    // The Link's credential and config; `prepare` writes its state file, so the
    // process started below serves the same Halo GUID.
    let token = new_secret("lnk_");
    state
        .apply_credential(
            CredentialEvent::Issued {
                token_hash: KeyHash::of(&token),
                label: "bench link".to_owned(),
                scope: Some(Scope {
                    practices: [pms_id].into_iter().collect(),
                    ..Scope::demo_only()
                }),
                actor: Some("bench".to_owned()),
            },
            now(),
        )
        .await
        .unwrap();
    let config_path = dir.join("link.toml");
    std::fs::write(
        &config_path,
        format!(
            "cloud_url = \"ws://{}/link/ws\"\nenvironment = \"stage\"\ntoken = \"{token}\"\n\
             state_file = \"link-state.json\"\nheartbeat_secs = 5\nmax_concurrent_jobs = 8\n\
             [[databases]]\npath = \"practice.sqlite\"\n",
            cloud.addr
        ),
    )
    .unwrap();
    let halo_guid = {
        let agent = Agent::prepare(LinkConfig::load(&config_path).unwrap()).unwrap();
        agent.databases()[0].halo_guid()
    };

    let integrator: IntegratorId = "bench".parse().unwrap();
    let key = new_secret("stg_");
    for event in (ReadAccess {
        integrator: &integrator,
        pms_type: PmsType::D4w,
        environment: Environment::Stage,
        key: &key,
        catalogues: &["d4w"],
        tables: &TABLES,
    })
    .events([pms_id])
    {
        state.apply_policy(event, now()).await.unwrap();
    }

    let link = LinkProcess(
        Command::new(&args.link)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{}", cloud.addr);
    let query_url = format!("{base}/integrator/sites/{halo_guid}/queries/immediate");
    let body =
        serde_json::json!({"command": {"text": SQL, "executionMode": "reader", "type": "text"}})
            .to_string();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .post(&query_url)
            .header(halo_cloud::KEY_HEADER, &key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["result"]["rows"], 1, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link did not serve within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let health_lua = dir.join("health.lua");
    let query_lua = dir.join("query.lua");
    std::fs::write(&health_lua, lua(None)).unwrap();
    std::fs::File::create(&query_lua)
        .unwrap()
        .write_all(lua(Some((&key, &body))).as_bytes())
        .unwrap();
    let health_url = format!("{base}/healthz");
    // A frame the size of the job this bench sends, for both WebSocket floors.
    let job_frame = halo_protocol::encode(&halo_protocol::CloudToLink::QueryJob(
        halo_protocol::QueryJob {
            query_id: 1,
            halo_guid,
            epoch: halo_ids::Epoch::new(1),
            timeout_ms: 30_000,
            queue_timeout_ms: None,
            catalogue: None,
            mode: halo_ids::ExecutionMode::Reader,
            command: SQL.to_owned(),
            procedure: None,
            parameters: Vec::new(),
            allowlist: halo_protocol::Allowlist {
                tables: TABLES.iter().map(|t| (*t).to_owned()).collect(),
                procedures: Vec::new(),
                allow_write: false,
            },
        },
    ))
    .unwrap();
    let (floor_addr, floor_child) = floor_server(&job_frame).await;
    let floor_url = format!("http://{floor_addr}/floor");
    let load_before = loadavg();

    // wrk runs as a child process: keep the tokio workers free for the Cloud.
    let (health_lua2, query_lua2, health_url2, query_url2) = (
        health_lua.clone(),
        query_lua.clone(),
        health_url.clone(),
        query_url.clone(),
    );
    let (t, c, secs, rounds) = (args.threads, args.connections, args.secs, args.rounds);
    let (link_pid, echo_pid, tick) = (link.0.id(), floor_child.0.id(), clock_tick());
    let runs = tokio::task::spawn_blocking(move || {
        // Warm up the three paths.
        wrk(&health_lua2, &health_url2, t, c, 1);
        wrk(&query_lua2, &query_url2, t, c, 1);
        wrk(&query_lua2, &floor_url, t, c, 1);
        let mut rounds_out = Vec::new();
        let mut floors = Vec::new();
        let mut spent: [Spent; 3] = Default::default();
        for _ in 0..rounds {
            let h = spent[0].measure(None, tick, || wrk(&health_lua2, &health_url2, t, c, secs));
            let q = spent[1].measure(Some(link_pid), tick, || {
                wrk(&query_lua2, &query_url2, t, c, secs)
            });
            // The floor gets the query's request (same script, same client).
            let f = spent[2].measure(Some(echo_pid), tick, || {
                wrk(&query_lua2, &floor_url, t, c, secs)
            });
            rounds_out.push((h, q));
            floors.push(f.rps / h.rps);
        }
        let h1 = wrk(&health_lua2, &health_url2, 1, 1, secs);
        let q1 = wrk(&query_lua2, &query_url2, 1, 1, secs);
        (rounds_out, floors, h1, q1, spent)
    })
    .await
    .unwrap();
    let (rounds_out, floor_ratios, h1, q1, spent) = runs;
    drop(floor_child);
    // The WebSocket floor of one round trip at a time.
    let ws_p50 = ws_round_trip_p50(&job_frame, 20_000).await;
    let load_after = loadavg();

    // In-process costs of the stages, for the breakdown.
    let direct = direct_p50(&db_path, 20_000);
    let stages = stages(&key, &db_path, halo_guid);

    let ratio = median(rounds_out.iter().map(|(h, q)| q.rps / h.rps).collect());
    let health_rps = median(rounds_out.iter().map(|(h, _)| h.rps).collect());
    let query_rps = median(rounds_out.iter().map(|(_, q)| q.rps).collect());
    println!(
        "{}",
        serde_json::json!({
            "bench": "e2e",
            "link": "separate process",
            "client": format!("wrk -t{t} -c{c} -d{secs}s, {rounds} alternating rounds"),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            // The Cloud's runtime worker threads (0: one per core).
            "workers": args.workers,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "healthz_rps": health_rps.round(),
            "query_rps": query_rps.round(),
            "query_over_healthz": (ratio * 1000.0).round() / 1000.0,
            "round_ratios": rounds_out.iter().map(|(h, q)| ((q.rps / h.rps) * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            // The throughput floor: a bare axum endpoint doing one WebSocket round
            // trip to a separate echo process per request, same client, same rounds.
            "floor_over_healthz": (median(floor_ratios.clone()) * 1000.0).round() / 1000.0,
            "floor_round_ratios": floor_ratios.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            "query_over_floor": ((ratio / median(floor_ratios.clone())) * 1000.0).round() / 1000.0,
            "query_p99_us_loaded": median(rounds_out.iter().map(|(_, q)| q.p99_us).collect()),
            "one_connection": {
                "healthz_p50_us": h1.p50_us,
                "query_p50_us": q1.p50_us,
                "query_p99_us": q1.p99_us,
                "query_rps": q1.rps.round(),
                "sqlite_direct_p50_us": (direct * 10.0).round() / 10.0,
                "p50_overhead_us": ((q1.p50_us - direct) * 10.0).round() / 10.0,
            },
            "floor_us": {
                "healthz_p50": h1.p50_us,
                "ws_round_trip_p50": (ws_p50 * 10.0).round() / 10.0,
                "total": ((h1.p50_us + ws_p50) * 10.0).round() / 10.0,
                "p50_overhead_over_floor_us": ((q1.p50_us - direct - h1.p50_us - ws_p50) * 10.0).round() / 10.0,
            },
            "stages_us": stages,
            // CPU per request over the rounds, from /proc: what 0.5 × /healthz
            // throughput needs on these cores is a query at twice /healthz's total.
            "cpu_us_per_request": {
                "healthz": spent[0].per_request(None),
                "query": spent[1].per_request(Some("link")),
                "floor": spent[2].per_request(Some("echo")),
                "query_total_for_half_healthz": (spent[0].total_us() * 20.0).round() / 10.0,
            },
        })
    );
    if let Some(path) = &args.perf {
        // A profile of both processes under the same query load (not part of the
        // figures above): `perf report -i PATH --sort comm,dso,sym`.
        let pids = format!("{},{}", std::process::id(), link.0.id());
        let mut perf = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(path)
            .args(["-p", &pids, "--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf not found");
        let (q, u) = (query_lua.clone(), query_url.clone());
        tokio::task::spawn_blocking(move || wrk(&q, &u, t, c, secs))
            .await
            .unwrap();
        perf.wait().unwrap();
    }
    drop(link);
    cloud.stop().await;
}

/// What the steps of the path cost on their own, in µs (means over many calls).
fn stages(key: &str, db_path: &Path, halo_guid: halo_ids::HaloGuid) -> serde_json::Value {
    use halo_link::{Database, execute};
    use halo_protocol::{Allowlist, QueryJob};
    let n = 20_000;
    let body =
        serde_json::json!({"command": {"text": SQL, "executionMode": "reader", "type": "text"}})
            .to_string();
    let decode = mean_us(n, || {
        let v: halo_cloud::ImmediateQueryDto = serde_json::from_str(&body).unwrap();
        std::hint::black_box(v);
    });
    let key_hash = mean_us(n, || {
        std::hint::black_box(KeyHash::of(std::hint::black_box(key)));
    });
    let extract_first = mean_us(200, || {
        // A distinct text each time: what analysis costs without a cache.
        std::hint::black_box(halo_policy::extract_components(SQL).unwrap());
    });
    let extract = mean_us(n, || {
        std::hint::black_box(halo_policy::extract_components(SQL).unwrap());
    });
    let db = Database::open(db_path, halo_guid, halo_ids::Epoch::new(0)).unwrap();
    let job = QueryJob {
        query_id: 1,
        halo_guid,
        epoch: halo_ids::Epoch::new(0),
        timeout_ms: 5_000,
        queue_timeout_ms: None,
        catalogue: None,
        mode: halo_ids::ExecutionMode::Reader,
        command: SQL.to_owned(),
        procedure: None,
        parameters: Vec::new(),
        allowlist: Allowlist {
            tables: TABLES.iter().map(|t| (*t).to_owned()).collect(),
            procedures: Vec::new(),
            allow_write: false,
        },
    };
    let job_frame =
        halo_protocol::encode(&halo_protocol::CloudToLink::QueryJob(job.clone())).unwrap();
    let job_codec = mean_us(n, || {
        let f = halo_protocol::encode(&halo_protocol::CloudToLink::QueryJob(job.clone())).unwrap();
        std::hint::black_box(halo_protocol::decode_cloud_frame(&f).unwrap());
    });
    // Decoding alone: the fast path the Link uses, and the general decoder's tagged enum.
    let job_decode = mean_us(n, || {
        std::hint::black_box(halo_protocol::decode_cloud_frame(&job_frame).unwrap());
    });
    let job_decode_tagged = mean_us(n, || {
        std::hint::black_box(
            halo_protocol::decode::<halo_protocol::CloudToLink>(&job_frame).unwrap(),
        );
    });
    let link_exec = mean_us(n, || {
        std::hint::black_box(execute(&db, &job).unwrap());
    });
    // A distinct text each time: what the Link pays when a statement is not in its
    // cache (compiled under the authorizer, schema names checked).
    let mut i = 0u64;
    let mut fresh = job.clone();
    let link_exec_uncached = mean_us(2_000, || {
        i += 1;
        fresh.command = format!("{SQL} AND {i} = {i}");
        std::hint::black_box(execute(&db, &fresh).unwrap());
    });
    let out = execute(&db, &job).unwrap();
    // A 1 MiB result as it reaches the Cloud: the check it now makes (one base64
    // decode), against what it did before forwarding the Link's base64 as it came
    // (the decode, then a fresh encode for the answer).
    let big = halo_protocol::QueryResult::from_json(1, 1, &vec![b'7'; 1 << 20], 0);
    let big_check = mean_us(200, || {
        std::hint::black_box(big.json().unwrap());
    });
    let big_reencode = mean_us(200, || {
        use base64::Engine as _;
        let json = big.json().unwrap();
        std::hint::black_box(base64::engine::general_purpose::STANDARD.encode(&json));
    });
    let result_codec = mean_us(n, || {
        let msg = halo_protocol::LinkToCloud::QueryResult(halo_protocol::QueryResult::from_json(
            1, out.rows, &out.json, 0,
        ));
        let f = halo_protocol::encode(&msg).unwrap();
        match halo_protocol::decode_link_frame(&f).unwrap() {
            halo_protocol::LinkToCloud::QueryResult(r) => {
                std::hint::black_box(r.json().unwrap());
            }
            _ => unreachable!(),
        }
    });
    serde_json::json!({
        "request_json_decode": round2(decode),
        "key_sha256": round2(key_hash),
        "extract_components": round2(extract),
        "extract_components_first_calls": round2(extract_first),
        "job_encode_decode": round2(job_codec),
        "job_decode": round2(job_decode),
        "job_decode_tagged_enum": round2(job_decode_tagged),
        "link_execute": round2(link_exec),
        "link_execute_uncached": round2(link_exec_uncached),
        "result_encode_decode": round2(result_codec),
        "result_1mib_check": round2(big_check),
        "result_1mib_decode_and_encode_again": round2(big_reencode),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
