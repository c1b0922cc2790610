//! hkctl's work: the admin's side of the cluster, over the API server only.
//!
//! - [`install`]: the CRD, namespace, ServiceAccount and RBAC applied idempotently (or
//!   printed), and the kubeconfig each node's hkd uses; `uninstall`.
//! - [`upgrade`]: an Update created or changed after the coordinator's own validation, with a
//!   preview drawn by the coordinator's own planner; `--wait` follows it.
//! - [`status`]: the rollout at a glance ([`view`] builds the document, [`render`] the
//!   tables), once or redrawn on watch events.
//! - [`steer`]: pause, resume, abort. [`history`]: one node's Events and annotations.
//!
//! Pure parts ([`args`], [`view`], [`render`], the preview's simulation) are unit-tested; the
//! rest is thin and tested against the real API server (tests/hkctl.rs).
//!
//! Every failure is one line naming what was being done and what to do about it: a missing or
//! broken kubeconfig, an API server that does not answer, a cluster without the CRD, a
//! permission the user lacks (checked before anything is written, so nothing is half-applied).

pub mod args;
pub mod history;
pub mod install;
pub mod preview;
pub mod render;
pub mod status;
pub mod steer;
pub mod upgrade;
pub mod view;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::cluster::update::{Update, NAMESPACE};
use crate::sys::terminal;

/// How long to wait for a TCP connection to the API server: a server that is down refuses at
/// once; an address that points nowhere would otherwise hang for the OS's minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find the cluster, from the command line.
#[derive(Debug, Clone, Default)]
pub struct ClusterTarget {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// A connection to the cluster, and what hkctl knows about it.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    /// The namespace of the Updates (and of hkd's ServiceAccount).
    pub namespace: String,
    /// The API server's URL, for messages.
    pub server: String,
    pub kubeconfig_path: PathBuf,
    pub kubeconfig: Kubeconfig,
}

/// The kubeconfig to read: `--kubeconfig`, else the first file in `KUBECONFIG`, else
/// `~/.kube/config`.
fn kubeconfig_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        if let Some(first) = std::env::split_paths(&list).next() {
            return Ok(first);
        }
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("no kubeconfig: pass --kubeconfig FILE or set KUBECONFIG"))?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// Read the kubeconfig and make a client. No request is made yet.
pub async fn connect(target: &ClusterTarget) -> Result<Ctx> {
    let path = kubeconfig_path(target.kubeconfig.as_deref())?;
    if !path.exists() {
        bail!(
            "kubeconfig {} does not exist: pass --kubeconfig FILE or set KUBECONFIG",
            path.display()
        );
    }
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| {
        anyhow!(
            "kubeconfig {} cannot be read: {}",
            path.display(),
            root_cause(&e)
        )
    })?;
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| anyhow!("kubeconfig {}: {}", path.display(), root_cause(&e)))?;
    config.default_retry = false;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| NAMESPACE.to_owned());
    let client = Client::try_from(config)
        .map_err(|e| anyhow!("kubeconfig {}: {}", path.display(), root_cause(&e)))?;
    Ok(Ctx {
        client,
        namespace,
        server: server.trim_end_matches('/').to_owned(),
        kubeconfig_path: path,
        kubeconfig,
    })
}

/// The innermost message of an error chain: "Connection refused (os error 111)" rather than
/// three layers of client wrapping.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    let inner = last.to_string();
    let outer = e.to_string();
    let chosen = if std::ptr::eq(last, e) || outer.contains(&inner) {
        outer
    } else {
        inner
    };
    // Some parsers explain over several lines (a caret under the column): the first says it.
    chosen
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

impl Ctx {
    /// One line for a failed API call: what was being done, and what to do about it.
    pub fn fail(&self, doing: &str, e: kube::Error) -> anyhow::Error {
        match e {
            kube::Error::Api(s) if s.code == 403 => anyhow!(
                "{doing}: permission denied: {} (use a kubeconfig whose user may, or ask for a \
                 Role that allows it)",
                s.message
            ),
            kube::Error::Api(s) if s.code == 401 => anyhow!(
                "{doing}: the API server at {} did not accept the credentials in {} (401): \
                 renew the token or certificate",
                self.server,
                self.kubeconfig_path.display()
            ),
            kube::Error::Api(s) => anyhow!("{doing}: {} ({})", s.message, s.code),
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => anyhow!(
                "{doing}: cannot reach the API server at {}: {}; is the cluster up, and is \
                 the server in {} right?",
                self.server,
                root_cause(&e),
                self.kubeconfig_path.display()
            ),
            e => anyhow!("{doing}: {}", root_cause(&e)),
        }
    }

