//! Requests, site views, decisions and the pure `evaluate` function.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use halo_ids::{Environment, ExecutionMode, HaloGuid, PmsId, Timestamp};

use crate::policy::{CompiledIntegrator, CompiledPractice, pms_index};
use crate::{Components, IntegratorId, KeyHash, Policy, StatementKind};

/// One integrator request, as the router sees it. Borrowed: building it allocates
/// nothing.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `Ocp-Apim-Subscription-Key` header, exactly as sent (empty if absent).
    pub key: &'a str,
    /// The site the request names.
    pub halo_guid: HaloGuid,
    /// The execution mode.
    pub mode: ExecutionMode,
    /// The catalogue the request names, or `None` for the site's default catalogue,
    /// which needs no grant. A named catalogue must be granted (compared ignoring
    /// case, brackets and quotes).
    pub catalogue: Option<&'a str>,
    /// The components of the command (from [`extract_components`](crate::extract_components)).
    pub components: &'a Components,
    /// The caller's address, if known.
    pub caller_ip: Option<IpAddr>,
    /// The time of the request (for limits; [`evaluate`] itself does not use it).
    pub now: Timestamp,
}

/// What the router knows of a site: all `Copy`, built without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteView {
    /// The site.
    pub halo_guid: HaloGuid,
    /// The environment of the site's Link.
    pub environment: Environment,
    /// The site's PMS ID (for D4W, its parent CRN, or fake CRN in Stage).
    pub pms_id: PmsId,
    /// Whether the site holds its authority group's authority.
    pub authoritative: bool,
    /// Whether the site's status is `active` (not initialising, removed or
    /// uninstalled).
    pub active: bool,
}

/// Why a request is denied. A domain code: adapters map it to their protocol (the
/// Cloud's one status table is `halo_cloud::status`; SPEC §5 gives the HTTP status
/// each variant's doc names). Deliberately exhaustive, so that a new code does not
/// compile until every adapter has mapped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyCode {
    /// No subscription key was sent (401).
    MissingKey,
    /// The key is not issued, or was revoked (401).
    UnknownKey,
    /// The key belongs to the other environment than the site (401).
    WrongEnvironment,
    /// The integrator is not enabled for any PMS type, or not for the PMS type it
    /// asked about by PMS ID (403).
    IntegratorNotEnabled,
    /// The practice (asked about by PMS ID) is not enabled for the integrator (403).
    PracticeNotEnabled,
    /// The practice is enabled but the integrator has not paired with it in the
    /// environment of the key (403). Pairing is per environment.
    NotPaired,
    /// The command touches a catalogue, table or procedure not authorised, or is a
    /// kind of statement never allowed (DDL, dynamic SQL, ...), or did not parse (403).
    ComponentNotAuthorised,
    /// The command writes (or runs as `nonQuery`) without write authorisation (403).
    WriteNotAuthorised,
    /// The site is not its group's authoritative site (403).
    SiteNotAuthoritative,
    /// The caller's IP is not in the integrator's allowlist (403).
    CallerIpNotAllowed,
    /// The monthly quota is used up (403).
    QuotaExhausted,
    /// No such site, or none the integrator may see (404).
    UnknownSite,
    /// Too many requests; retry after the given milliseconds (429, `Retry-After`).
    RateLimited {
        /// Milliseconds until a token is available (at least 1).
        retry_after_ms: u64,
    },
}

impl DenyCode {
    /// A stable camelCase name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyCode::MissingKey => "missingKey",
            DenyCode::UnknownKey => "unknownKey",
            DenyCode::WrongEnvironment => "wrongEnvironment",
            DenyCode::IntegratorNotEnabled => "integratorNotEnabled",
            DenyCode::PracticeNotEnabled => "practiceNotEnabled",
            DenyCode::NotPaired => "notPaired",
            DenyCode::ComponentNotAuthorised => "componentNotAuthorised",
            DenyCode::WriteNotAuthorised => "writeNotAuthorised",
            DenyCode::SiteNotAuthoritative => "siteNotAuthoritative",
            DenyCode::CallerIpNotAllowed => "callerIpNotAllowed",
            DenyCode::QuotaExhausted => "quotaExhausted",
            DenyCode::UnknownSite => "unknownSite",
            DenyCode::RateLimited { .. } => "rateLimited",
        }
    }
}

