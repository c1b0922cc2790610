//! The stand-in's deployment model and what each transaction does to it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedValue, Value};

use super::transaction::{emit, message};

/// One deployment of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub osname: String,
    pub checksum: String,
    pub serial: i32,
    pub version: String,
    /// A refspec, or a container image reference (`ostree-…:`).
    pub origin: String,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
    pub locked: bool,
}

impl Dep {
    pub(super) fn dict(&self) -> HashMap<String, OwnedValue> {
        let mut d = HashMap::new();
        let mut put = |k: &str, v: Value<'_>| {
            d.insert(
                k.to_owned(),
                OwnedValue::try_from(v).expect("a plain value"),
            );
        };
        put(
            "id",
            Value::from(format!("{}-{}.{}", self.osname, self.checksum, self.serial)),
        );
        put("osname", Value::from(self.osname.as_str()));
        put("serial", Value::from(self.serial));
        put("checksum", Value::from(self.checksum.as_str()));
        put("version", Value::from(self.version.as_str()));
        put("timestamp", Value::from(1_700_000_000u64));
        if self.origin.starts_with("ostree-") {
            put(
                "container-image-reference",
                Value::from(self.origin.as_str()),
            );
        } else {
            put("origin", Value::from(self.origin.as_str()));
        }
        put("booted", Value::from(self.booted));
        put("staged", Value::from(self.staged));
        put("pinned", Value::from(self.pinned));
        if self.staged {
            put("finalization-locked", Value::from(self.locked));
        }
        d
    }
}

/// An option or modifier value as the stand-in recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    Other(String),
}

impl From<&OwnedValue> for Opt {
    fn from(v: &OwnedValue) -> Opt {
        if let Ok(b) = bool::try_from(v) {
            Opt::Bool(b)
        } else if let Ok(s) = <&str>::try_from(v) {
            Opt::Str(s.to_owned())
        } else if let Ok(a) = Vec::<String>::try_from(v.try_clone().expect("a plain value")) {
            Opt::Strs(a)
        } else {
            Opt::Other(format!("{:?}", **v))
        }
    }
}

/// One method call on the OS object, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub args: BTreeMap<String, Opt>,
}

/// What the next transaction does instead of its work.
#[derive(Debug, Default, Clone)]
pub struct Hooks {
    /// Finishes unsuccessfully with this message.
    pub fail_next: Option<String>,
    /// Finishes as cancelled (as if `rpm-ostree cancel` ran).
    pub cancel_next: bool,
    /// Runs this long (cancellable through `Cancel`) before its work.
    pub slow_next: Option<Duration>,
    /// The method call fails as busy although ActiveTransaction is empty (a race lost).
    pub busy_error_next: bool,
    /// The next this-many method calls get no answer: the bus's NoReply, what a caller sees
    /// when the daemon exits (idle) with its call unread.
    pub no_reply_next: u32,
}

/// The daemon's state.
#[derive(Debug, Default)]
pub struct Model {
    pub osname: String,
    /// Boot order: the first is what the next boot starts.
    pub deployments: Vec<Dep>,
    /// What can be pulled: reference (refspec or container image) → (checksum, version).
    pub images: HashMap<String, (String, String)>,
    pub calls: Vec<Call>,
    /// `id`s given to RegisterClient, in order.
    pub clients: Vec<String>,
    pub update_driver: Option<String>,
    /// FinalizeDeployment's `systemctl reboot`, counted.
    pub reboots: u32,
    /// (method, sender, object path, address) of the running transaction.
    pub active: Option<(String, String, String, String)>,
    pub hooks: Hooks,
}

impl Model {
    pub(super) fn os_path(&self) -> String {
        format!("/org/projectatomic/rpmostree1/{}", self.osname)
    }
}

pub(super) enum Target {
    Refspec(String),
    Revision(String),
}

