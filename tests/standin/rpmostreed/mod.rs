//! A stand-in for rpm-ostreed (rpm-ostree cannot be installed here): a D-Bus service that
//! implements the subset of `org.projectatomic.rpmostree1` hkd uses, with the real names,
//! signatures and property types, over an in-memory deployment model.
//!
//! What it reproduces: the bus name; `Sysroot` at its fixed path (Booted, Path,
//! ActiveTransaction `(sss)`, ActiveTransactionPath, Deployments `aa{sv}`, RegisterClient,
//! UnregisterClient, Reload, GetOS); the OS object under the OS name (UpdateDeployment, Deploy,
//! Rebase, Rollback, Cleanup, FinalizeDeployment, each returning a transaction address);
//! transactions on a peer-to-peer socket (Start → TaskBegin/PercentProgress/DownloadProgress/
//! Message/TaskEnd/ProgressEnd → Finished, Cancel), ActiveTransaction set while one runs;
//! GDBus's error names and the daemon's messages.
//!
//! Where hkd could get it wrong, it refuses what rpm-ostreed v2023.7 refuses: `register-driver`
//! from a caller outside a systemd unit; FinalizeDeployment while logind lists a block-mode
//! shutdown inhibitor, or with no logind on the bus (`check_sd_inhibitor_locks`), or with a
//! checksum other than the staged deployment's base commit; any transaction after a finalize
//! until the daemon restarts (`rpmostreed_sysroot_prep_for_txn`); a revision outside the
//! booted origin's branch without `skip-branch-check`; a busy daemon as G_IO_ERROR_BUSY
//! (`Code26`). It reports what the daemon reports: container references in their canonical
//! form with the image digest, a layered deployment's pulled commit as `base-checksum`,
//! `finalization-locked` only when true, and old deployments kept until a reboot.
//!
//! What it does not: pull anything (images are a table of reference → commit), reboot
//! (FinalizeDeployment counts reboots; [`StandIn::reboot`] plays one; [`StandIn::restart`]
//! plays a restart of the daemon, what the systemd stand-in's RestartUnit does), polkit.
//! PropertiesChanged is sent for Deployments and ActiveTransaction when a transaction ends
//! (not when one starts). Idle exit is played on demand ([`StandIn::exit_idle`]); the bus
//! then starts the stand-in again through real bus activation (on [`PrivateBus::activating`]);
//! a call racing the exit is played by a NoReply hook.
//!
//! Hooks make the next transaction fail (before or after its work), be cancelled, vanish, run
//! slowly (so that `Cancel` can reach it), or keep the daemon busy with someone else's.

mod model;
mod transaction;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use zbus::blocking::Connection;
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::bus::PrivateBus;
use model::{check_inhibitors, cleanup, finalize, rollback, stage, Target};
#[allow(unused_imports)] // each test binary uses its own part
pub use model::{digest_of, layered_commit, reported_form, Call, Dep, Model, Opt};
use transaction::{serve_transaction, Job};

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";

pub(super) struct Shared {
    model: Mutex<Model>,
    /// The instance's bus connection, for PropertiesChanged.
    bus: Mutex<Option<Connection>>,
    sockets: tempfile::TempDir,
    next: AtomicU32,
}