/// A denial: a code and a message safe to show the caller (it names only the
/// caller's own key, command and grants, never another tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    code: DenyCode,
    message: Cow<'static, str>,
}

impl Deny {
    /// A denial with a fixed message.
    pub const fn new(code: DenyCode, message: &'static str) -> Self {
        Self {
            code,
            message: Cow::Borrowed(message),
        }
    }

    fn owned(code: DenyCode, message: String) -> Self {
        Self {
            code,
            message: Cow::Owned(message),
        }
    }

    /// The denial for a command that [`extract_components`](crate::extract_components)
    /// refused (fail closed): [`DenyCode::ComponentNotAuthorised`].
    pub fn unanalysable(error: &crate::PolicyError) -> Self {
        Self::owned(
            DenyCode::ComponentNotAuthorised,
            format!("command refused: {error}"),
        )
    }

    /// The code.
    pub fn code(&self) -> DenyCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// Who a key belongs to, after [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    integrator: IntegratorId,
    environment: Environment,
}

impl Authenticated {
    /// The integrator holding the key.
    pub fn integrator(&self) -> &IntegratorId {
        &self.integrator
    }

    /// The environment the key is bound to.
    pub fn environment(&self) -> Environment {
        self.environment
    }
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    integrator: IntegratorId,
    environment: Environment,
    halo_guid: HaloGuid,
    pms_id: PmsId,
}

impl Allowed {
    /// The integrator.
    pub fn integrator(&self) -> &IntegratorId {
        &self.integrator
    }

    /// The environment (of both key and site).
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The site.
    pub fn halo_guid(&self) -> HaloGuid {
        self.halo_guid
    }

    /// The site's practice.
    pub fn pms_id(&self) -> PmsId {
        self.pms_id
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may be routed (after [`Policy::take`] admits it).
    Allow(Allowed),
    /// The request is refused.
    Deny(Deny),
}

const MISSING_KEY: Deny = Deny::new(DenyCode::MissingKey, "missing subscription key");
const UNKNOWN_KEY: Deny = Deny::new(DenyCode::UnknownKey, "invalid subscription key");
const UNKNOWN_SITE: Deny = Deny::new(DenyCode::UnknownSite, "site not found");

fn lookup_key<'p>(
    policy: &'p Policy,
    key: &str,
    caller_ip: Option<IpAddr>,
) -> Result<(&'p CompiledIntegrator, Environment), Deny> {
    if key.is_empty() {
        return Err(MISSING_KEY);
    }
    lookup_hash(policy, &KeyHash::of(key), caller_ip)
}

fn lookup_hash<'p>(
    policy: &'p Policy,
    key_hash: &KeyHash,
    caller_ip: Option<IpAddr>,
) -> Result<(&'p CompiledIntegrator, Environment), Deny> {
    let entry = policy.keys.get(key_hash).ok_or(UNKNOWN_KEY)?;
    let integrator = policy
        .integrators
        .get(entry.integrator as usize)
        .ok_or(UNKNOWN_KEY)?;
    if entry.environment == Environment::Production && !integrator.ip_allowlist.is_empty() {
        let allowed =
            caller_ip.is_some_and(|ip| integrator.ip_allowlist.iter().any(|n| n.contains(&ip)));
        if !allowed {
            return Err(Deny::new(
                DenyCode::CallerIpNotAllowed,
                "caller ip address not allowed for this key",
            ));
        }
    }
    if integrator.pms.iter().all(Option::is_none) {
        return Err(Deny::new(
            DenyCode::IntegratorNotEnabled,
            "integrator not enabled",
        ));
    }
    Ok((integrator, entry.environment))
}

