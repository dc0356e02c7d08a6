//! Named procedures: the Link's honest equivalent of D4W's stored procedures.
//!
//! SQLite has no stored procedures. A Link instead offers named, parameterised
//! commands written in its config, globally (`[[procedures]]`, offered on every
//! database) or for one database (`[[databases.procedures]]`, which wins over a
//! global one of the same name):
//!
//! ```toml
//! [[procedures]]
//! name = "GetPatient"
//! text = "SELECT patient_id, first_name FROM patients WHERE patient_id = @id"
//! ```
//!
//! An integrator runs one with `command.type: storedProcedure` and `command.text`
//! the name; the Cloud authorises it as a *procedure* component (the integrator's
//! `procedures` grant) and sends the Link only the name. The Link looks the name up
//! here (names compare as grants do: ASCII case folded, `dbo.`/`main.` and quotes
//! dropped), runs the text it holds, binds parameters as for a text command, and
//! refuses a name it does not know ("no such procedure", like SQLite's "no such
//! table").
//!
//! What a procedure may do is fixed when the config is loaded: exactly one `SELECT`
//! or write statement (no DDL, `PRAGMA`, `ATTACH`, transaction control or calls of
//! functions outside [`crate::ALLOWED_FUNCTIONS`]), analysed with the Cloud's own
//! analyser. The procedure grant covers the tables its text reads or writes (as
//! `EXECUTE` on a SQL Server procedure does), so SQLite's authorizer allows exactly
//! those tables for the job; writes still need `nonQuery` and write permission (the
//! connection is read-only otherwise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use halo_policy::{StatementKind, extract_components, normalise_procedure};

use crate::LinkError;

/// One procedure as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcedureConfig {
    /// The name integrators call it by (`command.text`).
    pub name: String,
    /// The SQL it runs: one statement, with named (`@x`, `:x`) or numbered (`?1`)
    /// parameters.
    pub text: String,
    /// The database it is defined for (`[[databases.procedures]]`), or `None` for
    /// every database (`[[procedures]]`).
    pub database: Option<PathBuf>,
}

/// A procedure checked and ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procedure {
    /// The name as written in the config.
    pub name: String,
    /// The SQL it runs.
    pub text: String,
    /// The tables its text reads or writes, normalised as the allowlist's.
    pub tables: Vec<String>,
    /// Whether its text writes.
    pub writes: bool,
}

/// The procedures one database offers, by normalised name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procedures {
    by_name: HashMap<String, Arc<Procedure>>,
}

impl Procedures {
    /// The procedure called `name` (normalised as grants are), if any.
    pub fn get(&self, name: &str) -> Option<&Arc<Procedure>> {
        let key = normalise_procedure(name).ok()?;
        self.by_name.get(&key)
    }

    /// Every procedure, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Procedure>)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The procedures `database` offers: the global ones, then its own, which
    /// replace a global one of the same name.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] naming the procedure and the rule broken: a name
    /// that is not a procedure name, a name given twice in one scope, or a text
    /// that is not exactly one read or write statement.
    pub fn for_database(all: &[ProcedureConfig], database: &Path) -> Result<Self, LinkError> {
        let mut out = Self::default();
        for scope in [None, Some(database)] {
            let mut seen = std::collections::HashSet::new();
            for p in all.iter().filter(|p| p.database.as_deref() == scope) {
                let key = normalise_procedure(&p.name).map_err(|_| {
                    LinkError::Config(format!(
                        "procedures: {:?} is not a procedure name (one- or two-part SQL name)",
                        excerpt(&p.name)
                    ))
                })?;
                if !seen.insert(key.clone()) {
                    return Err(LinkError::Config(format!(
                        "procedures: {:?} is defined twice{}",
                        excerpt(&p.name),
                        scope.map_or(String::new(), |d| format!(" for {}", d.display()))
                    )));
                }
                out.by_name.insert(key, Arc::new(compile(p)?));
            }
        }
        Ok(out)
    }
}

/// Checks a procedure's text with the Cloud's analyser.
fn compile(p: &ProcedureConfig) -> Result<Procedure, LinkError> {
    let bad = |why: String| LinkError::Config(format!("procedure {:?}: {why}", excerpt(&p.name)));
    let c = extract_components(&p.text).map_err(|e| bad(format!("text refused: {e}")))?;
    if c.statement_count() != 1 {
        return Err(bad("text must hold exactly one statement".into()));
    }
    if c.has(StatementKind::Ddl) || c.has(StatementKind::Other) || c.has(StatementKind::Call) {
        return Err(bad(
            "text may only read or write tables (no schema changes, pragmas, attach, \
             transactions or procedure calls)"
                .into(),
        ));
    }
    if let Some(f) = c.procedures().next() {
        return Err(bad(format!(
            "text calls {f}, which the Link does not run (only its allowed functions)"
        )));
    }
    if c.catalogues().next().is_some() {
        return Err(bad("text names another catalogue (three-part name)".into()));
    }
    Ok(Procedure {
        name: p.name.clone(),
        text: p.text.clone(),
        tables: c.tables().map(str::to_owned).collect(),
        writes: c.writes(),
    })
}

/// At most 40 characters of a name, escaped.
fn excerpt(s: &str) -> String {
    s.chars().take(40).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn global(name: &str, text: &str) -> ProcedureConfig {
        ProcedureConfig {
            name: name.into(),
            text: text.into(),
            database: None,
        }
    }

    #[test]
    fn a_database_offers_the_global_procedures_and_its_own_first() {
        let db = PathBuf::from("/data/a.sqlite");
        let all = vec![
            global(
                "GetPatient",
                "SELECT * FROM patients WHERE patient_id = @id",
            ),
            global("Count", "SELECT count(*) AS n FROM patients"),
            ProcedureConfig {
                name: "[dbo].[count]".into(),
                text: "SELECT count(*) AS n FROM appointments".into(),
                database: Some(db.clone()),
            },
        ];
        let here = Procedures::for_database(&all, &db).unwrap();
        assert_eq!(here.len(), 2);
        assert_eq!(here.get("COUNT").unwrap().tables, ["appointments"]);
        assert_eq!(here.get("dbo.getpatient").unwrap().tables, ["patients"]);
        assert!(here.get("Nope").is_none());
        let elsewhere = Procedures::for_database(&all, Path::new("/data/b.sqlite")).unwrap();
        assert_eq!(elsewhere.get("count").unwrap().tables, ["patients"]);
        let writer = Procedures::for_database(
            &[global(
                "Touch",
                "UPDATE patients SET suburb = suburb WHERE patient_id = ?1",
            )],
            &db,
        )
        .unwrap();
        assert!(writer.get("touch").unwrap().writes);
    }

    #[test]
    fn bad_procedures_are_refused_at_load_by_name() {
        let db = Path::new("/data/a.sqlite");
        for (p, why) in [
            (global("a.b.c", "SELECT 1"), "not a procedure name"),
            (global("x", "SELECT 1; SELECT 2"), "exactly one statement"),
            (global("x", "DROP TABLE patients"), "only read or write"),
            (global("x", "PRAGMA user_version"), "only read or write"),
            (global("x", "SELECT my_udf(1)"), "does not run"),
            (global("x", "SELEC 1"), "text refused"),
            (global("x", "SELECT * FROM other.dbo.patients"), "catalogue"),
        ] {
            let e = Procedures::for_database(&[p], db).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let twice = [global("X", "SELECT 1"), global("[x]", "SELECT 2")];
        let e = Procedures::for_database(&twice, db)
            .unwrap_err()
            .to_string();
        assert!(e.contains("defined twice"), "{e}");
    }
}
