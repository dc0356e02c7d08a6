//! Many Links on one Cloud node: memory per idle Link session, attach rate, the CPU
//! that idle, heartbeating Links cost, and immediate-query latency at that load
//! against the same figures at 10 Links, measured in the same run.
//!
//! ```sh
//! cargo run --release -p halo-cloud --example link_swarm -- --links 10000
//! cargo run --release -p halo-cloud --example link_swarm -- --links 50000 --restart
//! ```
//!
//! The Cloud runs in a process of its own (this program started again as
//! `link_swarm cloud ...`, which serves exactly as `halo-cloud serve` does), so its
//! resident memory (`VmRSS` of `/proc/PID/status`) and CPU time (`/proc/PID/stat`)
//! are the Cloud's alone. This process simulates the Links: each has its own
//! credential (issued through the admin API) and one database, connects over real
//! TCP and WebSocket, sends a real hello, heartbeats (with a WebSocket ping in the same
//! write when the Cloud has been quiet for a third of `halo-link`'s silence limit, as
//! `halo-link` sends them) at the interval its `helloAck` asks for
//! (`--heartbeat-secs`, 5 s by default, longer where the Cloud's `--heartbeat-budget`
//! needs it, and again when a later `helloAck` asks; each Link at its own phase),
//! answers query jobs with a one-row result, and reconnects after an exponential
//! backoff with jitter, as `halo-link` does.
//!
//! Steps: start the Cloud; issue N credentials and set up an integrator for the
//! first 10 practices; attach 10 Links, measure query latency and the Cloud's idle
//! CPU; attach the other N - 10 (the attach rate, and how many events each fsync
//! carried, from the Cloud's `halo_cloud::writer` debug lines); let them idle and
//! measure RSS, CPU over a quiet window and query latency again. With `--restart`:
//! kill the Cloud (SIGKILL), start it again on the same data and port, and measure
//! how long until every Link is attached again, the events written (a hello
//! repeated unchanged writes none), and queries to the practices already back,
//! sent throughout. Last, every Link but the 10 queried ones detaches and query
//! latency is measured at 10 Links once more: the N-Link figures are given as ratios
//! to the mean of the two 10-Link runs (A/B/A), since this machine drifts. With
//! `--cycles K` (3 by default) the others attach again and N and 10 are measured
//! K - 1 more times (A/B/A/B/A...): the top-level latency and CPU ratios are the
//! medians of the K cycles' ratios (one measurement's p99 swings by tens of percent
//! on a shared machine; `cycles` lists each, with the ratio of each 10-Link p99 to
//! the one before it as the yardstick of that noise). Before each
//! measurement the Cloud is let settle (under 5 % of a core) and `--warmup` queries are
//! sent; the measured queries have a client and pooled connections of their own.
//!
//! Each measurement is also taken paired (unless `--no-twin`): a second Cloud
//! process, the twin, holds only its own 10 Links for the whole run, and each
//! measuring task sends one query to the main Cloud and one to the twin in turn.
//! Whatever the machine does meanwhile falls on both alike, so the main Cloud's p99
//! over the twin's at N Links, against the same ratio at 10 (`paired` in each cycle),
//! is what holding N Links costs the Cloud's own queries, apart from the machine's
//! drift and from the load the N Links put on the machine as a whole (this process
//! beating for them included).
//!
//! A control run (`--control-sockets`) keeps the Cloud at its 10 Links and opens
//! the N - 10 others as plain TCP connections between this process and a child,
//! idle or echoing `--control-beats-per-s` small messages: its ratios are what N
//! open loopback connections cost the machine with no Cloud and no WebSocket in it.
//!
//! Limits: the Cloud and this process each need one file descriptor per Link; this
//! program raises `RLIMIT_NOFILE` (soft and hard, which needs root or
//! `CAP_SYS_RESOURCE` above the hard limit) and caps N when it cannot, saying so
//! in `capped_by`. Loopback gives about 28 000 ephemeral ports per source address,
//! so Links spread over source addresses 127.0.0.2, 127.0.0.3, ...
//!
//! Prints one JSON line. With `LINK_SWARM_PERF_DIR` set, each query measurement is
//! also recorded with `perf record -g` (the Cloud and this process) into that folder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_protocol::{
    CatalogueInfo, CloudToLink, DatabaseInfo, Heartbeat, Hello, LinkToCloud, PROTOCOL_VERSION,
    QueryResult,
};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The allocator `halo-cloud` and `halo-link` run with, so that both halves of this
/// program allocate as the real ones do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "link-swarm-admin-token-0123456789";
const INTEGRATOR: &str = "swarm-integrator";
/// The practices queried: the first this many Links.
const QUERIED: usize = 10;
/// Links per loopback source address (of about 28 000 ephemeral ports each).
const LINKS_PER_SOURCE: usize = 20_000;
/// `halo-link`'s default silence limit (`LinkConfig::silence_limit`).
const LINK_SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Heartbeat intervals counted, in whole seconds (the last slot: this or more).
const INTERVAL_SLOTS: usize = 121;
const SQL: &str = "SELECT first_name FROM patients WHERE patient_id = 7";

#[derive(Debug, Parser)]
#[command(about = "Simulated Links against a Cloud in its own process")]
struct Cli {
    #[command(subcommand)]
    cloud: Option<CloudCommand>,
    /// Links to attach (at least 10: the first 10 are the ones queried).
    #[arg(long, default_value_t = 10_000)]
    links: usize,
    /// Also kill the Cloud, start it again, and measure the re-attach storm.
    #[arg(long)]
    restart: bool,
    /// Immediate queries per latency measurement (three: at 10 Links, at N, at 10
    /// again).
    #[arg(long, default_value_t = 50_000)]
    queries: usize,
    /// Queries sent before each measurement, not counted.
    #[arg(long, default_value_t = 5_000)]
    warmup: usize,
    /// Queries in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds of the quiet window over which the Cloud's CPU is measured.
    #[arg(long, default_value_t = 15)]
    quiet_secs: u64,
    /// Connection attempts (TCP + WebSocket handshake + hello) in progress at once
    /// in this simulator (a limit of the simulator, not of the Cloud).
    #[arg(long, default_value_t = 512)]
    handshakes: usize,
    /// The heartbeat interval the Cloud asks its Links for (`--link-heartbeat`);
    /// the simulated Links follow their `helloAck`, as `halo-link` does.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// The Cloud's heartbeat budget, beats per second over all Links
    /// (`--heartbeat-budget`); Links asked for a longer interval mid-session (a
    /// second `helloAck`) follow it, as `halo-link` does.
    #[arg(long, default_value_t = halo_cloud::HttpLimits::DEFAULT_HEARTBEAT_BUDGET)]
    heartbeat_budget: u32,
    /// Worker threads of a runtime of their own for the Links that are not queried
    /// (stand-ins for other machines), so that their heartbeats do not queue
    /// ahead of the measured queries' client and Links; 0: one runtime for all.
    #[arg(long, default_value_t = 1)]
    idle_links_threads: usize,
    /// Alternations of N Links and 10 (the first: N, then 10 again after the others
    /// detach; each further one: the others attach again, N, 10). Each gives the
    /// ratios of its N-Link measurement to the mean of the 10-Link ones on either
    /// side; the medians over the cycles are the ones reported at the top level.
    #[arg(long, default_value_t = 3)]
    cycles: usize,
    /// Run the Links that are not queried in a child process of their own (this
    /// program again, as `link_swarm idle-links ...`), so that none of their work
    /// shares a process with the measuring client and the queried Links; not with
    /// `--restart`.
    #[arg(long)]
    idle_links_process: bool,
    /// Leave out the twin: a second Cloud with only the 10 queried Links, queried in
    /// turn with this one during each measurement (see [`measure_paired`]).
    #[arg(long)]
    no_twin: bool,
    /// A control run: the N - 10 others are not Links but plain TCP connections
    /// between this process (which echoes what it reads) and a child of its own
    /// (`link_swarm idle-sockets ...`), so the Cloud holds its 10 Links throughout
    /// and only the machine carries the N connections; the ratios then say what
    /// that alone costs. Not with `--restart`.
    #[arg(long)]
    control_sockets: bool,
    /// With `--control-sockets`: 32-byte messages per second over all the
    /// connections (each at its own phase), echoed back; 0: idle connections.
    #[arg(long, default_value_t = 0.0)]
    control_beats_per_s: f64,
    /// Send a WebSocket ping with every heartbeat (so the Cloud answers every beat
    /// with a pong), as `halo-link` did before it pinged only a quiet Cloud.
    #[arg(long)]
    ping_every_beat: bool,
    /// Give up when the Links are not all attached after this many seconds.
    #[arg(long, default_value_t = 600)]
    attach_timeout_secs: u64,
}