/// Checks a key alone, for endpoints without a site (find sites, pair site): the
/// key must be known, the caller's IP allowed (Production), and the integrator
/// enabled for at least one PMS type.
///
/// # Errors
/// [`DenyCode::MissingKey`], [`DenyCode::UnknownKey`], [`DenyCode::CallerIpNotAllowed`]
/// or [`DenyCode::IntegratorNotEnabled`].
pub fn authenticate(
    policy: &Policy,
    key: &str,
    caller_ip: Option<IpAddr>,
) -> Result<Authenticated, Deny> {
    let (i, environment) = lookup_key(policy, key, caller_ip)?;
    Ok(Authenticated {
        integrator: i.id.clone(),
        environment,
    })
}

/// [`authenticate`] for work accepted earlier whose key is no longer held: the
/// caller is named by the hash of the key it presented then (only hashes are ever
/// stored), checked against the policy of now. A key revoked since is
/// [`DenyCode::UnknownKey`]: deny by default.
///
/// # Errors
/// As [`authenticate`], except [`DenyCode::MissingKey`].
pub fn authenticate_stored(
    policy: &Policy,
    key_hash: &KeyHash,
    caller_ip: Option<IpAddr>,
) -> Result<Authenticated, Deny> {
    let (i, environment) = lookup_hash(policy, key_hash, caller_ip)?;
    Ok(Authenticated {
        integrator: i.id.clone(),
        environment,
    })
}

/// Checks a key and a PMS ID the caller named (find sites by PMS ID, pair site).
/// The answer depends only on the caller's own grants, never on whether any site
/// has that PMS ID.
///
/// # Errors
/// Those of [`authenticate`], then [`DenyCode::IntegratorNotEnabled`] (not for this
/// PMS type) or [`DenyCode::PracticeNotEnabled`].
pub fn authorise_practice(
    policy: &Policy,
    key: &str,
    caller_ip: Option<IpAddr>,
    pms_id: PmsId,
) -> Result<Authenticated, Deny> {
    let (i, environment) = lookup_key(policy, key, caller_ip)?;
    if i.pms[pms_index(pms_id.pms_type())].is_none() {
        return Err(Deny::new(
            DenyCode::IntegratorNotEnabled,
            "integrator not enabled for this practice management system",
        ));
    }
    if !i.practices.contains_key(&pms_id) {
        return Err(Deny::new(
            DenyCode::PracticeNotEnabled,
            "practice not enabled for this integrator",
        ));
    }
    Ok(Authenticated {
        integrator: i.id.clone(),
        environment,
    })
}

/// Whether the practice `pms_id` is enabled for an authenticated integrator (and the
/// integrator for its PMS type): what entitles a caller to be told about the
/// practice's branch CRNs and demo copies. Pairing and environment do not matter.
pub fn practice_enabled(policy: &Policy, who: &Authenticated, pms_id: PmsId) -> bool {
    policy.integrator(&who.integrator).is_some_and(|i| {
        i.pms[pms_index(pms_id.pms_type())].is_some() && i.practices.contains_key(&pms_id)
    })
}

/// Whether an authenticated integrator may see a site at all (for filtering find-
/// sites results): its practice is enabled for the integrator, its PMS type too, and
/// it is in the key's environment.
pub fn site_visible(policy: &Policy, who: &Authenticated, site: &SiteView) -> bool {
    policy
        .integrator(&who.integrator)
        .is_some_and(|i| visible_practice(i, site).is_some())
        && site.environment == who.environment
}

