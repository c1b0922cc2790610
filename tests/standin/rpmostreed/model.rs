//! The stand-in's deployment model and what each transaction does to it: a stand-in for
//! rpm-ostreed's transaction types (`rpmostreed-transaction-types.cxx`), as strict as the
//! daemon where hkd could get it wrong.

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
    /// With packages layered on it: the pulled commit, `checksum` being the local one the
    /// daemon made (reported as `base-checksum`).
    pub base: Option<String>,
    /// The pulled image's digest (`container-image-reference-digest`), for container origins.
    pub digest: Option<String>,
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
            if let Some(digest) = &self.digest {
                put(
                    "container-image-reference-digest",
                    Value::from(digest.as_str()),
                );
            }
        } else {
            put("origin", Value::from(self.origin.as_str()));
        }
        if let Some(base) = &self.base {
            put("base-checksum", Value::from(base.as_str()));
        }
        put("booted", Value::from(self.booted));
        put("staged", Value::from(self.staged));
        put("pinned", Value::from(self.pinned));
        // Like the daemon (`rpmostreed_deployment_generate_variant`): only when true.
        if self.staged && self.locked {
            put("finalization-locked", Value::from(true));
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
    /// Does its work, then finishes unsuccessfully with this message: a transaction that
    /// failed (or was cancelled) after the deployment was written.
    pub fail_after_work_next: Option<String>,
    /// Closes the transaction's connection before the work without sending Finished: the
    /// daemon gone in the middle (crashed, killed, OOM).
    pub vanish_next: bool,
}

/// The daemon's state.
#[derive(Debug, Default)]
pub struct Model {
    pub osname: String,
    /// Boot order: the first is what the next boot starts.
    pub deployments: Vec<Dep>,
    /// What can be pulled: reference (refspec or container image, in any form the daemon
    /// accepts) → (checksum, version).
    pub images: HashMap<String, (String, String)>,
    /// The commits in the history of each origin's branch: a revision outside the booted
    /// origin's is refused unless `skip-branch-check`. An origin's image is in its own history.
    pub history: HashMap<String, Vec<String>>,
    /// The systemd unit the daemon finds its callers in (it resolves the caller's pid through
    /// systemd); None, as for the tests' own processes: `register-driver` is refused.
    pub caller_unit: Option<String>,
    /// A finalize started the reboot: every new transaction is refused until the daemon
    /// restarts ([`super::StandIn::restart`]) or the machine reboots.
    pub rebooting: bool,
    /// How many times the bus started the daemon again after an idle exit.
    pub activations: u32,
    /// The next pull pauses this long after its first progress signals.
    pub pull_pause: Option<Duration>,
    /// The bus FinalizeDeployment asks logind on (set by [`super::StandIn::start`]).
    pub bus_address: String,
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
    Revision {
        checksum: String,
        skip_branch_check: bool,
    },
}

/// A reference as the daemon reports it back: ostree-rs-ext parses it into an
/// `OstreeImageReference` and prints that, so `-registry:` prefixes become `-image:` with the
/// `docker://` transport and the `registry:` transport is printed `docker://`. The stand-in's
/// own rendering of that rule, written apart from hkd's so that the tests compare two.
pub fn reported_form(reference: &str) -> String {
    if let Some(image) = reference.strip_prefix("ostree-unverified-registry:") {
        return format!("ostree-unverified-image:docker://{image}");
    }
    if let Some(rest) = reference.strip_prefix("ostree-remote-registry:") {
        if let Some((remote, image)) = rest.split_once(':') {
            return format!("ostree-remote-image:{remote}:docker://{image}");
        }
    }
    if !reference.starts_with("ostree-") {
        return reference.to_owned();
    }
    reference.replacen(":registry:", ":docker://", 1)
}

/// The local commit the daemon writes when it layers packages on `base`.
pub fn layered_commit(base: &str) -> String {
    base.chars().rev().collect()
}

/// The digest the stand-in's registry serves for the image of commit `checksum`.
pub fn digest_of(checksum: &str) -> String {
    format!("sha256:{}", &checksum.chars().rev().collect::<String>())
}