/// What this program serves when started as a child of itself.
#[derive(Debug, Subcommand)]
enum CloudCommand {
    /// The Links `10..links` (`--idle-links-process`), one credential per line of
    /// `tokens`; prints what they do ([`IdleCounts`]) ten times a second.
    IdleLinks {
        #[arg(long)]
        cloud: SocketAddr,
        #[arg(long)]
        links: usize,
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long)]
        handshakes: usize,
        #[arg(long)]
        ping_every_beat: bool,
    },
    /// `links` plain TCP connections to `to` (`--control-sockets`), each sending 32
    /// bytes at its own phase so that all together send `beats_per_s`; prints
    /// counts as `idle-links` does.
    IdleSockets {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        links: usize,
        #[arg(long)]
        beats_per_s: f64,
        #[arg(long)]
        handshakes: usize,
    },
    /// Serve as `halo-cloud serve` does (started by the swarm itself).
    Cloud {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        max_link_sessions: usize,
        #[arg(long)]
        heartbeat_secs: u64,
        #[arg(long)]
        heartbeat_budget: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.cloud {
        Some(CloudCommand::Cloud {
            listen,
            data_dir,
            max_link_sessions,
            heartbeat_secs,
            heartbeat_budget,
        }) => serve_cloud(
            listen,
            data_dir,
            max_link_sessions,
            heartbeat_secs,
            heartbeat_budget,
        ),
        Some(CloudCommand::IdleLinks {
            cloud,
            links,
            tokens,
            handshakes,
            ping_every_beat,
        }) => serve_idle_links(cloud, links, &tokens, (handshakes, ping_every_beat)),
        Some(CloudCommand::IdleSockets {
            to,
            links,
            beats_per_s,
            handshakes,
        }) => serve_idle_sockets(to, links, beats_per_s, handshakes),
        None => {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(swarm(cli));
            // The Links' tasks are still running: leave without tearing them down.
            std::process::exit(0);
        }
    }
}

// ---- the Cloud's process ----------------------------------------------------------

fn serve_cloud(
    listen: SocketAddr,
    data_dir: PathBuf,
    max_link_sessions: usize,
    heartbeat_secs: u64,
    heartbeat_budget: u32,
) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,halo_cloud::writer=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let cloud = halo_cloud::start(halo_cloud::CloudConfig {
            listen,
            data_dir: Some(data_dir),
            admin_token: ADMIN_TOKEN.to_owned(),
            router: halo_router::RouterConfig::standard(),
            availability: halo_tenancy::AvailabilityConfig::default(),
            snapshot_every: 10_000,
            accept_damaged_log: false,
            max_databases_per_link: halo_cloud::app::MAX_DATABASES_PER_LINK,
            http: halo_cloud::HttpLimits {
                max_link_sessions,
                link_heartbeat: Duration::from_secs(heartbeat_secs.max(1)),
                heartbeat_budget,
                ..halo_cloud::HttpLimits::default()
            },
        })
        .await
        .unwrap();
        println!("listening on {}", cloud.addr);
        cloud.wait().await;
    });
}

/// The Cloud's child process, and what its writer reported.
struct CloudProcess {
    child: Child,
    addr: SocketAddr,
    /// Group commits (appends, each one fsync) and the records they carried.
    commits: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
    warnings: Arc<AtomicU64>,
}

