//! A generator for small, realistic D4W-like SQLite databases (invented data).
//!
//! The output is deterministic from [`DemoPractice::seed`]: the same spec always
//! produces the same rows. Names are drawn from short lists of common names,
//! mobile numbers from the range Australia reserves for fiction (0491 570 xxx) and
//! e-mail addresses use `example.com`; no real person is described.
//!
//! Tables: `practice_info`, `practice_branch`, `catalogue` (the identity the Link
//! reads, see [`crate::DatabaseIdentity`]), `providers`, `patients`, `appointments`,
//! `treatments`.

use std::path::Path;

use halo_ids::Crn;
use rusqlite::{Connection, params};

use crate::LinkError;

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoPractice {
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// Parent CRN written into `practice_info`.
    pub parent_crn: Crn,
    /// Practice name.
    pub practice_name: String,
    /// PMS version string.
    pub pms_version: String,
    /// Branch CRNs with their locations.
    pub branch_crns: Vec<(Crn, String)>,
    /// Mark as a demo copy.
    pub is_demo: bool,
    /// Mark as a de-identified copy.
    pub is_deidentified: bool,
    /// Number of patients.
    pub patients: usize,
    /// Number of providers.
    pub providers: usize,
    /// Appointments per patient.
    pub appointments_per_patient: usize,
}