impl Shared {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends PropertiesChanged for what a finished transaction changed (Deployments,
    /// ActiveTransaction), as the daemon does when it reloads the sysroot. Called with the
    /// model unlocked: the signal carries the new values.
    pub(super) fn announce(&self) {
        let bus = self.bus.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(bus) = bus else { return };
        let Ok(iface) = bus.object_server().interface::<_, Sysroot>(SYSROOT_PATH) else {
            return;
        };
        let emitter = iface.signal_emitter();
        let sysroot = iface.get();
        let _ = zbus::block_on(sysroot.deployments_changed(emitter));
        let _ = zbus::block_on(sysroot.active_transaction_changed(emitter));
    }
}

/// The running stand-in; leaves the bus on drop.
pub struct StandIn {
    shared: Arc<Shared>,
    conn: Arc<Mutex<Option<Connection>>>,
    address: String,
    /// Ends the activation watcher.
    stop: Arc<AtomicBool>,
}

impl StandIn {
    /// Serves `model` on `bus` under rpm-ostreed's name.
    pub fn start(bus: &PrivateBus, mut model: Model) -> StandIn {
        model.bus_address = bus.address.clone();
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            bus: Mutex::new(None),
            sockets: tempfile::tempdir().expect("creating a directory for transaction sockets"),
            next: AtomicU32::new(0),
        });
        let conn = Arc::new(Mutex::new(Some(serve(&shared, &bus.address))));
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(activation) = bus.activation.clone() {
            let (shared, conn, stop, address) = (
                shared.clone(),
                conn.clone(),
                stop.clone(),
                bus.address.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if std::fs::remove_file(&activation.requested).is_ok() {
                        // Started by the bus: a fresh daemon over the same deployments.
                        let mut slot = conn.lock().unwrap_or_else(|p| p.into_inner());
                        if slot.is_none() {
                            {
                                let mut m = shared.model();
                                m.rebooting = false;
                                m.activations += 1;
                            }
                            *slot = Some(serve(&shared, &address));
                        }
                        let _ = std::fs::write(&activation.served, "");
                    }
                    thread::sleep(std::time::Duration::from_millis(20));
                }
            });
        }
        StandIn {
            shared,
            conn,
            address: bus.address.clone(),
            stop,
        }
    }

    /// Plays the daemon's idle exit (`rpmostreed_daemon_check_idle`): it leaves the bus; on a
    /// bus that activates it ([`PrivateBus::activating`]), the next call starts it again.
    pub fn exit_idle(&self) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(conn) = conn {
            let _ = conn.close();
        }
    }

    /// Plays `systemctl restart rpm-ostreed`: the instance leaves the bus, a new one (a new
    /// unique name, hkd not registered with it) serves the same deployments, and the refusal
    /// after a finalize is lifted.
    pub fn restart(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = conn.take() {
            let _ = old.close();
        }
        self.shared.model().rebooting = false;
        *conn = Some(serve(&self.shared, &self.address));
    }
}

/// One instance of the daemon on the bus.
fn serve(shared: &Arc<Shared>, address: &str) -> Connection {
    let os_path = shared.model().os_path();
    let conn = zbus::blocking::connection::Builder::address(address)
        .and_then(|b| {
            b.serve_at(
                SYSROOT_PATH,
                Sysroot {
                    shared: shared.clone(),
                },
            )
        })
        .and_then(|b| {
            b.serve_at(
                os_path.as_str(),
                Os {
                    shared: shared.clone(),
                },
            )
        })
        .and_then(|b| b.name(BUS_NAME))
        .and_then(|b| b.build())
        .expect("serving the rpm-ostreed stand-in on the private bus");
    *shared.bus.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
    conn
}

impl StandIn {
    /// The model, to read what happened or to arrange the next transaction.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.shared.model()
    }

    /// Holds the daemon busy with another client's transaction until the guard drops.
    pub fn hold_busy(&self) -> BusyGuard<'_> {
        let path = self.model().os_path();
        self.model().active = Some((
            "UpdateDeployment".into(),
            ":1.99".into(),
            path,
            "unix:path=/run/rpm-ostree/other".into(),
        ));
        BusyGuard(self)
    }

    /// Plays a reboot: a finalized staged deployment boots; a locked one is dropped at
    /// shutdown (ostree-finalize-staged skips it); otherwise the default boots.
    pub fn reboot(&self) {
        let mut m = self.model();
        if m.deployments.first().is_some_and(|d| d.staged && d.locked) {
            m.deployments.remove(0);
        }
        for (i, d) in m.deployments.iter_mut().enumerate() {
            d.booted = i == 0;
            d.staged = false;
            d.locked = false;
        }
        // A new boot, a new daemon.
        m.rebooting = false;
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(conn) = conn {
            let _ = conn.close();
        }
    }
}

