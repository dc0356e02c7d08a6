//! `halo-link doctor`: checks that a database holds what the Link reads from it
//! (see the `identity` module) and that a config is ready to run, and says what is
//! missing, with the fix.
//!
//! The checks read the schema first (every missing table and column is named, not
//! only the first), then read the identity exactly as the agent does
//! ([`DatabaseIdentity::read`]), so a database the doctor passes is one the Link
//! serves.

use std::fmt;
use std::path::{Path, PathBuf};

use halo_ids::Environment;
use rusqlite::{Connection, OpenFlags};

use crate::{DatabaseIdentity, LinkConfig};

/// The identity tables the Link reads, as SQL a practice database can be given.
/// `catalogue` is optional: without it the database has one default catalogue, `main`.
pub const IDENTITY_SCHEMA: &str = "\
CREATE TABLE practice_info (
    parent_crn TEXT NOT NULL,       -- the practice's CRN: 1 to 20 ASCII letters and digits
    practice_name TEXT NOT NULL,    -- not empty
    pms_version TEXT NOT NULL,
    is_demo INTEGER NOT NULL,       -- 0 or 1
    is_deidentified INTEGER NOT NULL -- 0 or 1
);                                  -- exactly one row
CREATE TABLE practice_branch (crn TEXT PRIMARY KEY, location TEXT NOT NULL); -- may be empty
CREATE TABLE catalogue (name TEXT PRIMARY KEY, is_default INTEGER NOT NULL);
-- catalogue is optional; when present, exactly one row has is_default = 1";

/// The tables and columns the Link reads, and whether the table is required.
const REQUIRED: &[(&str, &[&str], bool)] = &[
    (
        "practice_info",
        &[
            "parent_crn",
            "practice_name",
            "pms_version",
            "is_demo",
            "is_deidentified",
        ],
        true,
    ),
    ("practice_branch", &["crn", "location"], true),
    ("catalogue", &["name", "is_default"], false),
];

/// One thing that stops the Link from serving a database (or from running).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The file does not exist.
    NotFound,
    /// The file cannot be opened as a SQLite database.
    CannotOpen(String),
    /// A table the Link reads is missing.
    MissingTable(&'static str),
    /// A column the Link reads is missing.
    MissingColumn {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
    },
    /// The tables are there, but what they hold is not a valid identity.
    InvalidIdentity(String),
    /// A Production Link refuses demo and de-identified copies.
    DemoOnProduction,
    /// Something in the config itself.
    Config(String),
    /// A configured procedure's text does not prepare against the database (a
    /// missing table or column, ...).
    Procedure {
        /// The procedure's name.
        name: String,
        /// SQLite's words.
        reason: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(
                f,
                "the file does not exist (make a demo one with `halo-link demo-db --out PATH --crn CRN`)"
            ),
            Self::CannotOpen(e) => write!(f, "cannot open it as a SQLite database: {e}"),
            Self::MissingTable(table) => write!(
                f,
                "missing table {table} ({})",
                REQUIRED
                    .iter()
                    .find(|(t, _, _)| t == table)
                    .map(|(_, cols, _)| cols.join(", "))
                    .unwrap_or_default()
            ),
            Self::MissingColumn { table, column } => {
                write!(f, "table {table} has no column {column}")
            }
            Self::InvalidIdentity(e) => write!(f, "invalid identity: {e}"),
            Self::DemoOnProduction => write!(
                f,
                "a demo or de-identified copy: a production link refuses it (use a stage link)"
            ),
            Self::Config(e) => write!(f, "{e}"),
            Self::Procedure { name, reason } => write!(
                f,
                "procedure {name:?} does not prepare against this database: {reason}"
            ),
        }
    }
}

/// What the doctor found in one database.
#[derive(Debug, Clone)]
pub struct DatabaseReport {
    /// The database file.
    pub path: PathBuf,
    /// Everything wrong with it; empty when the Link can serve it.
    pub problems: Vec<Problem>,
    /// Its identity, when it could be read.
    pub identity: Option<DatabaseIdentity>,
}

