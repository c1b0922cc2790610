//! The agent's journal: the state machine's state on disk, written before every action.
//!
//! Guarantees: a reader sees either the previous or the new state, never a mix (write to a
//! temporary file in the same directory, fsync it, rename it over, fsync the directory); the
//! directory is 0700 (the state names images and nodes, nothing for other users).
//! A file that cannot be read — corrupt, or written by a newer hkd — is an error and is left
//! in place for the admin: hkd does not guess, and nothing is lost.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::Machine;

/// The format written. A reader refuses other versions rather than misreading them.
pub const API_VERSION: &str = "hkd.housekeeper.io/v1";
const KIND: &str = "NodeJournal";
const FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a readable hkd journal ({message}); move it aside to start from idle", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{}: written by another hkd version ({found}; this hkd reads {API_VERSION}); upgrade hkd or move the file aside", path.display())]
    OtherVersion { path: PathBuf, found: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: String,
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    machine: Machine,
}

/// The journal in one directory (normally /var/lib/hkd).
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating, 0700) the journal directory.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let io_err = |source| JournalError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        Ok(Journal {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The last state written, or None when there is none yet.
    pub fn load(&self) -> Result<Option<Machine>, JournalError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        let corrupt = |e: serde_json::Error| JournalError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        let header: Header = serde_json::from_str(&text).map_err(corrupt)?;
        if header.api_version != API_VERSION || header.kind != KIND {
            return Err(JournalError::OtherVersion {
                path,
                found: format!("{} {}", header.api_version, header.kind),
            });
        }
        let doc: Document = serde_json::from_str(&text).map_err(corrupt)?;
        Ok(Some(doc.machine))
    }

    /// Writes `machine` durably: when this returns, a power loss keeps it.
    pub fn save(&self, machine: &Machine) -> Result<(), JournalError> {
        let path = self.path();
        let doc = Document {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            machine: machine.clone(),
        };
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.")
            .tempfile_in(&self.dir)
            .map_err(io_err)?;
        let mut bytes = serde_json::to_vec_pretty(&doc).expect("journal document serializes");
        bytes.push(b'\n');
        tmp.write_all(&bytes).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| JournalError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_ref::ImageRef;

    /// A well-formed reference, as the journal would load it.
    fn img(raw: &str) -> ImageRef {
        ImageRef::parse_any(raw).unwrap()
    }
    use crate::node::machine::State;

    fn machine() -> Machine {
        let mut m = Machine::new("boot-1");
        m.state = State::Staging {
            target: img("ostree-remote-registry:nestos:r/i:v2"),
        };
        m
    }

    #[test]
    fn saves_and_loads_in_a_private_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("var/lib/hkd");
        let journal = Journal::open(&dir).unwrap();
        assert_eq!(journal.load().unwrap(), None);
        journal.save(&machine()).unwrap();
        assert_eq!(journal.load().unwrap(), Some(machine()));
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Only the state file remains: no temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_loose_directory_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("hkd");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Journal::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_leftover_temporary_file_from_a_crash_is_harmless() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path()).unwrap();
        journal.save(&machine()).unwrap();
        fs::write(
            root.path().join(".state.XXXX"),
            "{\"apiVersion\": \"hkd.hous",
        )
        .unwrap();
        assert_eq!(journal.load().unwrap(), Some(machine()));
    }

    #[test]
    fn a_corrupt_journal_is_an_error_and_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path()).unwrap();
        fs::write(
            journal.path(),
            "{\"apiVersion\": \"hkd.housekeeper.io/v1\", \"kind\": \"NodeJ",
        )
        .unwrap();
        let err = journal.load().unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string()
                .ends_with("move it aside to start from idle"),
            "{err}"
        );
        assert!(journal.path().exists());
    }

    /// A journal as hkd wrote it when targets were plain strings: it loads (an unverified
    /// image accepted then loads whatever the policy now) and is written back unchanged.
    #[test]
    fn a_journal_of_the_string_form_loads_and_reads_the_same() {
        let written = r#"{
  "apiVersion": "hkd.housekeeper.io/v1",
  "kind": "NodeJournal",
  "machine": {
    "state": {
      "phase": "rollingBack",
      "target": "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:2",
      "checksum": "2222222222222222222222222222222222222222222222222222222222222222",
      "reason": "health check failed: kubelet",
      "fromBoot": "boot-1"
    },
    "bootId": "boot-1",
    "failedTarget": "testos:testos/x86_64/v1"
  }
}
"#;
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path()).unwrap();
        fs::write(journal.path(), written).unwrap();
        let machine = journal.load().unwrap().unwrap();
        let target = machine.state.target().unwrap();
        assert_eq!(
            target.raw,
            "ostree-unverified-registry:hub.oepkgs.net/nestos/nestos:2"
        );
        assert_eq!(
            target.verification,
            crate::image_ref::Verification::Unverified
        );
        assert_eq!(machine.failed_target, Some(img("testos:testos/x86_64/v1")));
        journal.save(&machine).unwrap();
        assert_eq!(fs::read_to_string(journal.path()).unwrap(), written);
    }

    #[test]
    fn a_journal_whose_image_does_not_parse_is_refused_in_one_line() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path()).unwrap();
        fs::write(
            journal.path(),
            r#"{"apiVersion": "hkd.housekeeper.io/v1", "kind": "NodeJournal",
                "machine": {"state": {"phase": "staging", "target": "docker://x"},
                            "bootId": "b", "failedTarget": null}}"#,
        )
        .unwrap();
        let err = journal.load().unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("image reference \"docker://x\" is malformed"),
            "{err}"
        );
        assert!(err.ends_with("move it aside to start from idle"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(journal.path().exists());
    }

    #[test]
    fn a_journal_from_a_newer_version_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path()).unwrap();
        fs::write(
            journal.path(),
            r#"{"apiVersion": "hkd.housekeeper.io/v2", "kind": "NodeJournal", "machine": {"new": 1}}"#,
        )
        .unwrap();
        let err = journal.load().unwrap_err().to_string();
        assert!(
            err.contains("written by another hkd version (hkd.housekeeper.io/v2 NodeJournal"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_journal_directory_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        assert!(matches!(Journal::open(&file), Err(JournalError::Io { .. })));
    }
}