pub struct BusyGuard<'a>(&'a StandIn);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.model().active = None;
    }
}

/// The errors the daemon's callers see: GLib errors without a D-Bus name, as GDBus sends
/// them (G_IO_ERROR codes), and the bus's NoReply for a call the daemon never answered.
#[derive(Debug)]
pub enum GioError {
    ZBus(zbus::Error),
    /// G_IO_ERROR_FAILED: what `glnx_throw` raises.
    Code0(String),
    /// G_IO_ERROR_BUSY: "Transaction in progress" (`rpmostreed_sysroot_prep_for_txn`).
    Code26(String),
    /// Sent by the bus, not the daemon, when the daemon exits with the call unread.
    NoReply(String),
}

impl zbus::DBusError for GioError {
    fn create_reply(&self, header: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        zbus::Message::error(header, self.name())?.build(&(self.to_string(),))
    }

    fn name(&self) -> zbus::names::ErrorName<'_> {
        zbus::names::ErrorName::from_static_str_unchecked(match self {
            GioError::ZBus(_) => "org.freedesktop.zbus.Error",
            GioError::Code0(_) => {
                "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code0"
            }
            GioError::Code26(_) => {
                "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code26"
            }
            GioError::NoReply(_) => "org.freedesktop.DBus.Error.NoReply",
        })
    }

    fn description(&self) -> Option<&str> {
        match self {
            GioError::ZBus(_) => None,
            GioError::Code0(m) | GioError::Code26(m) | GioError::NoReply(m) => Some(m),
        }
    }
}

impl std::fmt::Display for GioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GioError::ZBus(e) => write!(f, "{e}"),
            GioError::Code0(m) | GioError::Code26(m) | GioError::NoReply(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GioError {}

impl From<zbus::Error> for GioError {
    fn from(e: zbus::Error) -> Self {
        GioError::ZBus(e)
    }
}

struct Sysroot {
    shared: Arc<Shared>,
}

#[zbus::interface(name = "org.projectatomic.rpmostree1.Sysroot")]
impl Sysroot {
    #[zbus(property)]
    fn booted(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.shared.model().os_path()).expect("an object path")
    }

    #[zbus(property)]
    fn path(&self) -> String {
        "/".into()
    }

    #[zbus(property)]
    fn active_transaction(&self) -> (String, String, String) {
        match &self.shared.model().active {
            Some((method, sender, path, _)) => (method.clone(), sender.clone(), path.clone()),
            None => Default::default(),
        }
    }

    #[zbus(property)]
    fn active_transaction_path(&self) -> String {
        match &self.shared.model().active {
            Some((_, _, _, address)) => address.clone(),
            None => String::new(),
        }
    }

    #[zbus(property)]
    fn deployments(&self) -> Vec<HashMap<String, OwnedValue>> {
        self.shared
            .model()
            .deployments
            .iter()
            .map(Dep::dict)
            .collect()
    }

    #[zbus(property)]
    fn automatic_update_policy(&self) -> String {
        "none".into()
    }

    fn register_client(&self, options: HashMap<String, OwnedValue>) {
        let id = options
            .get("id")
            .and_then(|v| <&str>::try_from(v).ok())
            .unwrap_or("")
            .to_owned();
        self.shared.model().clients.push(id);
    }

    fn unregister_client(&self, _options: HashMap<String, OwnedValue>) {}

    fn reload(&self) {}

    fn reload_config(&self) {}

    #[zbus(name = "GetOS")]
    fn get_os(&self, name: &str) -> zbus::fdo::Result<OwnedObjectPath> {
        let m = self.shared.model();
        if name.is_empty() || name == m.osname {
            Ok(OwnedObjectPath::try_from(m.os_path()).expect("an object path"))
        } else {
            Err(zbus::fdo::Error::Failed(format!(
                "Operating system name not found: {name}"
            )))
        }
    }
}