impl CloudProcess {
    fn start(
        listen: SocketAddr,
        data_dir: &std::path::Path,
        max_link_sessions: usize,
        (heartbeat_secs, heartbeat_budget): (u64, u32),
    ) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["cloud", "--listen", &listen.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(["--max-link-sessions", &max_link_sessions.to_string()])
            .args(["--heartbeat-secs", &heartbeat_secs.to_string()])
            .args(["--heartbeat-budget", &heartbeat_budget.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let records = Arc::new(AtomicU64::new(0));
        let warnings = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().unwrap();
        let (c, r, w) = (
            Arc::clone(&commits),
            Arc::clone(&records),
            Arc::clone(&warnings),
        );
        std::thread::spawn(move || {
            let mut shown = 0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .split("records=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    c.fetch_add(1, Ordering::Relaxed);
                    r.fetch_add(n, Ordering::Relaxed);
                } else if line.contains("WARN") || line.contains("ERROR") {
                    w.fetch_add(1, Ordering::Relaxed);
                    if shown < 5 {
                        shown += 1;
                        eprintln!("cloud: {line}");
                    }
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the cloud did not start: {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            commits,
            records,
            warnings,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        process_cpu(&self.pid().to_string())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time so far of process `pid` (`self`: this one).
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = clock_ticks_per_second();
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// Minor page faults of process `pid` so far (field 10 of `/proc/PID/stat`).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(7).unwrap().parse().unwrap()
}

/// `CLK_TCK`, from `getconf` (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---- the Links ----------------------------------------------------------------------

fn link_guid(i: usize) -> LinkGuid {
    LinkGuid::from_u128(0x5a5a_0000_0000_4000_8000_0000_0000_0000 + i as u128 + 1).unwrap()
}

fn halo_guid(i: usize) -> HaloGuid {
    HaloGuid::from_u128(0xa5a5_0000_0000_4000_8000_0000_0000_0000 + i as u128 + 1).unwrap()
}

fn crn(i: usize) -> Crn {
    format!("SW{i}").parse().unwrap()
}

/// What every Link task shares with the measuring side.
struct Swarm {
    cloud_addr: parking_lot::RwLock<SocketAddr>,
    handshakes: Semaphore,
    /// Sessions open now (hello acknowledged, not yet lost).
    attached: AtomicUsize,
    /// The Cloud process generation; each Link records the generation it last
    /// attached to, and `reattached` counts Links attached to the current one.
    generation: AtomicU32,
    link_generation: Vec<AtomicU32>,
    reattached: AtomicUsize,
    /// Connection attempts that failed (refused, reset, closed before the ack).
    failed_attempts: AtomicU64,
    /// Heartbeats sent, over all Links.
    beats: AtomicU64,
    /// Links asked for another interval mid-session (a second `helloAck`).
    reasked: AtomicU64,
    /// Links beating at each interval (index: seconds, the last one "or more").
    intervals: Vec<AtomicUsize>,
    ws_config: WebSocketConfig,
    /// `--ping-every-beat`.
    ping_every_beat: bool,
    /// Set once to detach every Link but the queried ones, for good (the second
    /// measurement at 10 Links).
    shed: tokio::sync::watch::Sender<bool>,
    /// What the Links in the child process (`--idle-links-process`) last reported.
    elsewhere: IdleCounts,
}

/// The counts the `idle-links` child prints: attached, beats sent, failed attempts,
/// re-asks, the longest interval asked (s).
#[derive(Default)]
struct IdleCounts {
    attached: AtomicUsize,
    beats: AtomicU64,
    failed: AtomicU64,
    reasked: AtomicU64,
    longest: AtomicU64,
}

impl IdleCounts {
    fn line(swarm: &Swarm) -> String {
        let longest = swarm.longest_interval().as_secs();
        format!(
            "{} {} {} {} {longest}",
            swarm.attached.load(Ordering::Acquire),
            swarm.beats.load(Ordering::Relaxed),
            swarm.failed_attempts.load(Ordering::Relaxed),
            swarm.reasked.load(Ordering::Relaxed),
        )
    }

    fn read(&self, line: &str) {
        let v: Vec<u64> = line.split(' ').filter_map(|n| n.parse().ok()).collect();
        if let [attached, beats, failed, reasked, longest] = v[..] {
            self.beats.store(beats, Ordering::Relaxed);
            self.failed.store(failed, Ordering::Relaxed);
            self.reasked.store(reasked, Ordering::Relaxed);
            self.longest.store(longest, Ordering::Relaxed);
            self.attached.store(attached as usize, Ordering::Release);
        }
    }
}

impl Swarm {
    /// Links attached, in this process and in the child.
    fn attached_now(&self) -> usize {
        self.attached.load(Ordering::Acquire) + self.elsewhere.attached.load(Ordering::Acquire)
    }

    /// Heartbeats sent so far, in this process and by the child's current Links.
    fn beats_now(&self) -> u64 {
        self.beats.load(Ordering::Relaxed) + self.elsewhere.beats.load(Ordering::Relaxed)
    }

    /// The longest interval any Link was asked for.
    fn longest_interval(&self) -> Duration {
        let here = (0..INTERVAL_SLOTS)
            .rev()
            .find(|&s| self.intervals[s].load(Ordering::Relaxed) > 0)
            .unwrap_or(0) as u64;
        Duration::from_secs(here.max(self.elsewhere.longest.load(Ordering::Relaxed)))
    }
}

/// Where the Links that are not queried run.
enum IdleHost {
    /// Tasks on a runtime of this process (its own, with `--idle-links-threads`).
    Here(tokio::runtime::Handle),
    /// A child process (`--idle-links-process`) and the thread reading its counts,
    /// while they are attached.
    Child {
        child: Option<(Child, std::thread::JoinHandle<()>)>,
        tokens: PathBuf,
        handshakes: usize,
        /// `--control-sockets`: the echoing end here and the beat rate; the child
        /// opens plain connections to it instead of attaching Links.
        control: Option<(SocketAddr, f64)>,
    },
}

impl IdleHost {
    /// Starts the Links `QUERIED..QUERIED + tokens.len()`.
    fn attach(&mut self, swarm: &Arc<Swarm>, tokens: &[String]) {
        match self {
            Self::Here(spawner) => {
                for (i, token) in (QUERIED..).zip(tokens.iter().cloned()) {
                    spawner.spawn(run_link(Arc::clone(swarm), i, token));
                }
            }
            Self::Child {
                child,
                tokens: file,
                handshakes,
                control,
            } => {
                let mut command = Command::new(std::env::current_exe().unwrap());
                if let Some((sink, beats_per_s)) = control {
                    command
                        .arg("idle-sockets")
                        .args(["--to", &sink.to_string()])
                        .args(["--links", &tokens.len().to_string()])
                        .args(["--beats-per-s", &beats_per_s.to_string()]);
                } else {
                    std::fs::write(&*file, tokens.join("\n")).unwrap();
                    command
                        .arg("idle-links")
                        .args(["--cloud", &swarm.cloud_addr.read().to_string()])
                        .args(["--links", &(QUERIED + tokens.len()).to_string()])
                        .arg("--tokens")
                        .arg(&*file);
                    if swarm.ping_every_beat {
                        command.arg("--ping-every-beat");
                    }
                }
                let mut started = command
                    .args(["--handshakes", &handshakes.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let stdout = started.stdout.take().unwrap();
                let swarm = Arc::clone(swarm);
                let reader = std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        swarm.elsewhere.read(&line);
                    }
                    swarm.elsewhere.attached.store(0, Ordering::Release);
                });
                *child = Some((started, reader));
            }
        }
    }

    /// The child's CPU time so far (zero when they run here: counted with this
    /// process).
    fn cpu(&self) -> Duration {
        match self {
            Self::Child {
                child: Some((child, _)),
                ..
            } => process_cpu(&child.id().to_string()),
            _ => Duration::ZERO,
        }
    }

    /// Detaches them for good (see [`Swarm::shed`]).
    fn shed(&mut self, swarm: &Swarm) {
        swarm.shed.send_replace(true);
        if let Self::Child { child, .. } = self {
            if let Some((mut child, reader)) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
                // Its last count (none attached) is in before a next child's first.
                let _ = reader.join();
            }
        }
    }
}

/// The `idle-links` child: the Links `QUERIED..links`, until killed.
fn serve_idle_links(
    cloud: SocketAddr,
    links: usize,
    tokens: &std::path::Path,
    (handshakes, ping_every_beat): (usize, bool),
) {
    let tokens = std::fs::read_to_string(tokens).unwrap();
    let swarm = Swarm::new(cloud, links, handshakes, ping_every_beat);
    serve_child(&swarm, |swarm| {
        for (i, token) in (QUERIED..links).zip(tokens.lines()) {
            tokio::spawn(run_link(Arc::clone(swarm), i, token.to_owned()));
        }
    });
}

/// The `idle-sockets` child (`--control-sockets`): `links` plain TCP connections
/// to `to`, until killed.
fn serve_idle_sockets(to: SocketAddr, links: usize, beats_per_s: f64, handshakes: usize) {
    let swarm = Swarm::new(to, links, handshakes, false);
    let every = (beats_per_s > 0.0).then(|| Duration::from_secs_f64(links as f64 / beats_per_s));
    serve_child(&swarm, |swarm| {
        for i in 0..links {
            tokio::spawn(idle_socket(Arc::clone(swarm), i, every));
        }
    });
}

/// A child's life on a one-thread runtime: `start` spawns its tasks, then it prints
/// its counts ([`IdleCounts`]) ten times a second until killed.
fn serve_child(swarm: &Arc<Swarm>, start: impl FnOnce(&Arc<Swarm>)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        start(swarm);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            println!("{}", IdleCounts::line(swarm));
        }
    });
}

/// One control connection: connects (again after a backoff when lost), then sends
/// 32 bytes every `every` at a random phase, and reads whatever comes back.
async fn idle_socket(swarm: Arc<Swarm>, i: usize, every: Option<Duration>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i / LINKS_PER_SOURCE) as u8);
    let mut attempt = 0u32;
    loop {
        let permit = swarm.handshakes.acquire().await.unwrap();
        let to = *swarm.cloud_addr.read();
        let connected = connect_from(source, to).await;
        drop(permit);
        let Some(mut stream) = connected else {
            swarm.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
            continue;
        };
        attempt = 0;
        swarm.attached.fetch_add(1, Ordering::AcqRel);
        let mut buf = [0u8; 64];
        let period = every.unwrap_or(Duration::from_secs(86_400));
        let phase = Duration::from_millis(rand::random_range(0..period.as_millis().max(1) as u64));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        loop {
            tokio::select! {
                _ = tick.tick(), if every.is_some() => {
                    if stream.write_all(&[b'b'; 32]).await.is_err() {
                        break;
                    }
                    swarm.beats.fetch_add(1, Ordering::Relaxed);
                }
                read = stream.read(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
        swarm.attached.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The echoing end of the `--control-sockets` connections, on `runtime`: each
/// connection's bytes go back as they come, until it closes.
async fn control_sink(runtime: &tokio::runtime::Handle) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `initial * 2^attempt`, capped at `max`, then a uniform jitter in `[d/2, d]`:
/// `halo-link`'s reconnect policy (initial 250 ms, max 30 s).
fn backoff(attempt: u32) -> Duration {
    let initial = Duration::from_millis(250);
    let max = Duration::from_secs(30);
    let full = initial
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let half = full / 2;
    half + Duration::from_millis(rand::random_range(0..=(full - half).as_millis() as u64))
}

async fn run_link(swarm: Arc<Swarm>, i: usize, token: String) {
    let hello = halo_protocol::encode(&LinkToCloud::Hello(Hello {
        link_guid: link_guid(i),
        environment: Environment::Stage,
        link_version: "swarm-1".into(),
        protocol_version: PROTOCOL_VERSION,
        databases: vec![DatabaseInfo {
            halo_guid: halo_guid(i),
            pms_type: PmsType::D4w,
            parent_crn: crn(i),
            branch_crns: vec![],
            practice_name: format!("Swarm practice {i}"),
            pms_version: "1".into(),
            catalogues: vec![CatalogueInfo {
                name: "d4w".into(),
                is_default: true,
            }],
            is_demo: false,
        }],
    }))
    .unwrap();
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i / LINKS_PER_SOURCE) as u8);
    let mut attempt = 0u32;
    loop {
        let established = session(&swarm, i, &token, &hello, source).await;
        if i >= QUERIED && *swarm.shed.borrow() {
            return;
        }
        if established {
            attempt = 0;
        } else {
            swarm.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// A TCP connection to `to` from the loopback address `source`, with Nagle's
/// algorithm off as `halo-link` has it (`disable_nagle`): an answer waits for no ACK.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> Option<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .ok()?;
    let stream = socket.connect(to).await.ok()?;
    stream.set_nodelay(true).ok()?;
    Some(stream)
}

/// One connection, until it is lost; whether the hello was acknowledged.
async fn session(swarm: &Swarm, i: usize, token: &str, hello: &str, source: Ipv4Addr) -> bool {
    let permit = swarm.handshakes.acquire().await.unwrap();
    let addr = *swarm.cloud_addr.read();
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        let stream = connect_from(source, addr).await?;
        let mut request = format!("ws://{addr}/link/ws").into_client_request().ok()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().ok()?);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(swarm.ws_config))
                .await
                .ok()?;
        ws.send(Message::text(hello)).await.ok()?;
        loop {
            match ws.next().await? {
                Ok(Message::Text(text)) => {
                    return match halo_protocol::decode::<CloudToLink>(&text).ok()? {
                        CloudToLink::HelloAck {
                            heartbeat_interval_ms,
                            ..
                        } => Some((ws, heartbeat_interval_ms)),
                        _ => None,
                    };
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                _ => return None,
            }
        }
    })
    .await;
    drop(permit);
    let Ok(Some((mut ws, every_ms))) = connected else {
        return false;
    };
    let mut shed = swarm.shed.subscribe();
    let sheds = i >= QUERIED;
    if sheds && *shed.borrow_and_update() {
        // Shed while connecting: leave at once.
        let _ = ws.close(None).await;
        return true;
    }
    swarm.attached.fetch_add(1, Ordering::AcqRel);
    let generation = swarm.generation.load(Ordering::Acquire);
    if swarm.link_generation[i].swap(generation, Ordering::AcqRel) != generation {
        swarm.reattached.fetch_add(1, Ordering::AcqRel);
    }
    let mut every = Duration::from_millis(every_ms.unwrap_or(10_000).max(1_000));
    let phase = Duration::from_millis(rand::random_range(0..every.as_millis() as u64));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    let mut last_heard = Instant::now();
    let slot = |every: Duration| (every.as_secs() as usize).min(INTERVAL_SLOTS - 1);
    swarm.intervals[slot(every)].fetch_add(1, Ordering::Relaxed);
    let beat = halo_protocol::encode(&LinkToCloud::Heartbeat(Heartbeat {
        at: Timestamp::from_millis(0),
        databases: vec![halo_guid(i)],
    }))
    .unwrap();
    loop {
        tokio::select! {
            _ = shed.changed(), if sheds => {
                let _ = ws.close(None).await;
                break;
            }
            _ = heartbeat.tick() => {
                // As `halo-link` does: a ping (the Cloud answers it with a pong) when
                // the Cloud has been quiet for a third of the silence limit, and the
                // beat, in one write.
                let limit = (every * 3).max(LINK_SILENCE_LIMIT);
                let ping = swarm.ping_every_beat
                    || last_heard.elapsed() >= limit / 3;
                let sent = async {
                    if ping {
                        ws.feed(Message::Ping(Default::default())).await?;
                    }
                    ws.feed(Message::text(beat.clone())).await?;
                    ws.flush().await
                };
                if sent.await.is_err() {
                    break;
                }
                swarm.beats.fetch_add(1, Ordering::Relaxed);
            }
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                let Message::Text(text) = frame else { continue };
                let decoded = halo_protocol::decode::<CloudToLink>(&text);
                if let Ok(CloudToLink::HelloAck { heartbeat_interval_ms: Some(ms), .. }) = decoded {
                    // Asked for another interval: the next beat one interval from now.
                    swarm.intervals[slot(every)].fetch_sub(1, Ordering::Relaxed);
                    every = Duration::from_millis(ms.max(1_000));
                    swarm.intervals[slot(every)].fetch_add(1, Ordering::Relaxed);
                    swarm.reasked.fetch_add(1, Ordering::Relaxed);
                    heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                } else if let Ok(CloudToLink::QueryJob(job)) = decoded {
                    let rows = br#"[{"first_name":"Noah"}]"#;
                    let answer = LinkToCloud::QueryResult(QueryResult::from_json(job.query_id, 1, rows, 0));
                    if ws.send(Message::text(halo_protocol::encode(&answer).unwrap())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    swarm.intervals[slot(every)].fetch_sub(1, Ordering::Relaxed);
    swarm.attached.fetch_sub(1, Ordering::AcqRel);
    true
}

// ---- the integrator -----------------------------------------------------------------

struct Http {
    /// Admin calls (credentials are issued 64 at a time).
    client: reqwest::Client,
    /// The measured queries, on a pool of their own the size of `--concurrency`, so
    /// that every measurement runs over the same few warm connections (the admin
    /// pool's 64, spread over by the first measurement only, made it the costliest).
    queries: reqwest::Client,
    addr: parking_lot::RwLock<SocketAddr>,
}

impl Http {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let addr = *self.addr.read();
        let resp = self
            .client
            .request(method, format!("http://{addr}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// One immediate query; its status and latency.
    async fn query(&self, key: &str, site: HaloGuid) -> (u16, Duration) {
        let addr = *self.addr.read();
        let start = Instant::now();
        let resp = self
            .queries
            .post(format!(
                "http://{addr}/integrator/sites/{site}/queries/immediate"
            ))
            .header(halo_cloud::KEY_HEADER, key)
            .json(&json!({"command": {"text": SQL, "executionMode": "reader", "type": "text"}}))
            .send()
            .await;
        let status = match resp {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            }
            Err(_) => 0,
        };
        (status, start.elapsed())
    }
}

/// Latencies of `n` immediate queries over the first [`QUERIED`] practices, `c` at
/// a time: (p50 ms, p99 ms, errors).
async fn measure_queries(http: &Arc<Http>, key: &str, n: usize, c: usize) -> (f64, f64, usize) {
    let (lat, errors) = measure_rounds(&[(http, key)], n, c).await;
    (lat[0].0, lat[0].1, errors)
}

/// `n` pairs of immediate queries, `c` pairs at a time: each pair one to the main
/// Cloud and one to the twin, one after the other, the first of them alternating
/// between tasks. Whatever the machine does meanwhile (another VM, a busy core, the
/// clock's speed) falls on both alike, so their ratio tells the N Links' cost apart
/// from the machine's drift better than measurements taken one after the other.
async fn measure_paired(main: (&Arc<Http>, &str), twin: &Twin, n: usize, c: usize) -> Paired {
    let targets = [main, (&twin.http, twin.key.as_str())];
    let (lat, errors) = measure_rounds(&targets, n, c).await;
    Paired {
        main_p50: lat[0].0,
        main_p99: lat[0].1,
        twin_p50: lat[1].0,
        twin_p99: lat[1].1,
        errors,
    }
}

/// `n` rounds, `c` at a time, each one immediate query to every target in turn
/// (starting at a different one from round to round), over the first [`QUERIED`]
/// practices: (p50 ms, p99 ms) per target, and the errors over all.
async fn measure_rounds(
    targets: &[(&Arc<Http>, &str)],
    n: usize,
    c: usize,
) -> (Vec<(f64, f64)>, usize) {
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..c {
        let targets: Vec<(Arc<Http>, String)> = targets
            .iter()
            .map(|(http, key)| (Arc::clone(http), (*key).to_owned()))
            .collect();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (vec![Vec::new(); targets.len()], 0);
            let mut k = t;
            while done.fetch_add(1, Ordering::Relaxed) < n {
                let site = halo_guid(k % QUERIED);
                for j in 0..targets.len() {
                    let side = (k + j) % targets.len();
                    let (http, key) = &targets[side];
                    let (status, took) = http.query(key, site).await;
                    if status == 200 {
                        lat[side].push(took);
                    } else {
                        errors += 1;
                    }
                }
                k += c;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (vec![Vec::new(); targets.len()], 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        for (all, some) in lat.iter_mut().zip(l) {
            all.extend(some);
        }
        errors += e;
    }
    (lat.iter_mut().map(|l| percentiles(l)).collect(), errors)
}

fn percentiles(lat: &mut [Duration]) -> (f64, f64) {
    if lat.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    lat.sort_unstable();
    let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

/// One query measurement and what the Cloud did during it.
#[derive(Clone)]
struct Phase {
    p50: f64,
    p99: f64,
    errors: usize,
    /// The Cloud's CPU per query, µs.
    cpu_us: f64,
    /// The machine's steal ticks over the measurement.
    steal: u64,
    /// The Cloud's minor page faults per query.
    faults: f64,
    /// The paired measurement with the twin, when there is one.
    paired: Option<Paired>,
}

/// Latencies (ms) of [`measure_paired`]: the main Cloud's and the twin's.
#[derive(Clone, Copy)]
struct Paired {
    main_p50: f64,
    main_p99: f64,
    twin_p50: f64,
    twin_p99: f64,
    errors: usize,
}

impl Paired {
    fn p99_ratio(&self) -> f64 {
        self.main_p99 / self.twin_p99
    }

    fn p50_ratio(&self) -> f64 {
        self.main_p50 / self.twin_p50
    }
}

/// One A/B/A cycle's figures: the N-Link measurement over the mean of the 10-Link
/// ones on either side, and the second 10-Link p99 over the first (what the machine
/// alone makes of two measurements of the same thing).
fn cycle(ten_before: &Phase, n: &Phase, ten_after: &Phase) -> Value {
    let mean = |f: fn(&Phase) -> f64| (f(ten_before) + f(ten_after)) / 2.0;
    let paired = match (ten_before.paired, n.paired, ten_after.paired) {
        (Some(b), Some(n), Some(a)) => json!({
            // The main Cloud at N over the twin at 10, queried in turn.
            "p99_ratio_n": n.p99_ratio(),
            "p50_ratio_n": n.p50_ratio(),
            // The same with the main Cloud at 10 too (A/A: what the pairing itself
            // and the two Clouds' differences other than N make of it).
            "p99_ratio_10": (b.p99_ratio() + a.p99_ratio()) / 2.0,
            "p50_ratio_10": (b.p50_ratio() + a.p50_ratio()) / 2.0,
            "p99_ms_main_twin": [[b.main_p99, b.twin_p99], [n.main_p99, n.twin_p99], [a.main_p99, a.twin_p99]],
            "errors": b.errors + n.errors + a.errors,
        }),
        _ => Value::Null,
    };
    json!({
        "paired": paired,
        "p99_ratio": n.p99 / mean(|p| p.p99),
        "p50_ratio": n.p50 / mean(|p| p.p50),
        // Less sensitive to a busy machine than the latency ratios.
        "cloud_cpu_ratio": n.cpu_us / mean(|p| p.cpu_us),
        "p99_10_after_over_before": ten_after.p99 / ten_before.p99,
        "p99_ms": [ten_before.p99, n.p99, ten_after.p99],
        "steal_ticks": [ten_before.steal, n.steal, ten_after.steal],
    })
}

/// Every Link but the queried ones detaches for good; then, at 10 Links, the same
/// measurement as [`measure_phase`].
async fn shed_and_measure(
    phase: &str,
    (swarm, host): (&Swarm, &mut IdleHost),
    timeout: Duration,
    (cloud, http, key, cli, twin): (&CloudProcess, &Arc<Http>, &str, &Cli, Option<&Twin>),
) -> Phase {
    host.shed(swarm);
    wait_until("the extra links to detach", timeout, || {
        swarm.attached_now() == QUERIED
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    measure_phase(phase, cloud, (http, key), cli, twin).await
}

/// Lets the Cloud settle, warms up, then measures `--queries` queries (recorded
/// with `perf` as `phase` when asked: see [`Profile`]); then, with a twin,
/// `--queries` pairs (see [`measure_paired`]).
async fn measure_phase(
    phase: &str,
    cloud: &CloudProcess,
    (http, key): (&Arc<Http>, &str),
    cli: &Cli,
    twin: Option<&Twin>,
) -> Phase {
    settle(cloud).await;
    measure_queries(http, key, cli.warmup, cli.concurrency).await;
    let cpu0 = cloud.cpu();
    let perf = Profile::start(phase, cloud.pid());
    let (steal0, faults0) = (steal_ticks(), minor_faults(cloud.pid()));
    let (p50, p99, errors) = measure_queries(http, key, cli.queries, cli.concurrency).await;
    let steal = steal_ticks() - steal0;
    let faults = (minor_faults(cloud.pid()) - faults0) as f64 / cli.queries.max(1) as f64;
    perf.stop();
    let cpu_us = per_query_us(cloud.cpu() - cpu0, cli.queries);
    let paired = match twin {
        Some(twin) => {
            measure_paired((http, key), twin, cli.warmup, cli.concurrency).await;
            Some(measure_paired((http, key), twin, cli.queries, cli.concurrency).await)
        }
        None => None,
    };
    Phase {
        p50,
        p99,
        errors,
        cpu_us,
        steal,
        faults,
        paired,
    }
}

/// `perf record -g` of the Cloud and this process over one measured phase, into
/// `$LINK_SWARM_PERF_DIR/PHASE.data`, when that variable is set (a profiling aid:
/// compare where the time goes at 10 Links and at N).
struct Profile(Option<Child>);

impl Profile {
    fn start(phase: &str, cloud: u32) -> Self {
        let Some(dir) = std::env::var_os("LINK_SWARM_PERF_DIR") else {
            return Self(None);
        };
        let out = PathBuf::from(dir).join(format!("{phase}.data"));
        let child = Command::new("perf")
            .args(["record", "-g", "-q", "-o"])
            .arg(out)
            .args(["-p", &format!("{cloud},{}", std::process::id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(300)); // let it attach
        Self(child)
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Waits (at most 30 s) until the Cloud uses under 5 % of a core over a second, so
/// that no measurement shares the machine with work left from the step before it
/// (a background snapshot after the credentials or the attaches, a writer
/// catching up); idle heartbeats at 15 000 Links cost about 2 %.
async fn settle(cloud: &CloudProcess) {
    for _ in 0..30 {
        if cpu_share(cloud, 1).await < 0.05 {
            return;
        }
    }
}

/// The machine's `steal` clock ticks so far (all CPUs; 0 where not reported).
fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let cpu = stat.lines().next()?.to_owned();
            cpu.split_whitespace().nth(8)?.parse().ok()
        })
        .unwrap_or(0)
}

/// CPU time spent per query, in microseconds.
fn per_query_us(cpu: Duration, queries: usize) -> f64 {
    (cpu.as_secs_f64() * 1e6 / queries.max(1) as f64).round()
}

/// The Cloud's CPU over `secs` of wall time, as a share of one core.
async fn cpu_share(cloud: &CloudProcess, secs: u64) -> f64 {
    let (cpu0, t0) = (cloud.cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cloud.cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

// ---- the run ----------------------------------------------------------------------------

/// Raises `RLIMIT_NOFILE` for this process and the Cloud it starts; the Links it
/// allows, and what capped them if anything did.
fn descriptors(links: usize) -> (usize, u64, Option<String>) {
    use rlimit::Resource;
    // Each process: one per Link, plus the HTTP connections and files.
    let want = links as u64 + 4_096;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    let target = want.min(nr_open);
    let (_, hard) = Resource::NOFILE.get().unwrap();
    if Resource::NOFILE
        .set(target, target.max(hard.min(nr_open)))
        .is_err()
    {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    }
    let (soft, hard) = Resource::NOFILE.get().unwrap();
    let allowed = usize::try_from(soft.saturating_sub(4_096)).unwrap_or(usize::MAX);
    if allowed >= links {
        return (links, soft, None);
    }
    let why = if soft >= nr_open {
        format!("fs.nr_open = {nr_open} (sysctl fs.nr_open)")
    } else {
        format!(
            "RLIMIT_NOFILE hard limit {hard} (ulimit -Hn, or LimitNOFILE= in the unit; raising it needs root)"
        )
    };
    (allowed.max(QUERIED), soft, Some(why))
}

impl Swarm {
    fn new(cloud: SocketAddr, links: usize, handshakes: usize, ping_every_beat: bool) -> Arc<Self> {
        Arc::new(Self {
            cloud_addr: parking_lot::RwLock::new(cloud),
            handshakes: Semaphore::new(handshakes.max(1)),
            attached: AtomicUsize::new(0),
            generation: AtomicU32::new(1),
            link_generation: (0..links).map(|_| AtomicU32::new(0)).collect(),
            reattached: AtomicUsize::new(0),
            failed_attempts: AtomicU64::new(0),
            beats: AtomicU64::new(0),
            reasked: AtomicU64::new(0),
            intervals: (0..INTERVAL_SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            ws_config: WebSocketConfig::default().read_buffer_size(4096),
            ping_every_beat,
            shed: tokio::sync::watch::Sender::new(false),
            elsewhere: IdleCounts::default(),
        })
    }
}

impl Http {
    fn new(cloud: SocketAddr, concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            queries: reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency.max(1))
                .build()
                .unwrap(),
            addr: parking_lot::RwLock::new(cloud),
        })
    }
}

/// One credential per Link `0..links`, issued over the admin API 64 at a time.
async fn issue_credentials(http: &Arc<Http>, links: usize) -> Vec<String> {
    futures_util::stream::iter(0..links)
        .map(|i| {
            let http = Arc::clone(http);
            async move {
                http.admin(
                    reqwest::Method::POST,
                    "/admin/link-credentials",
                    json!({"label": format!("swarm {i}"), "environment": "stage",
                           "practices": [format!("D4w:{}", crn(i))]}),
                )
                .await["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        })
        .buffered(64)
        .collect()
        .await
}

/// Enables the integrator for the queried practices' tables; its key.
async fn integrator(http: &Http) -> String {
    let base = format!("/admin/integrators/{INTEGRATOR}");
    http.admin(
        reqwest::Method::POST,
        &format!("{base}/enable"),
        json!({"pmsType": "D4w"}),
    )
    .await;
    http.admin(
        reqwest::Method::PUT,
        &format!("{base}/components"),
        json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": ["patients"], "allowWrite": false}),
    )
    .await;
    for i in 0..QUERIED {
        http.admin(
            reqwest::Method::POST,
            &format!("{base}/practices"),
            json!({"pmsId": format!("D4w:{}", crn(i))}),
        )
        .await;
    }
    http.admin(
        reqwest::Method::POST,
        &format!("{base}/keys"),
        json!({"environment": "stage"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The integrator pairs the queried practices (their Links attached).
async fn pair(http: &Http, key: &str) {
    for i in 0..QUERIED {
        let addr = *http.addr.read();
        let resp = http
            .client
            .post(format!(
                "http://{addr}/integrator/pair-site?practiceManagementSiteId={}&practiceManagementName=D4w",
                crn(i)
            ))
            .header(halo_cloud::KEY_HEADER, key)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "pair: {}", resp.status());
    }
}

/// A second Cloud, set up as the main one but with only the [`QUERIED`] Links for
/// the whole run: the other half of [`measure_paired`].
struct Twin {
    cloud: CloudProcess,
    http: Arc<Http>,
    key: String,
    _data: tempfile::TempDir,
}

impl Twin {
    async fn start(cli: &Cli, heartbeat: Duration, timeout: Duration) -> Self {
        let data = tempfile::tempdir().unwrap();
        let cloud = CloudProcess::start(
            "127.0.0.1:0".parse().unwrap(),
            data.path(),
            QUERIED + 1_000,
            (heartbeat.as_secs(), cli.heartbeat_budget),
        );
        let http = Http::new(cloud.addr, cli.concurrency);
        let tokens = issue_credentials(&http, QUERIED).await;
        let key = integrator(&http).await;
        let swarm = Swarm::new(cloud.addr, QUERIED, cli.handshakes, cli.ping_every_beat);
        for (i, token) in tokens.into_iter().enumerate() {
            tokio::spawn(run_link(Arc::clone(&swarm), i, token));
        }
        wait_until("the twin's links", timeout, || {
            swarm.attached.load(Ordering::Acquire) == QUERIED
        })
        .await;
        pair(&http, &key).await;
        Self {
            cloud,
            http,
            key,
            _data: data,
        }
    }
}

async fn swarm(cli: Cli) {
    let (links, fd_limit, capped_by) = descriptors(cli.links.max(QUERIED));
    let data = tempfile::tempdir().unwrap();
    let heartbeat = Duration::from_secs(cli.heartbeat_secs.max(1));
    let cloud = CloudProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        data.path(),
        links + 1_000,
        (heartbeat.as_secs(), cli.heartbeat_budget),
    );
    let rss_empty = cloud.rss();
    let http = Http::new(cloud.addr, cli.concurrency);

    // Credentials, one per Link, issued over the admin API.
    let t = Instant::now();
    let tokens = issue_credentials(&http, links).await;
    let credentials_secs = t.elapsed().as_secs_f64();
    let key = integrator(&http).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_credentials = cloud.rss();

    let swarm = Swarm::new(cloud.addr, links, cli.handshakes, cli.ping_every_beat);
    let mut tokens = tokens.into_iter();
    let cycles = cli.cycles.max(1);
    let timeout = Duration::from_secs(cli.attach_timeout_secs);

    // 10 Links: the queried practices, paired.
    for i in 0..QUERIED {
        tokio::spawn(run_link(Arc::clone(&swarm), i, tokens.next().unwrap()));
    }
    wait_until("the first links", timeout, || {
        swarm.attached.load(Ordering::Acquire) == QUERIED
    })
    .await;
    pair(&http, &key).await;
    let twin = if cli.no_twin {
        None
    } else {
        Some(Twin::start(&cli, heartbeat, timeout).await)
    };
    let at_10 = measure_phase("links_10", &cloud, (&http, &key), &cli, twin.as_ref()).await;
    let beats0 = swarm.beats.load(Ordering::Relaxed);
    let t10 = Instant::now();
    let cpu_10 = cpu_share(&cloud, cli.quiet_secs).await;
    let beats_per_s_10 =
        (swarm.beats.load(Ordering::Relaxed) - beats0) as f64 / t10.elapsed().as_secs_f64();
    let rss_10 = cloud.rss();

    // The rest of the Links.
    let (commits0, records0) = (
        cloud.commits.load(Ordering::Relaxed),
        cloud.records.load(Ordering::Relaxed),
    );
    assert!(
        !(cli.idle_links_process && cli.restart),
        "--idle-links-process does not go with --restart"
    );
    let idle_links = (cli.idle_links_threads > 0 && !cli.idle_links_process).then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.idle_links_threads)
            .thread_name("idle-links")
            .enable_all()
            .build()
            .unwrap()
    });
    assert!(
        !(cli.control_sockets && cli.restart),
        "--control-sockets does not go with --restart"
    );
    let spawner = idle_links
        .as_ref()
        .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
    let mut host = if cli.idle_links_process || cli.control_sockets {
        let control = if cli.control_sockets {
            Some((control_sink(&spawner).await, cli.control_beats_per_s))
        } else {
            None
        };
        IdleHost::Child {
            child: None,
            tokens: data.path().join("idle-link-tokens"),
            handshakes: cli.handshakes,
            control,
        }
    } else {
        IdleHost::Here(spawner)
    };
    // Kept for the later cycles' attaches (the same Links, the same credentials).
    let idle_tokens: Vec<String> = tokens.collect();
    host.attach(&swarm, &idle_tokens);
    let attach = wait_until("every link", timeout, || swarm.attached_now() == links).await;
    let attach_commits = cloud.commits.load(Ordering::Relaxed) - commits0;
    let attach_records = cloud.records.load(Ordering::Relaxed) - records0;
    // Let every Link heartbeat at least once (and be asked again, at its first
    // beat, if the budget needs a longer interval than it was asked at attach), then
    // measure idle.
    tokio::time::sleep(heartbeat + Duration::from_secs(1)).await;
    let longest = swarm.longest_interval();
    tokio::time::sleep(longest.saturating_sub(heartbeat)).await;
    let (swarm_cpu0, t0) = (process_cpu("self"), Instant::now());
    let (beats0, child_cpu0) = (swarm.beats_now(), host.cpu());
    let cpu_n = cpu_share(&cloud, cli.quiet_secs).await;
    let beats_per_s_n = (swarm.beats_now() - beats0) as f64 / t0.elapsed().as_secs_f64();
    // This process (the N Links' heartbeats) shares the machine with the Cloud.
    let swarm_cpu_n = (process_cpu("self") - swarm_cpu0 + (host.cpu() - child_cpu0)).as_secs_f64()
        / t0.elapsed().as_secs_f64();
    let rss_n = cloud.rss();
    let (swarm_cpu0, t0) = (process_cpu("self"), Instant::now());
    let at_n = measure_phase("links_n", &cloud, (&http, &key), &cli, twin.as_ref()).await;
    let swarm_cpu_queries =
        (process_cpu("self") - swarm_cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();

    let n = links as f64;
    // Measured: with the budget, the Links' intervals are the Cloud's to choose.
    let beats_per_s = beats_per_s_n - beats_per_s_10;
    let intervals: serde_json::Map<String, Value> = (0..INTERVAL_SLOTS)
        .filter_map(|s| {
            let n = swarm.intervals[s].load(Ordering::Relaxed);
            (n > 0).then(|| (format!("{s}s"), json!(n)))
        })
        .collect();
    let mut out = json!({
        "bench": "link_swarm",
        "links": links,
        "fd_limit": fd_limit,
        "capped_by": capped_by,
        "rss_per_link_bytes": ((rss_n.saturating_sub(rss_credentials)) as f64 / n).round(),
        "rss_per_link_with_credential_bytes": ((rss_n.saturating_sub(rss_empty)) as f64 / n).round(),
        "rss_mb": {"empty": rss_empty >> 20, "credentials_issued": rss_credentials >> 20,
                   "links_10": rss_10 >> 20, "links_n": rss_n >> 20},
        "credentials_issued_per_s": (n / credentials_secs).round(),
        "attach_per_s": ((links - QUERIED) as f64 / attach.as_secs_f64()).round(),
        "attach_secs": attach.as_secs_f64(),
        "attach_events_per_fsync": attach_records as f64 / attach_commits.max(1) as f64,
        "attach_fsyncs": attach_commits,
        "attach_events": attach_records,
        "failed_attempts": swarm.failed_attempts.load(Ordering::Relaxed)
            + swarm.elsewhere.failed.load(Ordering::Relaxed),
        "idle_cpu_share_of_one_core": {"links_10": cpu_10, "links_n": cpu_n},
        "swarm_cpu_share_of_one_core": {"idle_links_n": swarm_cpu_n, "queries_links_n": swarm_cpu_queries},
        "heartbeat_secs": heartbeat.as_secs(),
        "heartbeat_budget": cli.heartbeat_budget,
        "heartbeats_per_s": beats_per_s_n.round(),
        "links_by_heartbeat_interval": intervals,
        "asked_again_mid_session": swarm.reasked.load(Ordering::Relaxed)
            + swarm.elsewhere.reasked.load(Ordering::Relaxed),
        "heartbeat_cpu_share_of_one_core": (cpu_n - cpu_10).max(0.0),
        "cpu_us_per_heartbeat": ((cpu_n - cpu_10).max(0.0) * 1e6 / beats_per_s * 100.0).round() / 100.0,
        "query_ms": {"links_10": {"p50": at_10.p50, "p99": at_10.p99, "errors": at_10.errors},
                     "links_n": {"p50": at_n.p50, "p99": at_n.p99, "errors": at_n.errors}},
        "quiet_secs": cli.quiet_secs,
        "load_avg_1m": load_average(),
    });

    let cloud = if cli.restart {
        let (restart, cloud) = restart_storm(
            cloud,
            &swarm,
            &http,
            &key,
            data.path(),
            (links, heartbeat.as_secs(), cli.heartbeat_budget),
            timeout,
        )
        .await;
        out["restart"] = restart;
        cloud
    } else {
        cloud
    };

    // At 10 Links again (A/B/A: the machine drifts): every other Link detaches for
    // good, then the same queries. The ratios are to the mean of both 10-Link runs.
    let after = shed_and_measure(
        "links_10_after",
        (&swarm, &mut host),
        timeout,
        (&cloud, &http, &key, &cli, twin.as_ref()),
    )
    .await;
    let mut cycle_list = vec![cycle(&at_10, &at_n, &after)];
    let mut before = after.clone();
    for c in 1..cycles {
        // The others attach again (unchanged hellos: no events), are asked their
        // interval and idle as in the first cycle, then N and 10 are measured again.
        swarm.shed.send_replace(false);
        host.attach(&swarm, &idle_tokens);
        wait_until("every link again", timeout, || {
            swarm.attached_now() == links
        })
        .await;
        tokio::time::sleep(heartbeat.max(longest) + Duration::from_secs(1)).await;
        let n_phase = measure_phase(
            &format!("links_n_{c}"),
            &cloud,
            (&http, &key),
            &cli,
            twin.as_ref(),
        )
        .await;
        let phase = format!("links_10_after_{c}");
        let measuring = (&cloud, &http, key.as_str(), &cli, twin.as_ref());
        let ten = shed_and_measure(&phase, (&swarm, &mut host), timeout, measuring).await;
        cycle_list.push(cycle(&before, &n_phase, &ten));
        before = ten;
    }
    cloud.kill();
    if let Some(twin) = twin {
        twin.cloud.kill();
    }
    // The Cloud's CPU per query while the queries ran (heartbeats included: at N
    // they are about 2 % of a core).
    out["cloud_cpu_us_per_query"] = json!({"links_10": at_10.cpu_us,
        "links_n": at_n.cpu_us, "links_10_after": after.cpu_us});
    // Time the hypervisor ran something else on this VM's CPUs during each
    // measurement (`steal` of /proc/stat, clock ticks over all CPUs): an outlier
    // with steal is the machine's, not the Cloud's.
    out["steal_ticks"] = json!({"links_10": at_10.steal, "links_n": at_n.steal,
        "links_10_after": after.steal});
    // The Cloud's minor page faults per query in each measurement (an allocator
    // returning and taking back memory shows here).
    out["cloud_minor_faults_per_query"] = json!({"links_10": at_10.faults, "links_n": at_n.faults,
        "links_10_after": after.faults});
    out["query_ms"]["links_10_after"] =
        json!({"p50": after.p50, "p99": after.p99, "errors": after.errors});
    // The median over the cycles of the figure at `pointer` in each.
    let median_of = |pointer: &str| {
        let mut v: Vec<f64> = cycle_list
            .iter()
            .filter_map(|c| c.pointer(pointer)?.as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    // Medians over the cycles (with one cycle: that cycle's).
    out["p99_ratio_n_over_10"] = json!(median_of("/p99_ratio"));
    out["p50_ratio_n_over_10"] = json!(median_of("/p50_ratio"));
    out["cloud_cpu_per_query_ratio_n_over_10"] = json!(median_of("/cloud_cpu_ratio"));
    if !cli.no_twin {
        // The paired ratios: main at N over the twin, and main at 10 over the twin
        // (the yardstick: what it is when the two Clouds have the same Links).
        out["paired_p99_ratio_n_over_twin"] = json!(median_of("/paired/p99_ratio_n"));
        out["paired_p99_ratio_10_over_twin"] = json!(median_of("/paired/p99_ratio_10"));
        out["paired_p50_ratio_n_over_twin"] = json!(median_of("/paired/p50_ratio_n"));
        out["paired_p50_ratio_10_over_twin"] = json!(median_of("/paired/p50_ratio_10"));
    }
    out["p99_ratio_n_over_10_before_after"] = json!([at_n.p99 / at_10.p99, at_n.p99 / after.p99]);
    out["cycles"] = json!(cycle_list);
    out["idle_links_threads"] = json!(cli.idle_links_threads);
    out["idle_links_process"] = json!(cli.idle_links_process);
    out["ping_every_beat"] = json!(cli.ping_every_beat);
    if cli.control_sockets {
        out["control_sockets"] = json!({"beats_per_s": cli.control_beats_per_s});
    }
    println!("{out}");
    if let Some(rt) = idle_links {
        rt.shutdown_background();
    }
}

/// Kills the Cloud, starts it again on the same data and port, and measures the
/// re-attach storm while querying the practices already back.
async fn restart_storm(
    cloud: CloudProcess,
    swarm: &Arc<Swarm>,
    http: &Arc<Http>,
    key: &str,
    data_dir: &std::path::Path,
    (links, heartbeat_secs, heartbeat_budget): (usize, u64, u32),
    timeout: Duration,
) -> (Value, CloudProcess) {
    let addr = cloud.addr;
    let warnings_before = cloud.warnings.load(Ordering::Relaxed);
    let _ = warnings_before;
    swarm.reattached.store(0, Ordering::Release);
    swarm.generation.store(2, Ordering::Release);
    let killed = Instant::now();
    cloud.kill();
    let cloud = CloudProcess::start(
        addr,
        data_dir,
        links + 1_000,
        (heartbeat_secs, heartbeat_budget),
    );
    let listening = killed.elapsed();
    let (commits0, records0) = (
        cloud.commits.load(Ordering::Relaxed),
        cloud.records.load(Ordering::Relaxed),
    );
    // Query the practices whose Link is back, until every Link is.
    let stop = Arc::new(AtomicU32::new(0));
    let querier = {
        let (swarm, http, key, stop) = (
            Arc::clone(swarm),
            Arc::clone(http),
            key.to_owned(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let (mut lat, mut sent, mut failed) = (Vec::new(), 0u64, 0u64);
            let mut k = 0;
            while stop.load(Ordering::Acquire) == 0 {
                k += 1;
                let i = k % QUERIED;
                if swarm.link_generation[i].load(Ordering::Acquire) != 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                sent += 1;
                let (status, took) = http.query(&key, halo_guid(i)).await;
                if status == 200 {
                    lat.push(took);
                } else {
                    failed += 1;
                }
            }
            (lat, sent, failed)
        })
    };
    let back = wait_until("every link back", timeout, || {
        swarm.reattached.load(Ordering::Acquire) == links
    })
    .await;
    let reattached_secs = (listening + back).as_secs_f64();
    stop.store(1, Ordering::Release);
    let (mut lat, sent, failed) = querier.await.unwrap();
    let (p50, p99) = percentiles(&mut lat);
    let commits = cloud.commits.load(Ordering::Relaxed) - commits0;
    let records = cloud.records.load(Ordering::Relaxed) - records0;
    let rss = cloud.rss();
    let out = json!({
        "recovery_secs": listening.as_secs_f64(),
        "all_reattached_secs_after_kill": reattached_secs,
        "reattach_per_s": (links as f64 / back.as_secs_f64()).round(),
        "events_written": records,
        "fsyncs": commits,
        "queries_to_attached_practices": sent,
        "queries_failed": failed,
        "query_ms": {"p50": p50, "p99": p99},
        "rss_mb_after": rss >> 20,
        "failed_attempts_total": swarm.failed_attempts.load(Ordering::Relaxed),
    });
    (out, cloud)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
