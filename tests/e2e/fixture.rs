//! The fixture: a Cloud in-process on 127.0.0.1:0 with its own temp directory,
//! Links started on demand, and admin and integrator calls over real HTTP.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use halo_cloud::{CloudConfig, HttpLimits, RunningCloud};
use halo_ids::{Crn, Environment, HaloGuid};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, AgentHandle, LinkConfig};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::{Value, json};

pub(crate) const ADMIN: &str = "test-admin-token-0123456789";
pub(crate) const INTEGRATOR: &str = "acme-dental";
pub(crate) const TABLES: [&str; 4] = ["patients", "providers", "appointments", "treatments"];

pub(crate) struct Harness {
    pub(crate) cloud: RunningCloud,
    pub(crate) http: reqwest::Client,
    pub(crate) dir: tempfile::TempDir,
    next_link: usize,
}

pub(crate) struct TestLink {
    pub(crate) handle: AgentHandle,
    /// (practice CRN as integrators use it, Halo GUID) per database, in order.
    pub(crate) sites: Vec<(Crn, HaloGuid)>,
    /// The Link's metrics (jobs by outcome).
    pub(crate) metrics: std::sync::Arc<halo_link::metrics::LinkMetrics>,
}

/// A practice database to generate.
pub(crate) fn practice(crn: &str, name: &str) -> DemoPractice {
    let mut p = DemoPractice::new(crn.parse().unwrap(), name);
    p.patients = 12;
    p
}

impl Harness {
    pub(crate) async fn start() -> Harness {
        Self::start_with(RouterConfig::standard()).await
    }

    pub(crate) async fn start_with(router: RouterConfig) -> Harness {
        Self::start_with_limits(router, HttpLimits::default()).await
    }

    pub(crate) async fn start_with_limits(router: RouterConfig, http: HttpLimits) -> Harness {
        Self::start_with_jobs(router, http, halo_cloud::JobsConfig::default()).await
    }