impl DatabaseReport {
    /// Whether the Link can serve the database.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for DatabaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.identity {
            writeln!(
                f,
                "{}: practice {:?}, parent CRN {} (the Link credential's practices must include \"D4w:{}\")",
                self.path.display(),
                id.practice_name,
                id.parent_crn,
                id.parent_crn
            )?;
            writeln!(f, "  PMS version: {}", id.pms_version)?;
            let branches: Vec<String> = id
                .branch_crns
                .iter()
                .map(|b| format!("{} ({})", b.crn, b.location))
                .collect();
            writeln!(
                f,
                "  branch CRNs: {}",
                if branches.is_empty() {
                    "none".to_owned()
                } else {
                    branches.join(", ")
                }
            )?;
            let catalogues: Vec<String> = id
                .catalogues
                .iter()
                .map(|c| {
                    if c.is_default {
                        format!("{} (default)", c.name)
                    } else {
                        c.name.clone()
                    }
                })
                .collect();
            writeln!(f, "  catalogues: {}", catalogues.join(", "))?;
            writeln!(
                f,
                "  demo copy: {}, de-identified: {}{}",
                id.is_demo,
                id.is_deidentified,
                if id.is_demo_or_deidentified() {
                    " (stage only; routed by the fake CRN of its Halo GUID)"
                } else {
                    ""
                }
            )?;
        }
        if self.problems.is_empty() {
            writeln!(f, "{}: ok", self.path.display())
        } else {
            writeln!(
                f,
                "{}: {} problem{}",
                self.path.display(),
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" }
            )?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            if self
                .problems
                .iter()
                .any(|p| matches!(p, Problem::MissingTable(_) | Problem::MissingColumn { .. }))
            {
                writeln!(f, "  the Link reads these tables:")?;
                for line in IDENTITY_SCHEMA.lines() {
                    writeln!(f, "    {line}")?;
                }
            }
            Ok(())
        }
    }
}

/// Checks one database for what the Link reads from it.
pub fn check_database(path: &Path) -> DatabaseReport {
    let mut report = DatabaseReport {
        path: path.to_path_buf(),
        problems: Vec::new(),
        identity: None,
    };
    if !path.exists() {
        report.problems.push(Problem::NotFound);
        return report;
    }
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(e) => {
            report.problems.push(Problem::CannotOpen(e.to_string()));
            return report;
        }
    };
    for (table, columns, required) in REQUIRED {
        let present = match table_columns(&conn, table) {
            Ok(present) => present,
            Err(e) => {
                // Not a database, or unreadable: nothing more to learn.
                report.problems.push(Problem::CannotOpen(e.to_string()));
                return report;
            }
        };
        if present.is_empty() {
            if *required {
                report.problems.push(Problem::MissingTable(table));
            }
            continue;
        }
        for column in *columns {
            if !present.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                report
                    .problems
                    .push(Problem::MissingColumn { table, column });
            }
        }
    }
    drop(conn);
    if report.problems.is_empty() {
        match DatabaseIdentity::read(path) {
            Ok(identity) => report.identity = Some(identity),
            Err(crate::LinkError::Database { reason, .. }) => {
                report.problems.push(Problem::InvalidIdentity(reason));
            }
            Err(e) => report
                .problems
                .push(Problem::InvalidIdentity(e.to_string())),
        }
    }
    report
}

/// The columns of `table`, empty when there is no such table.
fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    stmt.query_map([table], |r| r.get::<_, String>(0))?
        .collect()
}