impl DemoPractice {
    /// A real (not demo) practice with 40 patients, 4 providers and 3 appointments
    /// each, seeded from the CRN.
    pub fn new(parent_crn: Crn, practice_name: impl Into<String>) -> Self {
        let seed = parent_crn
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        Self {
            seed,
            parent_crn,
            practice_name: practice_name.into(),
            pms_version: "D4W 15.4.2".into(),
            branch_crns: Vec::new(),
            is_demo: false,
            is_deidentified: false,
            patients: 40,
            providers: 4,
            appointments_per_patient: 3,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSummary {
    /// Patients written.
    pub patients: usize,
    /// Providers written.
    pub providers: usize,
    /// Appointments written.
    pub appointments: usize,
    /// Treatments written.
    pub treatments: usize,
}

const FIRST_NAMES: &[&str] = &[
    "Olivia",
    "Jack",
    "Charlotte",
    "Noah",
    "Amelia",
    "William",
    "Isla",
    "Oliver",
    "Mia",
    "Leo",
    "Ava",
    "Henry",
    "Grace",
    "Lucas",
    "Chloe",
    "Thomas",
    "Ruby",
    "James",
    "Zoe",
    "Ethan",
    "Harper",
    "Mason",
    "Sienna",
    "Archie",
    "Matilda",
    "Hugo",
    "Ivy",
    "Lachlan",
    "Willow",
    "Kai",
];
const LAST_NAMES: &[&str] = &[
    "Smith", "Nguyen", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin",
    "Anderson", "Thompson", "Lee", "Walker", "Harris", "Ryan", "Robinson", "Kelly", "King",
    "Patel", "Chen", "Murphy", "Davies", "Singh", "Clarke", "Hughes", "Price", "Bennett", "Wood",
];
const SUBURBS: &[(&str, &str)] = &[
    ("Fitzroy", "3065"),
    ("Carlton", "3053"),
    ("Brunswick", "3056"),
    ("Richmond", "3121"),
    ("Newtown", "2042"),
    ("Glebe", "2037"),
    ("Paddington", "4064"),
    ("Fremantle", "6160"),
    ("Norwood", "5067"),
    ("Sandy Bay", "7005"),
];
const FUNDS: &[&str] = &["None", "Bupa", "Medibank", "HCF", "nib", "HBF", "AHM"];
const FICTION_MOBILES: &[&str] = &[
    "0491 570 006",
    "0491 570 156",
    "0491 570 157",
    "0491 570 158",
    "0491 570 159",
    "0491 570 110",
    "0491 570 313",
    "0491 570 737",
];
const PROVIDER_TYPES: &[(&str, &str)] = &[
    ("Dr", "Dentist"),
    ("Dr", "Dentist"),
    ("Ms", "Hygienist"),
    ("Mr", "Oral Health Therapist"),
];
/// ADA item numbers with descriptions and typical fees in cents.
const ITEMS: &[(&str, &str, i64)] = &[
    ("011", "Comprehensive oral examination", 7_500),
    ("012", "Periodic oral examination", 5_500),
    ("022", "Intraoral periapical or bitewing radiograph", 4_000),
    ("114", "Removal of calculus", 12_000),
    (
        "121",
        "Topical application of remineralisation agents",
        3_500,
    ),
    ("311", "Removal of a tooth or part(s) thereof", 22_000),
    (
        "521",
        "Adhesive restoration, one surface, anterior tooth",
        16_000,
    ),
    (
        "531",
        "Adhesive restoration, one surface, posterior tooth",
        17_500,
    ),
    ("615", "Full crown, veneered, indirect", 165_000),
];
const STATUSES: &[&str] = &[
    "Completed",
    "Completed",
    "Completed",
    "Booked",
    "Cancelled",
    "FailedToAttend",
];
const REASONS: &[&str] = &[
    "Check-up and clean",
    "Toothache",
    "Filling",
    "Crown prep",
    "Review",
];
const TEETH: &[&str] = &["11", "16", "21", "26", "36", "37", "46", "47"];

const SCHEMA: &str = "
CREATE TABLE practice_info (
    parent_crn TEXT NOT NULL,
    practice_name TEXT NOT NULL,
    pms_version TEXT NOT NULL,
    is_demo INTEGER NOT NULL,
    is_deidentified INTEGER NOT NULL
);
CREATE TABLE practice_branch (crn TEXT PRIMARY KEY, location TEXT NOT NULL);
CREATE TABLE catalogue (name TEXT PRIMARY KEY, is_default INTEGER NOT NULL);
CREATE TABLE providers (
    provider_id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    provider_type TEXT NOT NULL,
    provider_number TEXT NOT NULL,
    active INTEGER NOT NULL
);
CREATE TABLE patients (
    patient_id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    date_of_birth TEXT NOT NULL,
    gender TEXT NOT NULL,
    mobile TEXT NOT NULL,
    email TEXT NOT NULL,
    suburb TEXT NOT NULL,
    postcode TEXT NOT NULL,
    health_fund TEXT NOT NULL
);
CREATE TABLE appointments (
    appointment_id INTEGER PRIMARY KEY,
    patient_id INTEGER NOT NULL REFERENCES patients(patient_id),
    provider_id INTEGER NOT NULL REFERENCES providers(provider_id),
    branch_crn TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    duration_min INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE treatments (
    treatment_id INTEGER PRIMARY KEY,
    patient_id INTEGER NOT NULL REFERENCES patients(patient_id),
    provider_id INTEGER NOT NULL REFERENCES providers(provider_id),
    appointment_id INTEGER NOT NULL REFERENCES appointments(appointment_id),
    item_code TEXT NOT NULL,
    description TEXT NOT NULL,
    tooth TEXT,
    fee_cents INTEGER NOT NULL,
    completed_at TEXT NOT NULL
);
CREATE INDEX appointments_patient ON appointments(patient_id);
CREATE INDEX treatments_patient ON treatments(patient_id);
";

/// SplitMix64: tiny, deterministic, independent of any crate's version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small; modulo bias is irrelevant for demo data.
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn date(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes a new demo database at `path`, in WAL mode: the mode for a database that a
/// practice's own software writes while the Link reads it. A WAL reader takes no
/// file lock per query and reads no header from disk (3 system calls per query
/// instead of 8 in rollback mode), and never blocks the writer.
///
/// # Errors
///
/// [`LinkError::Database`] if `path` already exists or SQLite fails.
pub fn generate(path: &Path, spec: &DemoPractice) -> Result<DemoSummary, LinkError> {
    let err = |reason: String| LinkError::Database {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        return Err(err("already exists; refusing to overwrite".into()));
    }
    let mut conn = Connection::open(path).map_err(|e| err(format!("cannot create: {e}")))?;
    // journal_mode answers with a row, so it is read rather than executed.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| err(format!("cannot set WAL mode: {e}")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(format!(
            "SQLite kept journal mode {mode} instead of WAL"
        )));
    }
    fill(&mut conn, spec).map_err(|e| err(format!("cannot generate: {e}")))
}

fn fill(conn: &mut Connection, spec: &DemoPractice) -> rusqlite::Result<DemoSummary> {
    let mut rng = Rng(spec.seed);
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT INTO practice_info VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            spec.parent_crn.as_str(),
            spec.practice_name,
            spec.pms_version,
            spec.is_demo,
            spec.is_deidentified
        ],
    )?;
    for (crn, location) in &spec.branch_crns {
        tx.execute(
            "INSERT INTO practice_branch VALUES (?1, ?2)",
            params![crn.as_str(), location],
        )?;
    }
    tx.execute("INSERT INTO catalogue VALUES ('d4w', 1)", [])?;

    let providers = spec.providers.max(1);
    for id in 1..=providers {
        let (title, kind) = PROVIDER_TYPES[(id - 1) % PROVIDER_TYPES.len()];
        tx.execute(
            "INSERT INTO providers VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
            params![
                id as i64,
                title,
                rng.pick(FIRST_NAMES),
                rng.pick(LAST_NAMES),
                kind,
                format!(
                    "{:06}{}",
                    200_000 + rng.below(700_000),
                    rng.pick(&["A", "B", "F", "J"])
                ),
            ],
        )?;
    }

    // Appointments fall in the weeks around 2026-03-02 (day 20514).
    let base_day = 20_514i64;
    let mut appointment_id = 0i64;
    let mut treatment_id = 0i64;
    for patient in 1..=spec.patients {
        let first = *rng.pick(FIRST_NAMES);
        let last = *rng.pick(LAST_NAMES);
        let (suburb, postcode) = *rng.pick(SUBURBS);
        let born = -7_000 + rng.below(25_000) as i64;
        tx.execute(
            "INSERT INTO patients VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                patient as i64,
                first,
                last,
                date(born),
                rng.pick(&["F", "M", "X"]),
                rng.pick(FICTION_MOBILES),
                format!(
                    "{}.{}{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    patient
                ),
                suburb,
                postcode,
                rng.pick(FUNDS),
            ],
        )?;
        for _ in 0..spec.appointments_per_patient {
            appointment_id += 1;
            let provider = 1 + rng.below(providers) as i64;
            let day = base_day - 90 + rng.below(120) as i64;
            let minute = 8 * 60 + 15 * rng.below(36) as i64;
            let branch = if spec.branch_crns.is_empty() {
                spec.parent_crn.as_str().to_owned()
            } else {
                rng.pick(&spec.branch_crns).0.as_str().to_owned()
            };
            let status = if day > base_day {
                "Booked"
            } else {
                *rng.pick(STATUSES)
            };
            tx.execute(
                "INSERT INTO appointments VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    appointment_id,
                    patient as i64,
                    provider,
                    branch,
                    format!("{}T{:02}:{:02}:00", date(day), minute / 60, minute % 60),
                    [15i64, 30, 45, 60][rng.below(4)],
                    status,
                    rng.pick(REASONS),
                ],
            )?;
            if status == "Completed" {
                for _ in 0..1 + rng.below(3) {
                    treatment_id += 1;
                    let (code, description, fee) = *rng.pick(ITEMS);
                    let tooth = if code.starts_with('0') || code == "114" || code == "121" {
                        None
                    } else {
                        Some(*rng.pick(TEETH))
                    };
                    tx.execute(
                        "INSERT INTO treatments VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            treatment_id,
                            patient as i64,
                            provider,
                            appointment_id,
                            code,
                            description,
                            tooth,
                            fee,
                            date(day),
                        ],
                    )?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(DemoSummary {
        patients: spec.patients,
        providers,
        appointments: appointment_id as usize,
        treatments: treatment_id as usize,
    })
}
