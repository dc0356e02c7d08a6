//! The local state file: the Link GUID and each database's Halo GUID.
//!
//! Deleting the file is a reinstall: the next start generates a new Link GUID and
//! new Halo GUIDs (UUID v4). The file is written atomically (temporary file, fsync,
//! rename), so a crash leaves either the old or the new state. It also keeps the
//! highest authority epoch seen per database, so a restart does not forget fencing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use halo_ids::{Epoch, HaloGuid, LinkGuid};
use serde::{Deserialize, Serialize};

use crate::LinkError;

const STATE_VERSION: u32 = 1;

/// The persisted identity of this Link install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkState {
    /// Format version of the file.
    pub version: u32,
    /// This install's Link GUID.
    pub link_guid: LinkGuid,
    /// Databases seen by this install, keyed by canonical path.
    pub databases: BTreeMap<String, DatabaseState>,
}

/// What the Link remembers about one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseState {
    /// The Halo GUID this install gave the database.
    pub halo_guid: HaloGuid,
    /// The highest authority epoch seen in a job for it (a plain number in the file).
    #[serde(default)]
    pub highest_epoch: Epoch,
}

/// A random, non-nil UUID v4 as a Link or Halo GUID.
fn new_uuid() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// A fresh Halo GUID.
pub(crate) fn new_halo_guid() -> HaloGuid {
    HaloGuid::from_uuid(new_uuid()).expect("a v4 uuid has version bits set, so it is never nil")
}

impl LinkState {
    /// A fresh install: a new Link GUID and no databases.
    pub fn fresh() -> Self {
        Self {
            version: STATE_VERSION,
            link_guid: LinkGuid::from_uuid(new_uuid())
                .expect("a v4 uuid has version bits set, so it is never nil"),
            databases: BTreeMap::new(),
        }
    }

    /// Loads the state file, or returns a fresh state if it does not exist.
    ///
    /// # Errors
    ///
    /// [`LinkError::State`] if the file exists but cannot be read or parsed, or has
    /// an unknown version (a broken file is not silently replaced: that would
    /// re-identify every database).
    pub fn load_or_fresh(path: &Path) -> Result<Self, LinkError> {
        let err = |reason: String| LinkError::State {
            path: path.to_path_buf(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::fresh()),
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        let state: Self = serde_json::from_str(&text).map_err(|e| err(format!("invalid: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(err(format!("unsupported version {}", state.version)));
        }
        Ok(state)
    }

    /// The Halo GUID of the database at `key`, created (and remembered) if new.
    pub fn halo_guid_for(&mut self, key: &str) -> HaloGuid {
        self.databases
            .entry(key.to_owned())
            .or_insert_with(|| DatabaseState {
                halo_guid: new_halo_guid(),
                highest_epoch: Epoch::ZERO,
            })
            .halo_guid
    }

    /// Writes the state atomically: temporary file in the same directory, fsync,
    /// rename over the old file.
    ///
    /// # Errors
    ///
    /// [`LinkError::State`] if any step fails.
    pub fn save(&self, path: &Path) -> Result<(), LinkError> {
        let err = |reason: String| LinkError::State {
            path: path.to_path_buf(),
            reason,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        let tmp = temp_path(path);
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| err(format!("cannot create temp: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| err(format!("cannot write temp: {e}")))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename temp: {e}")))?;
        Ok(())
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}
