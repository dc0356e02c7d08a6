//! `halo-admin`: every operation of the Cloud's administration API as a subcommand.
//!
//! The admin token comes from `HALO_ADMIN_TOKEN` only (never a flag, so it stays out
//! of `ps` and shell history); the Cloud's URL from `--url` or `HALO_CLOUD_URL`.
//! Output is a table, or the Cloud's JSON with `--json`. Exit status: 0 done, 1 the
//! Cloud refused (its status and message on stderr), 2 usage, 3 Cloud unreachable.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use halo_admin::{AdminClient, AdminError, render};
use reqwest::Method;
use serde_json::{Value, json};

/// Administer a Halo Connect Cloud: integrators, keys, Link credentials, sites.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "\
The admin token is read from HALO_ADMIN_TOKEN (the value given to `halo-cloud serve`).
Exit status: 0 done, 1 the Cloud refused the call, 2 usage, 3 the Cloud could not be reached."
)]
struct Cli {
    /// The Cloud's base URL.
    #[arg(
        long,
        env = "HALO_CLOUD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Print the Cloud's JSON answer instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Integrators: enable, authorise components, enable practices, issue keys.
    #[command(subcommand)]
    Integrator(IntegratorCmd),
    /// Link credentials: issue, list, extend scope, revoke, rotate.
    #[command(subcommand, name = "link-credential")]
    LinkCredential(CredentialCmd),
    /// Sites: the support view, promotion.
    #[command(subcommand)]
    Site(SiteCmd),
    /// The audit trail, newest first, filtered and paged.
    Audit(AuditArgs),
    /// Webhooks: an integrator's URLs and secret, and the dead letters.
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// The status console: a one-time login link valid for 60 seconds.
    ConsoleTicket,
    /// Apply any policy event given as JSON (quotas, rate limits, IP allowlists,
    /// revocations, disabling), e.g. '{"event":"quotaSet","integrator":"acme","perMonth":1000}'.
    PolicyEvent {
        /// The event as JSON; `@PATH` reads it from a file, `-` (the default) from
        /// standard input.
        #[arg(default_value = "-")]
        event: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Environment {
    Stage,
    Production,
}

impl Environment {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stage => "stage",
            Self::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// A practice's own server.
    OnPremises,
    /// A multi-tenant hosting cluster.
    Hosting,
}

#[derive(Debug, Subcommand)]
enum IntegratorCmd {
    /// Step 1: the PMS vendor enables the integrator for its PMS.
    Enable {
        /// The integrator id.
        integrator: String,
        /// `D4w`, `BestPractice` or `Zedmed`.
        #[arg(long, default_value = "D4w")]
        pms_type: String,
    },
    /// Step 2: the vendor authorises the components the integrator may use
    /// (replaces the earlier set for this PMS type).
    Components {
        /// The integrator id.
        integrator: String,
        /// `D4w`, `BestPractice` or `Zedmed`.
        #[arg(long, default_value = "D4w")]
        pms_type: String,
        /// A table or view it may read (repeat, or separate with commas).
        #[arg(long = "table", value_delimiter = ',')]
        tables: Vec<String>,
        /// A catalogue it may name (repeat, or separate with commas).
        #[arg(long = "catalogue", value_delimiter = ',')]
        catalogues: Vec<String>,
        /// A stored procedure it may call (repeat, or separate with commas).
        #[arg(long = "procedure", value_delimiter = ',')]
        procedures: Vec<String>,
        /// Allow writes (`nonQuery`) to the tables.
        #[arg(long)]
        allow_write: bool,
    },
    /// Step 3: support enables a practice for the integrator.
    Practice {
        /// The integrator id.
        integrator: String,
        /// The practice, `<pms type>:<CRN>`, e.g. `D4w:AB123`.
        pms_id: String,
    },
    /// Step 4: issue a subscription key bound to one environment (shown once).
    Key {
        /// The integrator id.
        integrator: String,
        /// The only environment the key reaches.
        #[arg(long, value_enum)]
        environment: Environment,
    },
}

/// Who does a support action, and why; both are recorded.
#[derive(Debug, Args)]
struct Action {
    /// Who acts (recorded).
    #[arg(long, env = "HALO_ADMIN_ACTOR")]
    actor: String,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Subcommand)]
enum CredentialCmd {
    /// Issue a Link credential scoped to one environment and its practices (the key
    /// is shown once; put it in the Link's config as `token`).
    Issue {
        /// A label for people (the practice or the hosting cluster).
        #[arg(long)]
        label: String,
        /// The only environment the Link may connect in.
        #[arg(long, value_enum)]
        environment: Environment,
        /// On premises (the default) or a hosting cluster.
        #[arg(long, value_enum, default_value = "on-premises")]
        kind: Kind,
        /// A practice the Link may announce, `D4w:<parent CRN>` (repeat, or separate
        /// with commas).
        #[arg(long = "practice", value_delimiter = ',', required = true)]
        practices: Vec<String>,
        /// The Link may also announce demo and de-identified copies (Stage only).
        #[arg(long)]
        demo_copies: bool,
        /// Who issues it (recorded).
        #[arg(long, env = "HALO_ADMIN_ACTOR")]
        actor: Option<String>,
    },
    /// List every Link credential (ids, scopes, bound Link; never a token).
    List,
    /// Add practices to a credential's scope (the Link announces them on its next
    /// connection).
    Scope {
        /// The credential id (`lc_...`).
        id: String,
        /// A practice to add, `D4w:<parent CRN>` (repeat, or separate with commas).
        #[arg(long = "practice", value_delimiter = ',', required = true)]
        practices: Vec<String>,
        #[command(flatten)]
        action: Action,
    },
    /// Revoke a credential: it authenticates no one from now on, and its Link's live
    /// session is closed.
    Revoke {
        /// The credential id (`lc_...`).
        id: String,
        #[command(flatten)]
        action: Action,
    },
    /// A new key for the same Link and scope; the old one is revoked.
    Rotate {
        /// The credential id (`lc_...`).
        id: String,
        #[command(flatten)]
        action: Action,
    },
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// Kinds, comma-separated (e.g. keyIssued,sitePromoted).
    #[arg(long)]
    kind: Option<String>,
    /// Who did it.
    #[arg(long)]
    actor: Option<String>,
    /// The integrator concerned.
    #[arg(long)]
    integrator: Option<String>,
    /// The practice concerned, e.g. D4w:AB123.
    #[arg(long)]
    practice: Option<String>,
    /// The site concerned (a Halo GUID).
    #[arg(long)]
    site: Option<String>,
    /// From (inclusive): milliseconds since the Unix epoch or RFC 3339.
    #[arg(long)]
    from: Option<String>,
    /// To (exclusive): milliseconds since the Unix epoch or RFC 3339.
    #[arg(long)]
    to: Option<String>,
    /// Entries per page (1 to 500).
    #[arg(long)]
    limit: Option<u32>,
    /// The previous page's `nextCursor`, for the next (older) page.
    #[arg(long)]
    cursor: Option<String>,
}

impl AuditArgs {
    fn query(self) -> Vec<(String, String)> {
        let limit = self.limit.map(|l| l.to_string());
        [
            ("kind", self.kind),
            ("actor", self.actor),
            ("integrator", self.integrator),
            ("practice", self.practice),
            ("site", self.site),
            ("from", self.from),
            ("to", self.to),
            ("limit", limit),
            ("cursor", self.cursor),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
enum WebhookCmd {
    /// Set an integrator's webhook URLs and signing secret (a secret is generated
    /// and shown once when none is given). URLs may use {siteId}, {queryId}, {source}.
    Set {
        /// The integrator.
        integrator: String,
        /// The URL for every webhook (not `--url`, which names the Cloud).
        #[arg(long = "webhook-url", id = "webhook_url")]
        url: Option<String>,
        /// The URL for async-query webhooks (overrides --url).
        #[arg(long)]
        async_url: Option<String>,
        /// The URL for registered-query webhooks (overrides --url).
        #[arg(long)]
        registered_url: Option<String>,
        /// The signing secret (better from a file or a variable than typed).
        #[arg(long, env = "HALO_WEBHOOK_SECRET")]
        secret: Option<String>,
    },
    /// Deliveries that kept failing, and the number still pending.
    DeadLetters,
}

#[derive(Debug, Subcommand)]
enum SiteCmd {
    /// The support view of a site: practice, environment, authority, epoch, Link.
    Show {
        /// The site's Halo GUID.
        halo_guid: String,
    },
    /// Make a site authoritative in its group (the epoch grows).
    Promote {
        /// The site's Halo GUID.
        halo_guid: String,
        #[command(flatten)]
        action: Action,
    },
}

/// What to print once the call succeeded.
enum Show {
    /// A sentence (table mode) for an answer without a body.
    Done(String),
    /// A secret shown once, with what it is for.
    Secret(&'static str),
    /// The credentials list.
    Credentials,
    /// A site.
    Site,
    /// A credential after a change, or any other object.
    Fields,
    /// A page of the audit trail.
    Audit,
}

struct Call {
    method: Method,
    path: Vec<String>,
    query: Vec<(String, String)>,
    body: Option<Value>,
    show: Show,
}

fn call(method: Method, path: &[&str], body: Option<Value>, show: Show) -> Call {
    Call {
        method,
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        query: Vec::new(),
        body,
        show,
    }
}

fn read_event(arg: &str) -> Result<Value, AdminError> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| AdminError::Input(format!("cannot read standard input: {e}")))?;
        text
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(PathBuf::from(path))
            .map_err(|e| AdminError::Input(format!("cannot read {path}: {e}")))?
    } else {
        arg.to_owned()
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| AdminError::Input(format!("the policy event is not valid JSON: {e}")))?;
    if value.get("event").and_then(Value::as_str).is_none() {
        return Err(AdminError::Input(
            "the policy event needs an \"event\" field, e.g. {\"event\":\"quotaSet\",...}".into(),
        ));
    }
    Ok(value)
}

fn plan(command: Command) -> Result<Call, AdminError> {
    Ok(match command {
        Command::Integrator(IntegratorCmd::Enable {
            integrator,
            pms_type,
        }) => call(
            Method::POST,
            &["admin", "integrators", &integrator, "enable"],
            Some(json!({ "pmsType": pms_type })),
            Show::Done(format!("integrator {integrator} enabled for {pms_type}")),
        ),
        Command::Integrator(IntegratorCmd::Components {
            integrator,
            pms_type,
            tables,
            catalogues,
            procedures,
            allow_write,
        }) => call(
            Method::PUT,
            &["admin", "integrators", &integrator, "components"],
            Some(json!({
                "pmsType": pms_type, "tables": tables, "catalogues": catalogues,
                "procedures": procedures, "allowWrite": allow_write,
            })),
            Show::Done(format!(
                "integrator {integrator} may now use, on {pms_type}: tables [{}], catalogues [{}], procedures [{}], {}",
                tables.join(", "),
                catalogues.join(", "),
                procedures.join(", "),
                if allow_write {
                    "writes allowed"
                } else {
                    "read only"
                }
            )),
        ),
        Command::Integrator(IntegratorCmd::Practice { integrator, pms_id }) => call(
            Method::POST,
            &["admin", "integrators", &integrator, "practices"],
            Some(json!({ "pmsId": pms_id })),
            Show::Done(format!(
                "practice {pms_id} enabled for integrator {integrator}"
            )),
        ),
        Command::Integrator(IntegratorCmd::Key {
            integrator,
            environment,
        }) => call(
            Method::POST,
            &["admin", "integrators", &integrator, "keys"],
            Some(json!({ "environment": environment.as_str() })),
            Show::Secret("subscription key (Ocp-Apim-Subscription-Key)"),
        ),
        Command::PolicyEvent { event } => call(
            Method::POST,
            &["admin", "policy-events"],
            Some(read_event(&event)?),
            Show::Done("policy event applied".into()),
        ),
        Command::LinkCredential(CredentialCmd::Issue {
            label,
            environment,
            kind,
            practices,
            demo_copies,
            actor,
        }) => call(
            Method::POST,
            &["admin", "link-credentials"],
            Some(json!({
                "label": label, "environment": environment.as_str(),
                "kind": match kind { Kind::OnPremises => "onPremises", Kind::Hosting => "hosting" },
                "practices": practices, "demoCopies": demo_copies, "actor": actor,
            })),
            Show::Secret("Link credential (the `token` of the Link's config)"),
        ),
        Command::LinkCredential(CredentialCmd::List) => call(
            Method::GET,
            &["admin", "link-credentials"],
            None,
            Show::Credentials,
        ),
        Command::LinkCredential(CredentialCmd::Scope {
            id,
            practices,
            action,
        }) => call(
            Method::POST,
            &["admin", "link-credentials", &id, "scope"],
            Some(json!({ "practices": practices, "actor": action.actor, "reason": action.reason })),
            Show::Fields,
        ),
        Command::LinkCredential(CredentialCmd::Revoke { id, action }) => call(
            Method::POST,
            &["admin", "link-credentials", &id, "revoke"],
            Some(json!({ "actor": action.actor, "reason": action.reason })),
            Show::Done(format!(
                "credential {id} revoked; its Link's session is closed"
            )),
        ),
        Command::LinkCredential(CredentialCmd::Rotate { id, action }) => call(
            Method::POST,
            &["admin", "link-credentials", &id, "rotate"],
            Some(json!({ "actor": action.actor, "reason": action.reason })),
            Show::Secret(
                "new Link credential (replace the Link's `token`; the old one is revoked)",
            ),
        ),
        Command::Audit(args) => Call {
            query: args.query(),
            ..call(Method::GET, &["admin", "audit"], None, Show::Audit)
        },
        Command::Webhook(WebhookCmd::Set {
            integrator,
            url,
            async_url,
            registered_url,
            secret,
        }) => call(
            Method::PUT,
            &["admin", "integrators", &integrator, "webhooks"],
            Some(json!({
                "url": url, "asyncUrl": async_url, "registeredUrl": registered_url,
                "secret": secret,
            })),
            Show::Fields,
        ),
        Command::Webhook(WebhookCmd::DeadLetters) => call(
            Method::GET,
            &["admin", "webhooks", "dead-letters"],
            None,
            Show::Fields,
        ),
        Command::ConsoleTicket => call(
            Method::POST,
            &["admin", "console", "tickets"],
            None,
            Show::Fields,
        ),
        Command::Site(SiteCmd::Show { halo_guid }) => call(
            Method::GET,
            &["admin", "sites", &halo_guid],
            None,
            Show::Site,
        ),
        Command::Site(SiteCmd::Promote { halo_guid, action }) => call(
            Method::POST,
            &["admin", "sites", &halo_guid, "promote"],
            Some(json!({ "actor": action.actor, "reason": action.reason })),
            Show::Site,
        ),
    })
}

fn output(show: &Show, answer: Option<&Value>, as_json: bool) -> String {
    if as_json {
        let value = answer.cloned().unwrap_or_else(|| json!({ "ok": true }));
        return serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    }
    let empty = Value::Null;
    let answer = answer.unwrap_or(&empty);
    match show {
        Show::Done(sentence) => sentence.clone(),
        Show::Secret(what) => format!(
            "{}\nThe {what} is shown once: only its hash is kept. Store it now.",
            render::fields(answer)
        ),
        Show::Credentials => render::credentials(answer),
        Show::Site => render::site(answer),
        Show::Fields => render::fields(answer),
        Show::Audit => render::audit(answer),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(cli: Cli) -> Result<String, AdminError> {
    let token = std::env::var("HALO_ADMIN_TOKEN").map_err(|_| {
        AdminError::Input(
            "set HALO_ADMIN_TOKEN to the admin token the Cloud was started with".into(),
        )
    })?;
    let client = AdminClient::new(&cli.url, &token)?;
    let plan = plan(cli.command)?;
    let path: Vec<&str> = plan.path.iter().map(String::as_str).collect();
    let answer = client
        .call_with_query(plan.method, &path, &plan.query, plan.body.as_ref())
        .await?;
    Ok(output(&plan.show, answer.as_ref(), cli.json))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(text) => {
            // A closed stdout (`| head`) is not an error worth a message.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "halo-admin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
