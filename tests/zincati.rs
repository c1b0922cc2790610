//! A real Zincati (v0.0.32, `cargo install zincati`) against the coordinator's FleetLock
//! server on a real API server.
//!
//! What stands in: the `rpm-ostree` program (tests/standin/zincati/rpm-ostree: a booted
//! NestOS-like deployment for `status`, `deploy --register-driver` accepted, everything else
//! refused), the kernel command line (`ignition.platform.id=qemu`, bind-mounted over
//! /proc/cmdline) and the `zincati` user (a passwd entry bind-mounted over /etc/passwd) — all
//! in a private mount namespace of the Zincati process (`unshare -m`, root), so the host is
//! not touched; /run is a tmpfs there, holding Zincati's config.d. Zincati derives its id from
//! this machine's real /etc/machine-id, and the Node registered here carries that machine-id.
//!
//! What is shown: on start, Zincati's fleet_lock strategy gives back any lock it holds
//! (`steady-state`, its "initialization" state); a lock taken for this Node before (as
//! Zincati takes it before a reboot) is released by the real Zincati through our server, and
//! the Node uncordoned. Not shown: Zincati's own `pre-reboot` — it asks only once a Cincinnati
//! graph offered an update and rpm-ostree staged it, which this stand-in does not do.
//!
//! Needs Zincati at $HOUSEKEEPER_ZINCATI or ~/.cache/housekeeper/zincati/bin/zincati (the
//! zincati tier of tools/test-all.sh installs it), `unshare`, `setpriv` and root.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use housekeeper::cluster::annotations::{CORDONED_BY_HKD, FLEETLOCK_GROUP};
use housekeeper::cluster::coordinator::{self, Coordinator};
use housekeeper::cluster::fleetlock::{id, server};
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use support::{wait_for, KubeletStandIn, NodeRole, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

fn zincati_program() -> Result<PathBuf> {
    let path = match std::env::var_os("HOUSEKEEPER_ZINCATI") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/housekeeper/zincati/bin/zincati"),
    };
    ensure!(
        path.is_file(),
        "Zincati is not at {}: run tools/test-all.sh's zincati tier (apt-get install \
         libglib2.0-dev libostree-dev pkg-config; cargo install zincati --version 0.0.32 \
         --root ~/.cache/housekeeper/zincati), or set HOUSEKEEPER_ZINCATI",
        path.display()
    );
    Ok(path)
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nfleet-lock-protocol: true\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer.split(' ').nth(1).context("a status line")?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_zincati_gives_back_its_lock_through_the_coordinator() -> Result<()> {
    let zincati = zincati_program()?;
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let env = TestEnv::new("zincati").await?;
    support::crd::install_update_crd(&env.admin).await?;
    let machine = std::fs::read_to_string("/etc/machine-id")?
        .trim()
        .to_owned();
    let zid = id::zincati_id(&machine).context("this machine's /etc/machine-id")?;
    let kubelet = KubeletStandIn::new(env.admin.clone());
    let node = kubelet
        .register_node(&env, "nestos", NodeRole::Worker)
        .await?
        .metadata
        .name
        .context("node name")?;
    let nodes: Api<Node> = Api::all(env.admin.clone());
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {FLEETLOCK_GROUP: "workers"}}})),
        )
        .await?;
    nodes
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"machineID": machine}}})),
        )
        .await?;
    let u: Update = serde_json::from_value(json!({
        "apiVersion": "housekeeper.io/v1alpha1", "kind": "Update",
        "metadata": {"name": "os"},
        "spec": {
            "osImageURL": "ostree-image-signed:docker://hub.oepkgs.net/nestos/nestos:2",
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
        },
    }))?;
    let updates: Api<Update> = Api::namespaced(env.admin.clone(), &env.ns);
    updates.create(&PostParams::default(), &u).await?;

    let c = Coordinator::new(
        env.admin.clone(),
        coordinator::Config {
            namespace: env.ns.clone(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(400),
            ..coordinator::Config::new("coordinator-a")
        },
    );
    let (stop, stop_rx) = watch::channel(false);
    let s = Arc::new(server::Server::new(
        env.admin.clone(),
        server::Config {
            sweep_every: Duration::from_millis(500),
            ..server::Config::new("coordinator-a", &env.ns)
        },
        c.term(),
    ));
    let listener = server::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(c.run(stop_rx.clone()));
    tokio::spawn(s.run(listener, stop_rx));

    // The lock Zincati took before its reboot (written as it sends it).
    let body = json!({"client_params": {"id": zid, "group": "workers"}}).to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    while post(addr, "/v1/pre-reboot", &body).await? != 200 {
        ensure!(tokio::time::Instant::now() < deadline, "no lock for {node}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let holds = |u: &Update| {
        u.status
            .as_ref()
            .is_some_and(|s| s.grants.get(&node).is_some_and(|r| r.is_fleetlock()))
    };
    ensure!(holds(&updates.get("os").await?), "the lock in the ledger");

    // The real Zincati starts, in its own mount namespace.
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd.push_str("zincati:x:990:990::/var/lib/zincati:/sbin/nologin\n");
    std::fs::write(d.join("passwd"), passwd)?;
    let mut group = std::fs::read_to_string("/etc/group")?;
    group.push_str("zincati:x:990:\n");
    std::fs::write(d.join("group"), group)?;
    std::fs::write(
        d.join("cmdline"),
        "BOOT_IMAGE=/vmlinuz ignition.platform.id=qemu\n",
    )?;
    std::fs::write(
        d.join("50-test.toml"),
        format!(
            "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\nbase_url = \"http://{addr}/\"\n\
             [identity]\ngroup = \"workers\"\n[cincinnati]\nbase_url = \"http://127.0.0.1:9/\"\n"
        ),
    )?;
    // The zincati user reaches neither /root nor maybe the worktree: both programs are copied
    // into this 0755 directory.
    let standin = d.join("bin");
    std::fs::create_dir(&standin)?;
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/standin/zincati/rpm-ostree"),
        standin.join("rpm-ostree"),
    )?;
    std::fs::copy(&zincati, standin.join("zincati"))?;
    let zincati = standin.join("zincati");
    let calls = d.join("rpm-ostree.log");
    std::fs::write(&calls, "")?;
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::set_permissions(&calls, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let script = format!(
        "set -e; mount --bind {d}/passwd /etc/passwd; mount --bind {d}/group /etc/group; \
         mount --bind {d}/cmdline /proc/cmdline; mount -t tmpfs tmpfs /run; \
         mkdir -p /run/zincati/config.d /run/zincati/public; cp {d}/50-test.toml /run/zincati/config.d/; \
         chown -R 990:990 /run/zincati; \
         exec setpriv --reuid=990 --regid=990 --clear-groups env PATH={standin}:/usr/bin:/bin \
         ZINCATI_STANDIN_LOG={calls} {zincati} agent -v",
        d = d.display(),
        standin = standin.display(),
        calls = calls.display(),
        zincati = zincati.display(),
    );
    let out = d.join("zincati.log");
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(d.join("zincati.err"))?)
        .spawn()
        .context("starting Zincati under unshare -m (util-linux)")?;
    let result = wait_for(
        "the real Zincati's steady-state to release the lock",
        WAIT,
        || async { Ok(!holds(&updates.get("os").await?)) },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    stop.send_replace(true);
    let log = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(d.join("zincati.err")).unwrap_or_default();
    eprintln!(
        "--- Zincati's log ---\n{log}--- rpm-ostree calls ---\n{}",
        std::fs::read_to_string(&calls)?
    );
    result?;
    ensure!(
        log.contains(&format!("agent running on node '{zid}'")),
        "Zincati's own id is the one derived here ({zid}):\n{log}"
    );
    let n = nodes.get(&node).await?;
    ensure!(
        n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
            && !n
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CORDONED_BY_HKD)),
        "the Node uncordoned"
    );
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let released = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("Released"));
    ensure!(released, "a Released Event on the Update");
    Ok(())
}