/// What a logind on the bus says of the shutdown, as FinalizeDeployment asks it first
/// (`check_sd_inhibitor_locks`): Err with the daemon's own message when a block-mode
/// shutdown inhibitor is held or logind cannot be asked.
pub(super) fn check_inhibitors(bus_address: &str) -> Result<(), String> {
    type Inhibitor = (String, String, String, String, u32, u32);
    let listed = zbus::blocking::connection::Builder::address(bus_address)
        .and_then(|b| b.build())
        .and_then(|bus| {
            bus.call_method(
                Some("org.freedesktop.login1"),
                "/org/freedesktop/login1",
                Some("org.freedesktop.login1.Manager"),
                "ListInhibitors",
                &(),
            )
        })
        .and_then(|reply| reply.body().deserialize::<Vec<Inhibitor>>());
    let inhibitors = listed.map_err(|e| format!("Checking systemd inhibitor locks: {e}"))?;
    let blocking: Vec<_> = inhibitors
        .iter()
        .filter(|(what, _, _, mode, _, _)| what.contains("shutdown") && mode == "block")
        .collect();
    let Some((_, who, why, ..)) = blocking.first() else {
        return Ok(());
    };
    let mut message = format!(
        "Reboot blocked by a systemd inhibitor lock in `block` mode\nHeld by: {who}\nReason: {why}"
    );
    if blocking.len() > 1 {
        message.push_str(&format!(
            "\nand {} other blocking inhibitor lock(s)\nUse `systemd-inhibit --list` to see details",
            blocking.len() - 1
        ));
    }
    Err(message)
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
            let wanted = reported_form(&r);
            let found = m
                .images
                .iter()
                .find(|(k, _)| reported_form(k) == wanted)
                .map(|(_, v)| v.clone());
            let Some((c, v)) = found else {
                return Err(if r.starts_with("ostree-") {
                    format!("Creating importer: reading manifest of {r}: manifest unknown")
                } else {
                    format!("Fetching checksum for ref {r}: No such branch")
                });
            };
            (wanted, c, v)
        }
        Target::Revision {
            checksum: c,
            skip_branch_check,
        } => {
            let Some((_, (_, v))) = m.images.iter().find(|(_, (sum, _))| *sum == c) else {
                return Err(format!("Fetching {c}: No such metadata object {c}.commit"));
            };
            let v = v.clone();
            // Like the upgrader's pull of a revision (`rpmostree_sysroot_upgrader_pull_base`
            // checks the commit against the origin's history unless told to skip it).
            let in_branch = m
                .history
                .get(&booted.origin)
                .is_some_and(|h| h.contains(&c))
                || m.images
                    .get(&booted.origin)
                    .is_some_and(|(sum, _)| *sum == c);
            if !skip_branch_check && !in_branch {
                return Err(format!("Checksum {c} not found in {}", booted.origin));
            }
            (booted.origin.clone(), c.clone(), v)
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
    if let Some(pause) = m.pull_pause.take() {
        // The pull "runs" this long: a test looks at the progress meanwhile (without touching
        // the model, which the transaction holds).
        std::thread::sleep(pause);
    }
    emit(conn, "TaskEnd", &("done",));
    emit(conn, "ProgressEnd", &());
    let booted_base = booted.base.clone().unwrap_or(booted.checksum.clone());
    if checksum == booted_base && origin == booted.origin {
        m.deployments.retain(|d| !d.staged);
        message(conn, "No upgrade available.");
        return Ok(());
    }
    m.deployments.retain(|d| !d.staged);
    // Packages layered on the booted deployment are layered on the new one: a local commit
    // on top of the pulled base.
    let (own, base) = match booted.base {
        Some(_) => (layered_commit(&checksum), Some(checksum.clone())),
        None => (checksum.clone(), None),
    };
    let serial = m.deployments.iter().filter(|d| d.checksum == own).count() as i32;
    let digest = origin.starts_with("ostree-").then(|| digest_of(&checksum));
    let new = Dep {
        osname: m.osname.clone(),
        checksum: own.clone(),
        serial,
        version,
        origin,
        booted: false,
        staged: true,
        pinned: false,
        locked: lock,
        base,
        digest,
    };
    // Nothing is pruned: the daemon keeps the old deployments until the staged one is
    // finalized at shutdown (`ostree_sysroot_stage_tree` writes the staged deployment only).
    m.deployments.insert(0, new);
    message(conn, &format!("Staging deployment...done ({own})"));
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
    // `finalize_deployment_transaction_execute` compares with the base commit when
    // packages are layered.
    let base = first.base.clone().unwrap_or(first.checksum.clone());
    match opts.get("option:checksum") {
        Some(Opt::Str(expected)) if *expected != base => {
            return Err(format!(
                "Expected staged base checksum {expected}, but found {base}"
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
    // `rpmostreed_reboot`: from now on the daemon refuses new transactions.
    m.rebooting = true;
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
