//! The demo: a Cloud with its embedded defaults, an in-process Stage Link serving
//! two tenant databases and one demo copy, a demo vendor grant and integrator, and
//! the lines a newcomer pastes to see rows come back.
//!
//! A crate of its own, so that the Cloud binary links no agent: only this crate
//! (binary `halo-demo`) depends on both `halo-cloud` and `halo-link`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use halo_ids::{Crn, Environment, HaloGuid, PmsId, PmsType};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, AgentHandle, LinkConfig};
use halo_policy::{IntegratorId, KeyHash, ReadAccess};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;

use halo_cloud::admin::new_secret;
use halo_cloud::app::{CloudConfig, MAX_DATABASES_PER_LINK, RunningCloud, StartError, start};
use halo_cloud::clock::now;
use halo_cloud::record::CredentialEvent;
use halo_credentials::Scope;

/// The demo integrator's id.
pub const DEMO_INTEGRATOR: &str = "demo-integrator";

/// The tables the demo integrator may read.
pub const DEMO_TABLES: [&str; 4] = ["patients", "providers", "appointments", "treatments"];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The work directory could not be prepared.
    #[error("demo data: {0}")]
    Io(#[from] std::io::Error),
    /// A demo database could not be generated.
    #[error("demo database: {0}")]
    Generate(String),
    /// The Cloud did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The in-process Link did not connect.
    #[error("demo link: {0}")]
    Link(String),
    /// A demo grant was refused.
    #[error("demo grant: {0}")]
    Grant(String),
}