/// Decides whether an authenticated integrator may read a site's status (the site
/// status endpoint). `site` is `None` when no site has the Halo GUID.
///
/// Checks, in order: the site exists and its practice (and PMS type) is enabled for
/// the integrator, else [`DenyCode::UnknownSite`] with the same message as for a
/// Halo GUID nobody has, so the answer never tells one tenant that another's site
/// exists; then the environment, [`DenyCode::WrongEnvironment`] for a key of the
/// other environment (only to an integrator entitled to know the site). A site's
/// status (initialising, removed, ...) is what this endpoint reports, so it is not
/// checked; nor are pairing and authority.
///
/// # Errors
/// [`DenyCode::UnknownSite`] or [`DenyCode::WrongEnvironment`].
pub fn site_status_access(
    policy: &Policy,
    who: &Authenticated,
    site: Option<&SiteView>,
) -> Result<(), Deny> {
    let site = site.ok_or(UNKNOWN_SITE)?;
    policy
        .integrator(&who.integrator)
        .and_then(|i| visible_practice(i, site))
        .ok_or(UNKNOWN_SITE)?;
    if site.environment != who.environment {
        return Err(Deny::new(
            DenyCode::WrongEnvironment,
            "subscription key is for another environment than the site",
        ));
    }
    Ok(())
}

fn visible_practice<'p>(
    i: &'p CompiledIntegrator,
    site: &SiteView,
) -> Option<&'p CompiledPractice> {
    i.pms[pms_index(site.pms_id.pms_type())].as_ref()?;
    i.practices.get(&site.pms_id)
}

/// Decides a request: pure, and allocation-free when it allows.
///
/// `site` is `None` when the router does not know the Halo GUID. Checks, in order:
/// key ([`DenyCode::MissingKey`], [`DenyCode::UnknownKey`]), caller IP, integrator
/// enabled at all; then the site: unknown, or not visible to this integrator (PMS
/// type or practice not enabled), both give [`DenyCode::UnknownSite`] (404) with the
/// same message; then environment ([`DenyCode::WrongEnvironment`]), status (inactive
/// sites are [`DenyCode::UnknownSite`]), pairing, authority, catalogue, statement
/// kinds, write permission and each table and procedure.
pub fn evaluate(policy: &Policy, req: &Request<'_>, site: Option<&SiteView>) -> Decision {
    match evaluate_inner(policy, req, site) {
        Ok(a) => Decision::Allow(a),
        Err(d) => Decision::Deny(d),
    }
}

/// [`evaluate`] for work accepted earlier whose key is no longer held (an async
/// query re-dispatched after a restart): the caller is named by the hash of the key
/// it presented when the work was accepted, and every check runs again against the
/// policy of now, so a key revoked or a grant withdrawn since denies it.
/// `req.key` is not read.
pub fn evaluate_stored(
    policy: &Policy,
    key_hash: &KeyHash,
    req: &Request<'_>,
    site: Option<&SiteView>,
) -> Decision {
    let decided = lookup_hash(policy, key_hash, req.caller_ip)
        .and_then(|(i, environment)| decide(i, environment, req, site));
    match decided {
        Ok(a) => Decision::Allow(a),
        Err(d) => Decision::Deny(d),
    }
}

fn evaluate_inner(
    policy: &Policy,
    req: &Request<'_>,
    site: Option<&SiteView>,
) -> Result<Allowed, Deny> {
    let (i, environment) = lookup_key(policy, req.key, req.caller_ip)?;
    decide(i, environment, req, site)
}

