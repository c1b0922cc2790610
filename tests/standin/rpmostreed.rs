//! A stand-in for rpm-ostreed (rpm-ostree cannot be installed here): a D-Bus service that
//! implements the subset of `org.projectatomic.rpmostree1` hkd uses, with the real names,
//! signatures and property types, over an in-memory deployment model.
//!
//! What it reproduces: the bus name; `Sysroot` at its fixed path (Booted, Path,
//! ActiveTransaction `(sss)`, ActiveTransactionPath, Deployments `aa{sv}`, RegisterClient,
//! UnregisterClient, Reload, GetOS); the OS object under the OS name (UpdateDeployment, Rebase,
//! Rollback, Cleanup, FinalizeDeployment, each returning a transaction address); transactions
//! on a peer-to-peer socket (Start → TaskBegin/PercentProgress/DownloadProgress/Message/TaskEnd/
//! ProgressEnd → Finished, Cancel), ActiveTransaction set while one runs; GDBus's error names
//! and the daemon's messages for a busy daemon and for the checks FinalizeDeployment makes.
//!
//! What it does not: pull anything (images are a table of reference → commit), reboot
//! (FinalizeDeployment counts reboots; [`StandIn::reboot`] plays one), polkit, idle exit,
//! PropertiesChanged signals, package layering.
//!
//! Hooks make the next transaction fail, be cancelled, run slowly (so that `Cancel` can reach
//! it), or keep the daemon busy with someone else's transaction.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use zbus::blocking::Connection;
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::bus::PrivateBus;

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
const TRANSACTION_INTERFACE: &str = "org.projectatomic.rpmostree1.Transaction";

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
    fn dict(&self) -> HashMap<String, OwnedValue> {
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
    fn os_path(&self) -> String {
        format!("/org/projectatomic/rpmostree1/{}", self.osname)
    }
}

struct Shared {
    model: Mutex<Model>,
    sockets: tempfile::TempDir,
    next: AtomicU32,
}

impl Shared {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running stand-in; leaves the bus on drop.
pub struct StandIn {
    shared: Arc<Shared>,
    conn: Option<Connection>,
}

impl StandIn {
    /// Serves `model` on `bus` under rpm-ostreed's name.
    pub fn start(bus: &PrivateBus, model: Model) -> StandIn {
        let os_path = model.os_path();
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            sockets: tempfile::tempdir().expect("creating a directory for transaction sockets"),
            next: AtomicU32::new(0),
        });
        let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
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
        StandIn {
            shared,
            conn: Some(conn),
        }
    }

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
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
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

/// GLib errors without a D-Bus name, as GDBus sends them (G_IO_ERROR codes).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark")]
pub enum GioError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// G_IO_ERROR_FAILED: what `glnx_throw` raises.
    Code0(String),
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
    GioError::Code0(format!(
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
            (None, Some(Opt::Str(c))) => Target::Revision(c.clone()),
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
        self.begin(
            "FinalizeDeployment",
            sender(&header),
            args,
            Box::new(move |m, conn| finalize(m, conn, &opts)),
        )
    }
}

enum Target {
    Refspec(String),
    Revision(String),
}

fn message(conn: &Connection, text: &str) {
    emit(conn, "Message", &(text,));
}

fn emit<B>(conn: &Connection, signal: &str, body: &B)
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let _ = conn.emit_signal(None::<&str>, "/", TRANSACTION_INTERFACE, signal, body);
}

fn stage(m: &mut Model, conn: &Connection, target: Target, lock: bool) -> Result<(), String> {
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

fn finalize(m: &mut Model, conn: &Connection, opts: &BTreeMap<String, Opt>) -> Result<(), String> {
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

fn rollback(m: &mut Model, conn: &Connection) -> Result<(), String> {
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

fn cleanup(m: &mut Model, conn: &Connection, elements: &[String]) -> Result<(), String> {
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

struct Job {
    shared: Arc<Shared>,
    title: String,
    hooks: Hooks,
    work: Work,
}

/// Serves one transaction on its socket: the client connects, calls Start, gets the signals.
fn serve_transaction(listener: UnixListener, job: Job) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    let (done_tx, done_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let iface = Transaction {
        title: job.title.clone(),
        cancel: cancel.clone(),
        job: Mutex::new(Some((job, done_tx))),
    };
    let conn = zbus::blocking::connection::Builder::async_io_unix_stream(stream)
        .server(zbus::Guid::generate())
        .map(|b| b.p2p())
        .and_then(|b| b.serve_at("/", iface))
        .and_then(|b| b.build());
    let Ok(conn) = conn else { return };
    // Like the daemon, keep the transaction until it finished (or its client went away).
    let _ = done_rx.recv();
    drop(conn);
}

struct Transaction {
    title: String,
    cancel: Arc<AtomicBool>,
    job: Mutex<Option<(Job, mpsc::Sender<()>)>>,
}

#[zbus::interface(name = "org.projectatomic.rpmostree1.Transaction")]
impl Transaction {
    #[zbus(property)]
    fn title(&self) -> String {
        self.title.clone()
    }

    #[zbus(property)]
    fn initiating_client_description(&self) -> String {
        String::new()
    }

    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn start(&self, #[zbus(connection)] conn: &zbus::Connection) -> bool {
        let Some((job, done)) = self.job.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let conn = Connection::from(conn.clone());
        let cancel = self.cancel.clone();
        thread::spawn(move || run(job, &conn, &cancel, done));
        true
    }
}

fn run(job: Job, conn: &Connection, cancel: &AtomicBool, done: mpsc::Sender<()>) {
    // The daemon never signals before Start has returned.
    thread::sleep(Duration::from_millis(20));
    if let Some(slow) = job.hooks.slow_next {
        let until = Instant::now() + slow;
        while Instant::now() < until && !cancel.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let outcome = if job.hooks.cancel_next || cancel.load(Ordering::SeqCst) {
        Err("Operation was cancelled".to_owned())
    } else if let Some(message) = job.hooks.fail_next {
        Err(message)
    } else {
        (job.work)(&mut job.shared.model(), conn)
    };
    job.shared.model().active = None;
    match outcome {
        Ok(()) => emit(conn, "Finished", &(true, "")),
        Err(e) => emit(conn, "Finished", &(false, e.as_str())),
    }
    let _ = done.send(());
}