/// The work of one transaction, run on the model when it starts.
type Work = Box<dyn FnOnce(&mut Model, &Connection) -> Result<(), String> + Send>;

struct Os {
    shared: Arc<Shared>,
}

impl Os {
    /// Records the call, refuses it when busy, and starts a transaction for `work`.
    fn begin(
        &self,
        method: &str,
        sender: Option<String>,
        args: BTreeMap<String, Opt>,
        work: Work,
    ) -> Result<String, GioError> {
        let mut m = self.shared.model();
        m.calls.push(Call {
            method: method.to_owned(),
            args,
        });
        if m.hooks.no_reply_next > 0 {
            m.hooks.no_reply_next -= 1;
            return Err(GioError::NoReply(
                "Message recipient disconnected from message bus without replying".into(),
            ));
        }
        if m.rebooting {
            return Err(GioError::Code0(
                "Reboot initiated, cannot start new transaction".into(),
            ));
        }
        if let Some((title, ..)) = &m.active {
            return Err(busy(title));
        }
        if std::mem::take(&mut m.hooks.busy_error_next) {
            return Err(busy("deploy"));
        }
        let n = self.shared.next.fetch_add(1, Ordering::SeqCst);
        let socket: PathBuf = self.shared.sockets.path().join(format!("txn-{n}"));
        let listener = UnixListener::bind(&socket)
            .map_err(|e| GioError::Code0(format!("binding {}: {e}", socket.display())))?;
        let address = format!("unix:path={}", socket.display());
        m.active = Some((
            method.to_owned(),
            sender.unwrap_or_default(),
            m.os_path(),
            address.clone(),
        ));
        let hooks = std::mem::take(&mut m.hooks);
        drop(m);
        let job = Job {
            shared: self.shared.clone(),
            title: method.to_owned(),
            hooks,
            work,
        };
        thread::spawn(move || serve_transaction(listener, job));
        Ok(address)
    }
}

fn busy(title: &str) -> GioError {
    GioError::Code26(format!(
        "Transaction in progress: {title}\n You can cancel the current transaction with `rpm-ostree cancel`"
    ))
}

fn record(pairs: &[(&str, &HashMap<String, OwnedValue>)]) -> BTreeMap<String, Opt> {
    let mut out = BTreeMap::new();
    for (prefix, dict) in pairs {
        for (k, v) in dict.iter() {
            out.insert(format!("{prefix}{k}"), Opt::from(v));
        }
    }
    out
}

fn sender(header: &Header<'_>) -> Option<String> {
    header.sender().map(|s| s.to_string())
}

#[zbus::interface(name = "org.projectatomic.rpmostree1.OS")]
impl Os {
    #[zbus(property)]
    fn name(&self) -> String {
        self.shared.model().osname.clone()
    }

    #[zbus(property)]
    fn booted_deployment(&self) -> HashMap<String, OwnedValue> {
        let m = self.shared.model();
        m.deployments
            .iter()
            .find(|d| d.booted)
            .map(Dep::dict)
            .unwrap_or_default()
    }

    #[zbus(property)]
    fn default_deployment(&self) -> HashMap<String, OwnedValue> {
        let m = self.shared.model();
        m.deployments.first().map(Dep::dict).unwrap_or_default()
    }

    #[zbus(property)]
    fn rollback_deployment(&self) -> HashMap<String, OwnedValue> {
        let m = self.shared.model();
        m.deployments
            .iter()
            .find(|d| !d.booted && !d.staged)
            .map(Dep::dict)
            .unwrap_or_default()
    }

    #[zbus(property)]
    fn cached_update(&self) -> HashMap<String, OwnedValue> {
        HashMap::new()
    }