fn decide(
    i: &CompiledIntegrator,
    environment: Environment,
    req: &Request<'_>,
    site: Option<&SiteView>,
) -> Result<Allowed, Deny> {
    let site = site
        .filter(|s| s.halo_guid == req.halo_guid)
        .ok_or(UNKNOWN_SITE)?;
    let practice = visible_practice(i, site).ok_or(UNKNOWN_SITE)?;
    let grant = i.pms[pms_index(site.pms_id.pms_type())]
        .as_ref()
        .ok_or(UNKNOWN_SITE)?;
    if site.environment != environment {
        return Err(Deny::new(
            DenyCode::WrongEnvironment,
            "subscription key is not valid for this site's environment",
        ));
    }
    if !site.active {
        return Err(UNKNOWN_SITE);
    }
    if !practice.paired.contains(environment) {
        // Pairing is per environment: a pairing made with a Stage key does not
        // pair Production, and the reverse.
        return Err(Deny::new(
            DenyCode::NotPaired,
            "integrator has not paired with this site in this environment",
        ));
    }
    if !site.authoritative {
        return Err(Deny::new(
            DenyCode::SiteNotAuthoritative,
            "site is not authoritative for its practice",
        ));
    }
    if let Some(requested) = req.catalogue {
        if !grant.catalogues.iter().any(|c| catalogue_eq(c, requested)) {
            return Err(Deny::owned(
                DenyCode::ComponentNotAuthorised,
                format!("catalogue not authorised: {}", excerpt(requested)),
            ));
        }
    }
    let c = req.components;
    if c.has(StatementKind::Ddl) || c.has(StatementKind::Other) {
        return Err(Deny::new(
            DenyCode::ComponentNotAuthorised,
            "command holds a statement kind that is never allowed",
        ));
    }
    if (req.mode == ExecutionMode::NonQuery || c.has(StatementKind::Write)) && !grant.allow_write {
        return Err(Deny::new(
            DenyCode::WriteNotAuthorised,
            "writes are not authorised for this integrator",
        ));
    }
    for cat in c.catalogues() {
        if !grant.catalogues.iter().any(|g| &**g == cat) {
            return Err(Deny::owned(
                DenyCode::ComponentNotAuthorised,
                format!("catalogue not authorised: {}", excerpt(cat)),
            ));
        }
    }
    for t in c.tables() {
        if !grant.tables.contains(t) {
            return Err(Deny::owned(
                DenyCode::ComponentNotAuthorised,
                format!("table not authorised: {}", excerpt(t)),
            ));
        }
    }
    for p in c.procedures() {
        if !grant.procedures.contains(p) {
            return Err(Deny::owned(
                DenyCode::ComponentNotAuthorised,
                format!("procedure not authorised: {}", excerpt(p)),
            ));
        }
    }
    Ok(Allowed {
        integrator: i.id.clone(),
        environment,
        halo_guid: site.halo_guid,
        pms_id: site.pms_id,
    })
}

/// Compares a granted (normalised, lowercase) catalogue with a requested name that
/// may carry brackets or quotes and any case, without allocating.
fn catalogue_eq(granted: &str, requested: &str) -> bool {
    let r = requested.trim_ascii();
    let r = r
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .or_else(|| r.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(r);
    r.chars().flat_map(char::to_lowercase).eq(granted.chars())
}

fn excerpt(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).take(60).collect()
}

impl Policy {
    /// Admits an allowed request against the rate limits and monthly quotas of its
    /// integrator and practice (Production only; Stage has none). Lock-free: one CAS
    /// per counter. Call it once per routed query, after [`evaluate`] allowed it.
    ///
    /// # Errors
    /// [`DenyCode::RateLimited`] (with the wait) or [`DenyCode::QuotaExhausted`].
    pub fn take(&self, allowed: &Allowed, now: Timestamp) -> Result<(), Deny> {
        if allowed.environment != Environment::Production {
            return Ok(());
        }
        let Some(i) = self.integrator(&allowed.integrator) else {
            return Ok(());
        };
        let practice = i.practices.get(&allowed.pms_id);
        let limited = |retry_after_ms| {
            Deny::new(
                DenyCode::RateLimited { retry_after_ms },
                "rate limit exceeded",
            )
        };
        if let Some(b) = &i.rate {
            b.take(now).map_err(limited)?;
        }
        if let Some(b) = practice.and_then(|p| p.rate.as_ref()) {
            b.take(now).map_err(limited)?;
        }
        let exhausted = Deny::new(DenyCode::QuotaExhausted, "monthly quota exhausted");
        if let Some(q) = &i.quota {
            q.take(now).map_err(|()| exhausted.clone())?;
        }
        if let Some(q) = practice.and_then(|p| p.quota.as_ref()) {
            if q.take(now).is_err() {
                if let Some(iq) = &i.quota {
                    iq.give_back();
                }
                return Err(exhausted);
            }
        }
        Ok(())
    }
}
