//! A database's identity, read from the database itself as the PMS keeps it.
//!
//! The D4W-like schema (see [`crate::demo`]) keeps it in three tables:
//!
//! - `practice_info`: exactly one row with `parent_crn`, `practice_name`,
//!   `pms_version`, `is_demo`, `is_deidentified`;
//! - `practice_branch`: `crn`, `location`, one row per branch (may be empty);
//! - `catalogue`: `name`, `is_default` (optional; without it the database has one
//!   default catalogue named `main`).

use std::path::Path;

use halo_ids::Crn;
use halo_protocol::{BranchCrn, CatalogueInfo};
use rusqlite::{Connection, OpenFlags};

use crate::LinkError;

/// What a database says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseIdentity {
    /// The real parent CRN (not unique for demo copies).
    pub parent_crn: Crn,
    /// Branch CRNs with their locations.
    pub branch_crns: Vec<BranchCrn>,
    /// Practice name.
    pub practice_name: String,
    /// PMS software version.
    pub pms_version: String,
    /// Catalogues; exactly one is the default.
    pub catalogues: Vec<CatalogueInfo>,
    /// A demo copy.
    pub is_demo: bool,
    /// A de-identified copy.
    pub is_deidentified: bool,
}

impl DatabaseIdentity {
    /// Demo or de-identified: such a database gets a fake CRN and only in Stage.
    pub fn is_demo_or_deidentified(&self) -> bool {
        self.is_demo || self.is_deidentified
    }

    /// The catalogue used when a job names none.
    pub fn default_catalogue(&self) -> Option<&CatalogueInfo> {
        self.catalogues.iter().find(|c| c.is_default)
    }

    /// Reads the identity of the database at `path`, opened read-only.
    ///
    /// # Errors
    ///
    /// [`LinkError::Database`] if the file cannot be opened, a table is missing,
    /// `practice_info` does not have exactly one row, or a CRN is invalid.
    pub fn read(path: &Path) -> Result<Self, LinkError> {
        let err = |reason: String| LinkError::Database {
            path: path.to_path_buf(),
            reason,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(format!("cannot open read-only: {e}")))?;
        Self::read_from(&conn).map_err(err)
    }

    fn read_from(conn: &Connection) -> Result<Self, String> {
        let sql_err = |what: &str, e: rusqlite::Error| format!("cannot read {what}: {e}");
        let mut stmt = conn
            .prepare(
                "SELECT parent_crn, practice_name, pms_version, is_demo, is_deidentified \
                 FROM practice_info LIMIT 2",
            )
            .map_err(|e| sql_err("practice_info", e))?;
        let rows: Vec<(String, String, String, bool, bool)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_err("practice_info", e))?;
        let [(crn, practice_name, pms_version, is_demo, is_deidentified)] =
            <[_; 1]>::try_from(rows).map_err(|rows| {
                format!(
                    "practice_info must hold exactly one row, found {}",
                    if rows.is_empty() { "none" } else { "several" }
                )
            })?;
        let parent_crn: Crn = crn
            .parse()
            .map_err(|e| format!("practice_info.parent_crn: {e}"))?;
        if practice_name.trim().is_empty() {
            return Err("practice_info.practice_name is empty".into());
        }

        let mut stmt = conn
            .prepare("SELECT crn, location FROM practice_branch ORDER BY crn")
            .map_err(|e| sql_err("practice_branch", e))?;
        let raw: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_err("practice_branch", e))?;
        let mut branches = Vec::with_capacity(raw.len());
        for (crn, location) in raw {
            let crn: Crn = crn
                .parse()
                .map_err(|e| format!("practice_branch.crn: {e}"))?;
            if crn == parent_crn {
                return Err("practice_branch lists the parent crn as a branch".into());
            }
            branches.push(BranchCrn { crn, location });
        }

        let has_catalogue: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'catalogue')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_err("schema", e))?;
        let catalogues = if has_catalogue {
            let mut stmt = conn
                .prepare("SELECT name, is_default FROM catalogue ORDER BY name")
                .map_err(|e| sql_err("catalogue", e))?;
            let cats: Vec<CatalogueInfo> = stmt
                .query_map([], |r| {
                    Ok(CatalogueInfo {
                        name: r.get(0)?,
                        is_default: r.get(1)?,
                    })
                })
                .and_then(|rows| rows.collect())
                .map_err(|e| sql_err("catalogue", e))?;
            if cats.iter().filter(|c| c.is_default).count() != 1 {
                return Err("catalogue must mark exactly one default".into());
            }
            cats
        } else {
            vec![CatalogueInfo {
                name: "main".into(),
                is_default: true,
            }]
        };

        Ok(Self {
            parent_crn,
            branch_crns: branches,
            practice_name,
            pms_version,
            catalogues,
            is_demo,
            is_deidentified,
        })
    }
}