    fn update_deployment(
        &self,
        modifiers: HashMap<String, OwnedValue>,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        let args = record(&[("modifier:", &modifiers), ("option:", &options)]);
        let target = match (
            args.get("modifier:set-refspec"),
            args.get("modifier:set-revision"),
        ) {
            (Some(Opt::Str(r)), None) => Target::Refspec(r.clone()),
            (None, Some(Opt::Str(c))) => Target::Revision {
                checksum: c.clone(),
                skip_branch_check: args.get("option:skip-branch-check") == Some(&Opt::Bool(true)),
            },
            _ => {
                return Err(GioError::Code0(
                    "This stand-in handles set-refspec or set-revision only".into(),
                ))
            }
        };
        let lock = args.get("option:lock-finalization") == Some(&Opt::Bool(true));
        let driver = match args.get("option:register-driver") {
            Some(Opt::Str(d)) => Some(d.clone()),
            _ => None,
        };
        if driver.is_some() && self.shared.model().caller_unit.is_none() {
            // The daemon resolves the caller's pid to its systemd unit to record the driver,
            // and fails the whole call when there is none.
            self.shared.model().calls.push(Call {
                method: "UpdateDeployment".into(),
                args,
            });
            return Err(GioError::Code0(
                "Failed to register driver: could not find caller systemd unit".into(),
            ));
        }
        self.begin(
            "UpdateDeployment",
            sender(&header),
            args,
            Box::new(move |m, conn| {
                if driver.is_some() {
                    m.update_driver = driver;
                }
                stage(m, conn, target, lock)
            }),
        )
    }

    /// `rpm-ostree deploy REVISION`: a revision of the booted origin.
    fn deploy(
        &self,
        revision: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        let mut args = record(&[("option:", &options)]);
        args.insert("revision".into(), Opt::Str(revision.clone()));
        let lock = args.get("option:lock-finalization") == Some(&Opt::Bool(true));
        let skip_branch_check = args.get("option:skip-branch-check") == Some(&Opt::Bool(true));
        let checksum = revision
            .strip_prefix("revision=")
            .unwrap_or(&revision)
            .to_owned();
        self.begin(
            "Deploy",
            sender(&header),
            args,
            Box::new(move |m, conn| {
                stage(
                    m,
                    conn,
                    Target::Revision {
                        checksum,
                        skip_branch_check,
                    },
                    lock,
                )
            }),
        )
    }

    fn rebase(
        &self,
        options: HashMap<String, OwnedValue>,
        refspec: String,
        packages: Vec<String>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        let mut args = record(&[("option:", &options)]);
        args.insert("refspec".into(), Opt::Str(refspec.clone()));
        args.insert("packages".into(), Opt::Strs(packages));
        let lock = args.get("option:lock-finalization") == Some(&Opt::Bool(true));
        self.begin(
            "Rebase",
            sender(&header),
            args,
            Box::new(move |m, conn| stage(m, conn, Target::Refspec(refspec), lock)),
        )
    }

    fn rollback(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        let args = record(&[("option:", &options)]);
        self.begin("Rollback", sender(&header), args, Box::new(rollback))
    }

    fn cleanup(
        &self,
        elements: Vec<String>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        if let Some(bad) = elements.iter().find(|e| {
            !["base", "pending-deploy", "rollback-deploy", "repomd"].contains(&e.as_str())
        }) {
            return Err(GioError::Code0(format!("Invalid cleanup type: {bad}")));
        }
        let mut args = BTreeMap::new();
        args.insert("elements".into(), Opt::Strs(elements.clone()));
        self.begin(
            "Cleanup",
            sender(&header),
            args,
            Box::new(move |m, conn| cleanup(m, conn, &elements)),
        )
    }

    fn finalize_deployment(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, GioError> {
        let args = record(&[("option:", &options)]);
        let opts = args.clone();
        let bus = self.shared.model().bus_address.clone();
        self.begin(
            "FinalizeDeployment",
            sender(&header),
            args,
            Box::new(move |m, conn| {
                check_inhibitors(&bus)?;
                finalize(m, conn, &opts)
            }),
        )
    }
}