    pub fn updates(&self) -> Api<Update> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Update CRD is served; the first request of every command that needs it, so that a
    /// server that is down or a cluster without Housekeeper is named before anything else.
    pub async fn require_crd(&self) -> Result<()> {
        match self
            .client
            .list_api_group_resources("housekeeper.io/v1alpha1")
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "updates") => Ok(()),
            Ok(_) => Err(self.not_installed()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(self.not_installed()),
            Err(e) => Err(self.fail("looking for the Update resource", e)),
        }
    }

    fn not_installed(&self) -> anyhow::Error {
        anyhow!(
            "the Update resource (updates.housekeeper.io) is not installed on the cluster at {}: \
             run hkctl install",
            self.server
        )
    }

    /// The Update to work on: `name`, or the only one in the namespace.
    pub async fn pick_update(&self, name: Option<&str>) -> Result<Update> {
        self.require_crd().await?;
        let ns = &self.namespace;
        if let Some(name) = name {
            return match self.updates().get_opt(name).await {
                Ok(Some(u)) => Ok(u),
                Ok(None) => bail!(
                    "there is no Update {ns}/{name}: see the rollouts with hkctl status, or \
                     start one with hkctl upgrade --image REF"
                ),
                Err(e) => Err(self.fail(&format!("reading Update {ns}/{name}"), e)),
            };
        }
        let mut all = self
            .updates()
            .list(&ListParams::default())
            .await
            .map_err(|e| self.fail(&format!("listing Updates in {ns}"), e))?
            .items;
        match all.len() {
            0 => bail!("there is no Update in {ns}: start one with hkctl upgrade --image REF"),
            1 => Ok(all.remove(0)),
            n => {
                let names: Vec<String> = all.iter().map(|u| u.name_any()).collect();
                bail!(
                    "{n} Updates in {ns} ({}): name one with --update NAME",
                    names.join(", ")
                )
            }
        }
    }

    /// Ask the API server which of `checks` the user may not do; each as "verb resource".
    pub async fn missing_permissions(&self, checks: &[Check]) -> Result<Vec<String>> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut missing = Vec::new();
        for c in checks {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(c.verb.into()),
                        group: Some(c.group.into()),
                        resource: Some(c.resource.into()),
                        subresource: c.subresource.map(str::to_owned),
                        namespace: c.namespace.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| self.fail("asking the API server what this user may do", e))?;
            if !answer.status.is_some_and(|s| s.allowed) {
                missing.push(c.to_string());
            }
        }
        Ok(missing)
    }

    /// Fail with every permission of `checks` the user lacks, before anything is written.
    pub async fn require(&self, command: &str, checks: &[Check]) -> Result<()> {
        let missing = self.missing_permissions(checks).await?;
        if missing.is_empty() {
            return Ok(());
        }
        bail!(
            "{command} needs permissions the user of {} lacks: {}; nothing was changed (use an \
             admin kubeconfig, or ask for a Role that grants them)",
            self.kubeconfig_path.display(),
            missing.join(", ")
        )
    }
}

/// One permission to ask about.
#[derive(Debug, Clone)]
pub struct Check {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
}

impl Check {
    pub fn new(verb: &'static str, group: &'static str, resource: &'static str) -> Check {
        Check {
            verb,
            group,
            resource,
            subresource: None,
            namespace: None,
        }
    }

    pub fn subresource(mut self, subresource: &'static str) -> Check {
        self.subresource = Some(subresource);
        self
    }

    pub fn in_ns(mut self, ns: &str) -> Check {
        self.namespace = Some(ns.to_owned());
        self
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(s) = self.subresource {
            write!(f, "/{s}")?;
        }
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in {ns}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

/// How output looks on this stdout: colours on a terminal without NO_COLOR, the terminal's
/// width (at least 80), 80 elsewhere.
pub fn stdout_term() -> render::Term {
    let out = std::io::stdout();
    let tty = out.is_terminal();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let width = if tty { terminal_width() } else { None };
    render::Term {
        width: width.unwrap_or(render::DEFAULT_WIDTH),
        color: tty && !no_color,
    }
}

/// Whether stdout is a terminal.
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

fn terminal_width() -> Option<usize> {
    terminal::stdout_size()
        .map(|s| s.columns)
        .filter(|&c| c > 0)
}

/// The height of the terminal on stdout, when it is one.
pub fn terminal_height() -> Option<usize> {
    terminal::stdout_size().map(|s| s.rows).filter(|&r| r > 0)
}

/// The kubeconfig's current (or chosen) context's cluster: server URL and CA data (base64).
pub fn cluster_of(ctx: &Ctx, context: Option<&str>) -> Result<(String, Option<String>)> {
    let kc = &ctx.kubeconfig;
    let name = context
        .map(str::to_owned)
        .or_else(|| kc.current_context.clone())
        .context("the kubeconfig has no current-context")?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.clone())
        .with_context(|| format!("the kubeconfig has no context {name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("the kubeconfig has no cluster {:?}", context.cluster))?;
    let server = cluster.server.clone().unwrap_or_else(|| ctx.server.clone());
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(file)) => {
            let base = ctx.kubeconfig_path.parent().unwrap_or(Path::new("."));
            let path = base.join(file);
            let pem = std::fs::read(&path)
                .with_context(|| format!("reading the cluster's CA {}", path.display()))?;
            use base64::Engine as _;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };
    Ok((server, ca))
}