pub(super) fn stage(
    m: &mut Model,
    conn: &Connection,
    target: Target,
    lock: bool,
) -> Result<(), String> {
    let booted = m
        .deployments
        .iter()
        .find(|d| d.booted)
        .cloned()
        .ok_or("No booted deployment")?;
    let (origin, checksum, version) = match target {
        Target::Refspec(r) => {
            let Some((c, v)) = m.images.get(&r).cloned() else {
                return Err(if r.starts_with("ostree-") {
                    format!("Creating importer: reading manifest of {r}: manifest unknown")
                } else {
                    format!("Fetching checksum for ref {r}: No such branch")
                });
            };
            (r, c, v)
        }
        Target::Revision(c) => {
            let Some((_, (_, v))) = m.images.iter().find(|(_, (sum, _))| *sum == c) else {
                return Err(format!("Fetching {c}: No such metadata object {c}.commit"));
            };
            (booted.origin.clone(), c.clone(), v.clone())
        }
    };
    emit(conn, "TaskBegin", &("Fetching ostree commit",));
    emit(conn, "PercentProgress", &("Receiving objects", 50u32));
    emit(
        conn,
        "DownloadProgress",
        &(
            (1_700_000_000u64, 2u64),
            (0u32, 0u32),
            (10u32, 10u32, 0u32),
            (0u32, 0u32, 0u32, 0u64),
            (90u32, 180u32),
            (4_096_000u64, 2_048_000u64),
        ),
    );
    emit(conn, "TaskEnd", &("done",));
    emit(conn, "ProgressEnd", &());
    m.deployments.retain(|d| !d.staged);
    if checksum == booted.checksum && origin == booted.origin {
        message(conn, "No upgrade available.");
        return Ok(());
    }
    let serial = m
        .deployments
        .iter()
        .filter(|d| d.checksum == checksum)
        .count() as i32;
    let new = Dep {
        osname: m.osname.clone(),
        checksum: checksum.clone(),
        serial,
        version,
        origin,
        booted: false,
        staged: true,
        pinned: false,
        locked: lock,
    };
    m.deployments.insert(0, new);
    // Like the daemon: keep the new one, the booted one, one rollback and the pinned ones.
    let mut kept_rollback = false;
    m.deployments.retain(|d| {
        let rollback = !d.staged && !d.booted && !kept_rollback;
        kept_rollback |= rollback;
        d.staged || d.booted || d.pinned || rollback
    });
    message(conn, &format!("Staging deployment...done ({checksum})"));
    Ok(())
}

pub(super) fn finalize(
    m: &mut Model,
    conn: &Connection,
    opts: &BTreeMap<String, Opt>,
) -> Result<(), String> {
    let Some(first) = m.deployments.first_mut() else {
        return Err("No deployments found".into());
    };
    if !first.staged {
        return Err("No pending staged deployment found".into());
    }
    match opts.get("option:checksum") {
        Some(Opt::Str(expected)) if *expected != first.checksum => {
            return Err(format!(
                "Expected staged base checksum {expected}, but found {}",
                first.checksum
            ))
        }
        Some(_) => {}
        None if opts.get("option:allow-missing-checksum") == Some(&Opt::Bool(true)) => {}
        None => return Err("Missing expected checksum".into()),
    }
    if !first.locked && opts.get("option:allow-unlocked") != Some(&Opt::Bool(true)) {
        return Err("Staged deployment already unlocked".into());
    }
    first.locked = false;
    let checksum = first.checksum.clone();
    m.reboots += 1;
    message(
        conn,
        &format!("Finalized deployment; rebooting into {checksum}"),
    );
    Ok(())
}

pub(super) fn rollback(m: &mut Model, conn: &Connection) -> Result<(), String> {
    let booted = m
        .deployments
        .iter()
        .position(|d| d.booted)
        .ok_or("No booted deployment")?;
    let to = if booted == 0 {
        m.deployments
            .iter()
            .position(|d| !d.booted && !d.staged)
            .ok_or("No rollback deployment found")?
    } else {
        booted // rolling back a rollback: the booted one becomes default again
    };
    let d = m.deployments.remove(to);
    message(
        conn,
        &format!(
            "Moving '{}.{}' to be first deployment",
            d.checksum, d.serial
        ),
    );
    m.deployments.insert(0, d);
    Ok(())
}

pub(super) fn cleanup(m: &mut Model, conn: &Connection, elements: &[String]) -> Result<(), String> {
    for e in elements {
        match e.as_str() {
            "pending-deploy" => {
                if m.deployments.first().is_some_and(|d| !d.booted) {
                    let d = m.deployments.remove(0);
                    message(conn, &format!("Deleted pending deployment {}", d.checksum));
                }
            }
            "rollback-deploy" => {
                let booted = m.deployments.iter().position(|d| d.booted).unwrap_or(0);
                if let Some(i) =
                    (booted + 1..m.deployments.len()).find(|&i| !m.deployments[i].pinned)
                {
                    m.deployments.remove(i);
                }
            }
            _ => message(conn, "Deleted temporary files"),
        }
    }
    Ok(())
}
