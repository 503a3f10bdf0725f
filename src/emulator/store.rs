//! The emulator's data: users' attributes and the app's attribute names, in memory with an
//! optional sled copy on disk.
//!
//! Reads are always served from memory. With a data directory, every change is also written to
//! sled in one batch and flushed before the call is answered, so an answered call survives a
//! crash of the process — as it would on the real server.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A user's attributes: name → value.
pub type AttrMap = BTreeMap<String, String>;

/// One registered attribute: its name and account type (0 = UserID, 1 = RegistrationID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrSlot {
    /// The attribute's name.
    pub name: String,
    /// The account type the attribute applies to.
    pub account_type: u8,
}

/// What the store holds.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// Account → attributes; a user without attributes has no entry.
    pub users: BTreeMap<String, AttrMap>,
    /// Slot (0..=9) → registered attribute.
    pub attr_names: BTreeMap<u8, AttrSlot>,
}

impl Data {
    /// Whether `name` is a registered attribute name.
    pub fn is_registered(&self, name: &str) -> bool {
        self.attr_names.values().any(|slot| slot.name == name)
    }
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed to open, read or write.
    #[error("the emulator's data directory {dir} failed: {source}; is another emulator using it?")]
    Sled {
        /// The data directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored record is not what this version writes.
    #[error("the emulator's data directory {dir} holds a record that cannot be read ({reason}); move the directory aside")]
    Corrupt {
        /// The data directory.
        dir: PathBuf,
        /// What could not be read.
        reason: String,
    },
}

/// The emulator's data, shared by all connections.
#[derive(Debug)]
pub struct EmulatorStore {
    data: Mutex<Data>,
    disk: Option<Disk>,
}

#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    db: sled::Db,
    users: sled::Tree,
    attr_names: sled::Tree,
}

/// A change to write: users to replace (an empty map deletes) and slots to replace.
#[derive(Debug, Default)]
pub struct DataChange {
    /// Account → its complete new attributes.
    pub users: BTreeMap<String, AttrMap>,
    /// Slot → its new registration.
    pub attr_names: BTreeMap<u8, AttrSlot>,
}

impl EmulatorStore {
    /// A store that forgets everything when the emulator stops.
    pub fn in_memory() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            disk: None,
        }
    }

    /// A store persisted in sled under `dir`, loading what an earlier run left there.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let sled_error = |source| StoreError::Sled {
            dir: dir.to_owned(),
            source,
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            dir: dir.to_owned(),
            reason,
        };
        let db = sled::open(dir).map_err(sled_error)?;
        let users = db.open_tree("users").map_err(sled_error)?;
        let attr_names = db.open_tree("attr_names").map_err(sled_error)?;
        let mut data = Data::default();
        for entry in users.iter() {
            let (key, value) = entry.map_err(sled_error)?;
            let account = String::from_utf8(key.to_vec())
                .map_err(|_| corrupt("an account is not UTF-8".into()))?;
            let attrs: AttrMap = serde_json::from_slice(&value)
                .map_err(|err| corrupt(format!("attributes of {account:?}: {err}")))?;
            data.users.insert(account, attrs);
        }
        for entry in attr_names.iter() {
            let (key, value) = entry.map_err(sled_error)?;
            let [slot] = key.as_ref() else {
                return Err(corrupt("an attribute slot key is not one byte".into()));
            };
            let registration: AttrSlot = serde_json::from_slice(&value)
                .map_err(|err| corrupt(format!("attribute slot {slot}: {err}")))?;
            data.attr_names.insert(*slot, registration);
        }
        Ok(Self {
            data: Mutex::new(data),
            disk: Some(Disk {
                dir: dir.to_owned(),
                db,
                users,
                attr_names,
            }),
        })
    }

    /// Locks the data for reading or for computing a change.
    pub fn lock(&self) -> MutexGuard<'_, Data> {
        // Every mutation is applied whole under the lock, so a poisoned lock holds valid data.
        crate::sync::lock(&self.data)
    }

    /// Applies `change` to the locked data and, with a data directory, to sled in one batch.
    ///
    /// Call [`EmulatorStore::flush`] after releasing the lock and before answering the request.
    pub fn apply(&self, data: &mut Data, change: DataChange) -> Result<(), StoreError> {
        if let Some(disk) = &self.disk {
            let sled_error = |source| StoreError::Sled {
                dir: disk.dir.clone(),
                source,
            };
            let mut users = sled::Batch::default();
            for (account, attrs) in &change.users {
                if attrs.is_empty() {
                    users.remove(account.as_bytes());
                } else {
                    let value = serde_json::to_vec(attrs).expect("a string map serialises");
                    users.insert(account.as_bytes(), value);
                }
            }
            let mut attr_names = sled::Batch::default();
            for (slot, registration) in &change.attr_names {
                let value = serde_json::to_vec(registration).expect("a slot serialises");
                attr_names.insert(&[*slot][..], value);
            }
            disk.users.apply_batch(users).map_err(sled_error)?;
            disk.attr_names
                .apply_batch(attr_names)
                .map_err(sled_error)?;
        }
        for (account, attrs) in change.users {
            if attrs.is_empty() {
                data.users.remove(&account);
            } else {
                data.users.insert(account, attrs);
            }
        }
        data.attr_names.extend(change.attr_names);
        Ok(())
    }

    /// Makes every applied change durable (a no-op in memory).
    pub async fn flush(&self) -> Result<(), StoreError> {
        if let Some(disk) = &self.disk {
            disk.db
                .flush_async()
                .await
                .map_err(|source| StoreError::Sled {
                    dir: disk.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}