    /// A harness whose Cloud runs the async path with `jobs`.
    pub(crate) async fn start_with_jobs(
        router: RouterConfig,
        http: HttpLimits,
        jobs: halo_cloud::JobsConfig,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cloud = halo_cloud::start_with(
            CloudConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: Some(dir.path().join("cloud")),
                admin_token: ADMIN.to_owned(),
                router,
                availability: AvailabilityConfig::default(),
                snapshot_every: 1000,
                accept_damaged_log: false,
                max_databases_per_link: halo_cloud::app::MAX_DATABASES_PER_LINK,
                http,
            },
            jobs,
        )
        .await
        .unwrap();
        Harness {
            cloud,
            http: reqwest::Client::new(),
            dir,
            next_link: 0,
        }
    }

    /// Stops the Cloud and starts a new one on the same data directory and address
    /// (stop the Links first: a live session holds the old Cloud's state).
    pub(crate) async fn restart(self) -> Harness {
        let Harness {
            cloud,
            http,
            dir,
            next_link,
        } = self;
        drop(http);
        let addr = cloud.addr;
        let state = std::sync::Arc::downgrade(&cloud.app);
        cloud.stop().await;
        // The log is closed when the last handle to the state goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the stopped Cloud's state is still held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cloud = halo_cloud::start(CloudConfig {
            listen: addr,
            data_dir: Some(dir.path().join("cloud")),
            admin_token: ADMIN.to_owned(),
            router: RouterConfig::standard(),
            availability: AvailabilityConfig::default(),
            snapshot_every: 1000,
            accept_damaged_log: false,
            max_databases_per_link: halo_cloud::app::MAX_DATABASES_PER_LINK,
            http: HttpLimits::default(),
        })
        .await
        .unwrap();
        Harness {
            cloud,
            http: reqwest::Client::new(),
            dir,
            next_link,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.cloud.addr, path)
    }

    /// An admin call; panics unless it succeeds.
    pub(crate) async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Generates databases and starts a Link serving them.
    pub(crate) async fn link(&mut self, env: Environment, practices: &[DemoPractice]) -> TestLink {
        self.link_with(env, practices, |_| {}).await
    }

    /// [`Harness::link`], with `configure` applied to the Link's config before it
    /// starts (its databases already listed).
    pub(crate) async fn link_with(
        &mut self,
        env: Environment,
        practices: &[DemoPractice],
        configure: impl FnOnce(&mut LinkConfig),
    ) -> TestLink {
        let n = self.next_link;
        self.next_link += 1;
        let mut paths = Vec::new();
        for (i, p) in practices.iter().enumerate() {
            let path = self.dir.path().join(format!("link{n}-db{i}.sqlite"));
            generate(&path, p).unwrap();
            paths.push(path);
        }
        let token = self.credential(env, practices).await;
        self.start_link(
            env,
            token,
            self.dir.path().join(format!("link{n}-state.json")),
            paths,
            configure,
        )
        .await
    }

    /// Issues a Link credential scoped to `env` and the real practices among
    /// `practices` (and demo copies, in Stage).
    pub(crate) async fn credential(&self, env: Environment, practices: &[DemoPractice]) -> String {
        let listed: Vec<String> = practices
            .iter()
            .filter(|p| !p.is_demo && !p.is_deidentified)
            .map(|p| format!("D4w:{}", p.parent_crn))
            .collect();
        self.admin(
            reqwest::Method::POST,
            "/admin/link-credentials",
            json!({
                "label": format!("link for {listed:?}"),
                "environment": env.as_str(),
                "practices": listed,
                "demoCopies": env == Environment::Stage,
            }),
        )
        .await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn start_link(
        &self,
        env: Environment,
        token: String,
        state: PathBuf,
        paths: Vec<PathBuf>,
        configure: impl FnOnce(&mut LinkConfig),
    ) -> TestLink {
        let mut config = LinkConfig::new(
            format!("ws://{}/link/ws", self.cloud.addr),
            env,
            token,
            state,
            paths,
        );
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(200);
        configure(&mut config);
        let link = Agent::prepare(config).unwrap();
        let sites = link
            .databases()
            .iter()
            .map(|db| {
                let demo = db.identity().is_demo_or_deidentified();
                (
                    if demo {
                        db.fake_crn()
                    } else {
                        db.identity().parent_crn
                    },
                    db.halo_guid(),
                )
            })
            .collect();
        let metrics = std::sync::Arc::clone(link.metrics());
        let handle = link.spawn();
        handle
            .wait_connected(1, Duration::from_secs(10))
            .await
            .unwrap();
        TestLink {
            handle,
            sites,
            metrics,
        }
    }

    /// Enables INTEGRATOR for D4W with the demo tables, and returns a key for `env`.
    pub(crate) async fn integrator(&self, env: Environment) -> String {
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
            &format!("{base}/keys"),
            json!({"environment": env.as_str()}),
        )
        .await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Enables a practice for INTEGRATOR (by support).
    pub(crate) async fn enable_practice(&self, crn: Crn) {
        self.admin(
            reqwest::Method::POST,
            &format!("/admin/integrators/{INTEGRATOR}/practices"),
            json!({"pmsId": format!("D4w:{crn}")}),
        )
        .await;
    }

    pub(crate) async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .header(halo_cloud::KEY_HEADER, key)
            .send()
            .await
            .unwrap();
        Self::answer(resp).await
    }

    pub(crate) async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .header(halo_cloud::KEY_HEADER, key)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn pair(&self, key: &str, crn: Crn) -> (u16, Value) {
        self.post(
            key,
            &format!(
                "/integrator/pair-site?practiceManagementSiteId={crn}&practiceManagementName=D4w"
            ),
            Value::Null,
        )
        .await
    }

    pub(crate) async fn query(&self, key: &str, site: HaloGuid, sql: &str) -> (u16, Value) {
        self.query_body(
            key,
            site,
            json!({"command": {"text": sql, "executionMode": "reader", "type": "text"}}),
        )
        .await
    }

    pub(crate) async fn query_body(&self, key: &str, site: HaloGuid, body: Value) -> (u16, Value) {
        self.post(
            key,
            &format!("/integrator/sites/{site}/queries/immediate"),
            body,
        )
        .await
    }
}

/// The rows of a successful query answer.
pub(crate) fn rows(answer: &Value) -> Vec<Value> {
    let data = answer["result"]["data"].as_str().expect("result.data");
    let json = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// The error message of an error answer.
pub(crate) fn message(answer: &Value) -> String {
    answer["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