/// Prepares every procedure's text against the database at `path` (read-only, so
/// nothing runs), in name order; answers one problem per text that does not prepare.
pub fn check_procedures(path: &Path, procedures: &crate::Procedures) -> Vec<Problem> {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(e) => return vec![Problem::CannotOpen(e.to_string())],
    };
    let mut all: Vec<_> = procedures.iter().map(|(_, p)| p).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all.into_iter()
        .filter_map(|p| {
            conn.prepare(&p.text).err().map(|e| Problem::Procedure {
                name: p.name.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// What the doctor found in a config and each of its databases.
#[derive(Debug, Clone)]
pub struct ConfigReport {
    /// The config file.
    pub path: PathBuf,
    /// Problems of the config itself.
    pub problems: Vec<Problem>,
    /// One report per database the config names.
    pub databases: Vec<DatabaseReport>,
}

impl ConfigReport {
    /// Whether the Link can start with this config and serve every database.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.databases.iter().all(DatabaseReport::is_ok)
    }
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            writeln!(f, "{}: config ok", self.path.display())?;
        } else {
            writeln!(f, "{}: config has problems", self.path.display())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        for db in &self.databases {
            write!(f, "{db}")?;
        }
        Ok(())
    }
}

/// Checks a config file: that it parses, that its state file can be written, that
/// its token is not the example's placeholder, and every database it names.
pub fn check_config(path: &Path) -> ConfigReport {
    let mut report = ConfigReport {
        path: path.to_path_buf(),
        problems: Vec::new(),
        databases: Vec::new(),
    };
    let config = match LinkConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.problems.push(Problem::Config(e.to_string()));
            return report;
        }
    };
    if config.token.starts_with("replace-with") {
        report.problems.push(Problem::Config(
            "token: still the example's placeholder; put the lnk_... key that `halo-admin link-credential issue` printed"
                .into(),
        ));
    }
    let state_dir = config
        .state_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !state_dir.is_dir() {
        report.problems.push(Problem::Config(format!(
            "state_file: the directory {} does not exist",
            state_dir.display()
        )));
    }
    for db in &config.databases {
        let mut db_report = check_database(db);
        if config.environment == Environment::Production
            && db_report
                .identity
                .as_ref()
                .is_some_and(DatabaseIdentity::is_demo_or_deidentified)
        {
            db_report.problems.push(Problem::DemoOnProduction);
        }
        if db_report.is_ok() {
            // `load` already checked every procedure's text with the Cloud's
            // analyser; here each one must also prepare against this database.
            if let Ok(procedures) = config.procedures_for(db) {
                db_report.problems.extend(check_procedures(db, &procedures));
            }
        }
        report.databases.push(db_report);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, sql: &str) -> PathBuf {
        let path = dir.join("practice.sqlite");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(sql).expect("schema");
        path
    }

    const GOOD_ROWS: &str = "INSERT INTO practice_info VALUES ('AB123', 'Smile Co', '9.1', 0, 0);
        INSERT INTO practice_branch VALUES ('BR7', 'Fremantle');";

    #[test]
    fn the_documented_schema_with_one_row_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db(
            dir.path(),
            &format!("{IDENTITY_SCHEMA}\n{GOOD_ROWS}\nINSERT INTO catalogue VALUES ('main', 1);"),
        );
        let report = check_database(&path);
        assert!(report.is_ok(), "{report}");
        let id = report.identity.as_ref().expect("identity read");
        assert_eq!(id.parent_crn.to_string(), "AB123");
        assert_eq!(id.branch_crns.len(), 1);
        assert!(report.to_string().contains("D4w:AB123"), "{report}");
    }

    #[test]
    fn a_generated_demo_database_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.sqlite");
        let spec = crate::demo::DemoPractice::new("XY9".parse().expect("crn"), "Demo");
        crate::demo::generate(&path, &spec).expect("generate");
        let report = check_database(&path);
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn a_missing_table_is_named_with_its_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db(
            dir.path(),
            "CREATE TABLE practice_info (parent_crn TEXT, practice_name TEXT, pms_version TEXT, is_demo INTEGER, is_deidentified INTEGER);
             INSERT INTO practice_info VALUES ('AB123', 'Smile Co', '9.1', 0, 0);",
        );
        let report = check_database(&path);
        assert_eq!(
            report.problems,
            vec![Problem::MissingTable("practice_branch")]
        );
        let text = report.to_string();
        assert!(
            text.contains("missing table practice_branch (crn, location)"),
            "{text}"
        );
        assert!(
            text.contains("CREATE TABLE practice_branch"),
            "the schema is shown: {text}"
        );
    }

    #[test]
    fn every_missing_column_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db(
            dir.path(),
            "CREATE TABLE practice_info (parent_crn TEXT, practice_name TEXT, is_demo INTEGER);
             CREATE TABLE practice_branch (crn TEXT);",
        );
        let report = check_database(&path);
        assert_eq!(
            report.problems,
            vec![
                Problem::MissingColumn {
                    table: "practice_info",
                    column: "pms_version"
                },
                Problem::MissingColumn {
                    table: "practice_info",
                    column: "is_deidentified"
                },
                Problem::MissingColumn {
                    table: "practice_branch",
                    column: "location"
                },
            ]
        );
    }

    #[test]
    fn an_optional_catalogue_table_is_checked_only_when_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db(
            dir.path(),
            &format!(
                "{}\nCREATE TABLE catalogue (name TEXT);\n{GOOD_ROWS}",
                IDENTITY_SCHEMA
                    .lines()
                    .filter(|l| !l.starts_with("CREATE TABLE catalogue"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        );
        let report = check_database(&path);
        assert_eq!(
            report.problems,
            vec![Problem::MissingColumn {
                table: "catalogue",
                column: "is_default"
            }]
        );
    }

    #[test]
    fn contents_the_link_refuses_are_reported_as_the_link_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db(
            dir.path(),
            &format!(
                "{IDENTITY_SCHEMA}\nINSERT INTO practice_info VALUES ('AB-123', 'Smile Co', '9.1', 0, 0);"
            ),
        );
        let report = check_database(&path);
        assert!(
            matches!(&report.problems[..], [Problem::InvalidIdentity(e)] if e.contains("parent_crn")),
            "{report}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        let path = db(empty.path(), IDENTITY_SCHEMA);
        let report = check_database(&path);
        assert!(
            matches!(&report.problems[..], [Problem::InvalidIdentity(e)] if e.contains("exactly one row")),
            "{report}"
        );
    }

    #[test]
    fn a_missing_file_and_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = check_database(&dir.path().join("nope.sqlite"));
        assert_eq!(missing.problems, vec![Problem::NotFound]);
        let text = dir.path().join("text.sqlite");
        std::fs::write(&text, "this is not a database, just some text").expect("write");
        let report = check_database(&text);
        assert!(
            matches!(&report.problems[..], [Problem::CannotOpen(_)]),
            "{report}"
        );
    }

    #[test]
    fn the_example_config_needs_its_placeholders_replaced() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("link.example.toml");
        let report = check_config(&example);
        assert!(!report.is_ok());
        let text = report.to_string();
        assert!(text.contains("placeholder"), "{text}");
    }

    #[test]
    fn a_ready_config_passes_and_a_production_link_refuses_demo_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.sqlite");
        let mut spec = crate::demo::DemoPractice::new("XY9".parse().expect("crn"), "Demo");
        spec.is_demo = true;
        crate::demo::generate(&path, &spec).expect("generate");
        let write = |env: &str| {
            let config = dir.path().join(format!("{env}.toml"));
            std::fs::write(
                &config,
                format!(
                    "cloud_url = \"ws://127.0.0.1:8080/link/ws\"\nenvironment = \"{env}\"\n\
                     token = \"lnk_abc\"\nstate_file = \"state.json\"\n\
                     [[databases]]\npath = \"demo.sqlite\"\n"
                ),
            )
            .expect("write config");
            config
        };
        let stage = check_config(&write("stage"));
        assert!(stage.is_ok(), "{stage}");
        let production = check_config(&write("production"));
        assert_eq!(
            production.databases[0].problems,
            vec![Problem::DemoOnProduction]
        );
    }

    #[test]
    fn procedures_are_checked_at_load_and_prepared_against_each_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.sqlite");
        let spec = crate::demo::DemoPractice::new("XY9".parse().expect("crn"), "Demo");
        crate::demo::generate(&path, &spec).expect("generate");
        let write = |procedures: &str| {
            let config = dir.path().join("link.toml");
            std::fs::write(
                &config,
                format!(
                    "cloud_url = \"ws://127.0.0.1:8080/link/ws\"\nenvironment = \"stage\"\n\
                     token = \"lnk_abc\"\nstate_file = \"state.json\"\n{procedures}\n\
                     [[databases]]\npath = \"demo.sqlite\"\n\
                     [[databases.procedures]]\nname = \"Local\"\n\
                     text = \"SELECT count(*) AS n FROM patients\"\n"
                ),
            )
            .expect("write config");
            check_config(&config)
        };
        let good = write(
            "[[procedures]]\nname = \"GetPatient\"\n\
             text = \"SELECT first_name FROM patients WHERE patient_id = @id\"",
        );
        assert!(good.is_ok(), "{good}");
        // A text naming a column the database lacks: named, with SQLite's words.
        let missing = write(
            "[[procedures]]\nname = \"Broken\"\ntext = \"SELECT no_such_column FROM patients\"",
        );
        let problems = &missing.databases[0].problems;
        assert!(
            matches!(&problems[..], [Problem::Procedure { name, reason }]
                if name == "Broken" && reason.contains("no_such_column")),
            "{missing}"
        );
        // A text that is not one read or write: refused with the config.
        let ddl = write("[[procedures]]\nname = \"Drop\"\ntext = \"DROP TABLE patients\"");
        assert!(!ddl.is_ok());
        assert!(ddl.to_string().contains("procedure \"Drop\""), "{ddl}");
    }
}