/// One demo site, as printed.
#[derive(Debug, Clone)]
pub struct DemoSite {
    /// The practice name.
    pub practice_name: String,
    /// The CRN integrators use (the fake CRN for the demo copy).
    pub crn: Crn,
    /// The Halo GUID.
    pub halo_guid: HaloGuid,
    /// Whether it is the demo copy.
    pub is_demo: bool,
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The Cloud.
    pub cloud: RunningCloud,
    /// The in-process Link.
    pub link: AgentHandle,
    /// The Stage subscription key of the demo integrator.
    pub key: String,
    /// The admin token.
    pub admin_token: String,
    /// The sites served.
    pub sites: Vec<DemoSite>,
    /// Where the data lives.
    pub work_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

fn practices() -> Vec<DemoPractice> {
    let crn = |s: &str| s.parse::<Crn>().expect("demo crns are valid");
    let mut harbour = DemoPractice::new(crn("HARBOUR01"), "Harbourside Dental");
    harbour.branch_crns = vec![
        (crn("HARBOUR02"), "Manly".to_owned()),
        (crn("HARBOUR03"), "Mosman".to_owned()),
    ];
    let bright = DemoPractice::new(crn("BRIGHT77"), "Bright Smiles Family Dentistry");
    let mut demo = DemoPractice::new(crn("DEMO1"), "Demo Dental (training copy)");
    demo.is_demo = true;
    vec![harbour, bright, demo]
}

/// Starts the demo. With `data_dir` the Cloud's log, the Link's state and the
/// databases persist there; otherwise a temporary directory is used and removed.
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn start_demo(listen: SocketAddr, data_dir: Option<PathBuf>) -> Result<Demo, DemoError> {
    let (work_dir, temp) = match data_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            (dir, None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("halo-demo-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let mut db_paths = Vec::new();
    let all = practices();
    for (i, practice) in all.iter().enumerate() {
        let path = work_dir.join(format!("practice-{i}.sqlite"));
        if !path.exists() {
            let started = std::time::Instant::now();
            let summary =
                generate(&path, practice).map_err(|e| DemoError::Generate(e.to_string()))?;
            tracing::info!(
                database = i + 1,
                of = all.len(),
                crn = %practice.parent_crn,
                patients = summary.patients,
                took_ms = started.elapsed().as_millis(),
                "demo data: database generated"
            );
        }
        db_paths.push(path);
    }
    let admin_token = new_secret("adm_");
    let cloud = start(CloudConfig {
        listen,
        data_dir: Some(work_dir.join("cloud")),
        admin_token: admin_token.clone(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 10_000,
        accept_damaged_log: false,
        max_databases_per_link: MAX_DATABASES_PER_LINK,
        http: halo_cloud::app::HttpLimits::default(),
    })
    .await?;
    let state = &cloud.app.state;

    // The Link's credential, then the Link itself (it reads the databases).
    // Scoped to the demo's practices and demo copies, in Stage.
    let link_token = new_secret("lnk_");
    let scope = Scope {
        practices: practices()
            .iter()
            .filter(|p| !p.is_demo && !p.is_deidentified)
            .map(|p| PmsId::new(PmsType::D4w, p.parent_crn))
            .collect(),
        ..Scope::demo_only()
    };
    state
        .apply_credential(
            CredentialEvent::Issued {
                token_hash: KeyHash::of(&link_token),
                label: "demo link".to_owned(),
                scope: Some(scope),
                actor: Some("demo".to_owned()),
            },
            now(),
        )
        .await
        .map_err(|e| DemoError::Grant(e.to_string()))?;
    let url = format!("ws://{}/link/ws", cloud.addr);
    let mut config = LinkConfig::new(
        url,
        Environment::Stage,
        link_token,
        work_dir.join("link-state.json"),
        db_paths,
    );
    config.heartbeat_interval = Duration::from_secs(5);
    let link = Agent::prepare(config).map_err(|e| DemoError::Link(e.to_string()))?;
    let sites: Vec<DemoSite> = link
        .databases()
        .iter()
        .map(|db| {
            let id = db.identity();
            let is_demo = id.is_demo_or_deidentified();
            DemoSite {
                practice_name: id.practice_name.clone(),
                crn: if is_demo {
                    db.fake_crn()
                } else {
                    id.parent_crn
                },
                halo_guid: db.halo_guid(),
                is_demo,
            }
        })
        .collect();

    // The vendor's and support's grants for the demo integrator.
    let integrator: IntegratorId = DEMO_INTEGRATOR
        .parse()
        .map_err(|e| DemoError::Grant(format!("{e}")))?;
    let key = new_secret("stg_");
    let events = ReadAccess {
        integrator: &integrator,
        pms_type: PmsType::D4w,
        environment: Environment::Stage,
        key: &key,
        catalogues: &["d4w"],
        tables: &DEMO_TABLES,
    }
    .events(sites.iter().map(|site| PmsId::new(PmsType::D4w, site.crn)));
    for event in events {
        state
            .apply_policy(event, now())
            .await
            .map_err(|e| DemoError::Grant(e.to_string()))?;
    }

    let link = link.spawn();
    link.wait_connected(1, Duration::from_secs(15))
        .await
        .map_err(|e| DemoError::Link(e.to_string()))?;
    Ok(Demo {
        cloud,
        link,
        key,
        admin_token,
        sites,
        work_dir,
        _temp: temp,
    })
}

/// The text the demo prints: key, sites and ready-to-paste `curl` commands.
pub fn instructions(demo: &Demo) -> String {
    let base = format!("http://{}", demo.cloud.addr);
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!("Halo Connect demo Cloud listening on {base}"),
    );
    line(&mut out, format!("Data: {}", display_dir(&demo.work_dir)));
    line(&mut out, String::new());
    line(&mut out, format!("Ocp-Apim-Subscription-Key: {}", demo.key));
    line(
        &mut out,
        format!("Admin token (Authorization: Bearer): {}", demo.admin_token),
    );
    line(
        &mut out,
        format!(
            "The demo integrator may read the tables {} (any other table is 403).",
            DEMO_TABLES.join(", ")
        ),
    );
    line(&mut out, String::new());
    line(&mut out, "Demo sites (Stage):".to_owned());
    for s in &demo.sites {
        let kind = if s.is_demo {
            "  [demo copy: fake CRN]"
        } else {
            ""
        };
        line(
            &mut out,
            format!(
                "  CRN {:<10} Halo GUID {}  {}{}",
                s.crn.as_str(),
                s.halo_guid,
                s.practice_name,
                kind
            ),
        );
    }
    if let Some(first) = demo.sites.first() {
        let key = format!("-H 'Ocp-Apim-Subscription-Key: {}'", demo.key);
        line(&mut out, String::new());
        line(&mut out, "# Find a site by its CRN:".to_owned());
        line(
            &mut out,
            format!(
                "curl -s {key} '{base}/integrator/sites?practiceManagementSiteId={}&practiceManagementName=D4w'",
                first.crn
            ),
        );
        line(&mut out, "# Site status:".to_owned());
        line(
            &mut out,
            format!(
                "curl -s {key} '{base}/integrator/sites/{}'",
                first.halo_guid
            ),
        );
        line(&mut out, "# An immediate query (result.data is base64 JSON rows; pipe through jq -r .result.data | base64 -d):".to_owned());
        line(
            &mut out,
            format!(
                "curl -s {key} -H 'Content-Type: application/json' '{base}/integrator/sites/{}/queries/immediate' -d '{{\"command\":{{\"text\":\"SELECT first_name, last_name, suburb FROM patients ORDER BY patient_id LIMIT 5\",\"executionMode\":\"reader\",\"type\":\"text\"}}}}'",
                first.halo_guid
            ),
        );
    }
    line(&mut out, String::new());
    line(
        &mut out,
        format!("OpenAPI: {base}/openapi.json    Stop with Ctrl-C."),
    );
    out
}

fn display_dir(dir: &Path) -> String {
    dir.display().to_string()
}
