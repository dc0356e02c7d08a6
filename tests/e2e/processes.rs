//! Real `halo-cloud` and `halo-link` processes for the tests that kill them or
//! measure their memory. The binaries are built (once per test run) with the same
//! cargo that runs the tests, into the same target directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use halo_ids::Environment;
use serde_json::{Value, json};

use crate::fixture::{ADMIN, INTEGRATOR, TABLES};

/// Set once the binaries are built (or known to be: [`assume_built`]).
static BUILT: OnceLock<()> = OnceLock::new();

/// Makes [`binary`] only find the binaries, never build them: for a caller run by
/// a cargo that already built them (the cluster bench, run after
/// `cargo build --release -p halo-cloud`).
#[allow(
    dead_code,
    reason = "called by the cluster bench, which includes this file"
)]
pub(crate) fn assume_built() {
    BUILT.get_or_init(|| ());
}

/// `target/<profile>/<name>`, built if needed.
pub(crate) fn binary(name: &str) -> PathBuf {
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "halo-cloud", "-p", "halo-link", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    });
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-<hash>, or target/<profile>/examples/<example>
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `halo-cloud serve` process.
pub(crate) struct CloudProcess {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Where the tests reach it.
    host: std::net::IpAddr,
}

impl CloudProcess {
    pub(crate) fn start(data: &Path, port: u16, extra: &[&str]) -> CloudProcess {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Self::start_via(&[], listen, listen.ip(), data, extra)
    }

    /// Started through `prefix` (such as `ip netns exec NS`, which execs it: the
    /// child is the Cloud itself), listening on `listen`, reached on `host`.
    pub(crate) fn start_via(
        prefix: &[&str],
        listen: std::net::SocketAddr,
        host: std::net::IpAddr,
        data: &Path,
        extra: &[&str],
    ) -> CloudProcess {
        let cloud = binary("halo-cloud");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(cloud);
                c
            }
            None => Command::new(cloud),
        };
        let child = command
            .args(["serve", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(data)
            .args(["--admin-token", ADMIN])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("HALO_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        CloudProcess {
            child,
            port: listen.port(),
            host,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            std::net::SocketAddr::new(self.host, self.port)
        )
    }

    pub(crate) async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "halo-cloud did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set (`VmHWM`) of a process, in bytes.
pub(crate) fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Admin and integrator calls to a Cloud at `base`.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Client {
    pub(crate) async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(halo_cloud::KEY_HEADER, key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A Link credential for `crn` (Stage).
    pub(crate) async fn credential(&self, crn: &str) -> String {
        self.credential_in(Environment::Stage, crn).await
    }

    /// A Link credential for `crn` in `environment`.
    pub(crate) async fn credential_in(&self, environment: Environment, crn: &str) -> String {
        self.admin(
            reqwest::Method::POST,
            "/admin/link-credentials",
            json!({"label": "crash test", "environment": environment.to_string(), "practices": [format!("D4w:{crn}")], "demoCopies": false}),
        )
        .await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Enables INTEGRATOR with the demo tables and `crn`; returns a Stage key.
    pub(crate) async fn integrator(&self, crn: &str) -> String {
        self.integrator_in(Environment::Stage, crn).await
    }

    /// As [`Client::integrator`], returning a key for `environment`.
    pub(crate) async fn integrator_in(&self, environment: Environment, crn: &str) -> String {
        use reqwest::Method;
        let base = format!("/admin/integrators/{INTEGRATOR}");
        self.admin(
            Method::POST,
            &format!("{base}/enable"),
            json!({"pmsType": "D4w"}),
        )
        .await;
        self.admin(
            Method::PUT,
            &format!("{base}/components"),
            json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": TABLES, "allowWrite": false}),
        )
        .await;
        self.admin(
            Method::POST,
            &format!("{base}/practices"),
            json!({"pmsId": format!("D4w:{crn}")}),
        )
        .await;
        self.admin(
            Method::POST,
            &format!("{base}/keys"),
            json!({"environment": environment.to_string()}),
        )
        .await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
