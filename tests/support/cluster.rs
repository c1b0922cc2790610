//! Which cluster the tests use, clients for it, and a namespace per test.
//!
//! By default the local cluster of [`super::local`]. When `HOUSEKEEPER_TEST_KUBECONFIG` names a
//! kubeconfig, its current context is used instead and nothing is started: the same tests then
//! run as contract tests against that cluster (e.g. a modern one, where policy/v1 eviction and a
//! real kubelet exist).
//!
//! Every client has the `kube` crate's own retry of 429/503/504 turned off
//! (`Config::default_retry = false`): kube 5 retries up to 15 times with backoff, which turns a
//! PodDisruptionBudget's 429 into minutes of silence. Callers see every status and own their
//! backoff.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

use super::local::{self, LocalCluster, LIMITED_USER};
use super::process::random_hex;

/// Names a kubeconfig whose cluster the tests use instead of starting their own.
pub const KUBECONFIG_ENV: &str = "HOUSEKEEPER_TEST_KUBECONFIG";

/// Label on everything the tests create, so a shared cluster can be cleaned by hand.
pub const TEST_LABEL: &str = "housekeeper.io/test";

#[derive(Clone, Debug)]
pub enum Cluster {
    /// Started here, shared by this run's test processes.
    Local(LocalCluster),
    /// Someone else's, through a kubeconfig.
    External { kubeconfig: PathBuf },
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// The run's cluster, started on first use.
pub async fn cluster() -> Result<&'static Cluster> {
    CLUSTER
        .get_or_try_init(|| async {
            match std::env::var_os(KUBECONFIG_ENV) {
                Some(path) if !path.is_empty() => Ok(Cluster::External {
                    kubeconfig: PathBuf::from(path),
                }),
                _ => local::ensure_started().await.map(Cluster::Local),
            }
        })
        .await
}

impl Cluster {
    pub fn is_local(&self) -> bool {
        matches!(self, Cluster::Local(_))
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        match self {
            Cluster::Local(l) => &l.admin_kubeconfig,
            Cluster::External { kubeconfig } => kubeconfig,
        }
    }

    /// A client with full rights (system:masters locally; the kubeconfig's user otherwise).
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig_file(self.admin_kubeconfig()).await
    }

    /// A client for a token user, on this cluster's server and CA.
    pub async fn token_client(&self, token: &str, user: &str) -> Result<Client> {
        let mut kc = Kubeconfig::read_from(self.admin_kubeconfig())
            .with_context(|| format!("reading {}", self.admin_kubeconfig().display()))?;
        let context_name = kc
            .current_context
            .clone()
            .context("kubeconfig has no current-context")?;
        let context = kc
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.clone())
            .context("kubeconfig's current context is not defined")?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .cloned()
            .context("kubeconfig's current cluster is not defined")?;
        kc.clusters = vec![cluster];
        let yaml = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": kc.clusters,
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": context.cluster, "user": user}}],
            "current-context": user,
        })
        .to_string();
        client_from_kubeconfig(Kubeconfig::from_yaml(&yaml)?).await
    }
}

/// A client from a kubeconfig file's current context, without kube's own retry.
pub async fn client_from_kubeconfig_file(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    client_from_kubeconfig(kc).await
}

async fn client_from_kubeconfig(kc: Kubeconfig) -> Result<Client> {
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// One test's view: an admin client and a namespace of its own, on the run's cluster.
///
/// On an external cluster, dropping it deletes the namespace and the stand-in Nodes the test
/// registered. The local cluster is thrown away whole at the end of the run, so nothing is
/// deleted there (namespace deletion would wait forever anyway: no namespace controller runs).
pub struct TestEnv {
    pub cluster: &'static Cluster,
    pub admin: Client,
    pub ns: String,
    nodes: Mutex<Vec<String>>,
}

impl TestEnv {
    /// Start (or join) the cluster and create a namespace named after the test.
    pub async fn new(test: &str) -> Result<TestEnv> {
        let cluster = cluster().await?;
        let admin = cluster.admin_client().await?;
        let mut base: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(40);
        let ns = format!("hk-{}-{}", base.trim_matches('-'), random_hex(3));
        let api: Api<Namespace> = Api::all(admin.clone());
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
        Ok(TestEnv {
            cluster,
            admin,
            ns,
            nodes: Mutex::new(Vec::new()),
        })
    }

    /// A name unique to this test, for cluster-scoped objects such as Nodes.
    pub fn unique(&self, name: &str) -> String {
        format!("{}-{name}", self.ns)
    }

    /// Remember a cluster-scoped Node for clean-up on external clusters.
    pub fn track_node(&self, name: &str) {
        self.nodes.lock().expect("node list").push(name.to_owned());
    }

    /// A client allowed exactly `rules` in this test's namespace and nothing else (beyond what
    /// every authenticated user may do): a Role with these rules bound to the least-privilege
    /// user. Locally that user is a static token user; on an external cluster it is a
    /// ServiceAccount in the namespace, whose token comes from the TokenRequest API.
    pub async fn limited_client(&self, rules: Vec<PolicyRule>) -> Result<Client> {
        let name = "housekeeper-limited";
        let meta = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.ns.clone()),
            ..Default::default()
        };
        Api::<Role>::namespaced(self.admin.clone(), &self.ns)
            .create(
                &PostParams::default(),
                &Role {
                    metadata: meta.clone(),
                    rules: Some(rules),
                },
            )
            .await
            .context("creating the least-privilege Role")?;
        let (subject, client) = match self.cluster {
            Cluster::Local(l) => (
                Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "User".into(),
                    name: LIMITED_USER.into(),
                    namespace: None,
                },
                self.cluster
                    .token_client(&l.limited_token, LIMITED_USER)
                    .await?,
            ),
            Cluster::External { .. } => {
                let sa_api = Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns);
                sa_api
                    .create(
                        &PostParams::default(),
                        &ServiceAccount {
                            metadata: meta.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .context("creating the least-privilege ServiceAccount")?;
                let tr = sa_api
                    .create_token_request(name, &PostParams::default(), &Default::default())
                    .await
                    .context("requesting a token for the least-privilege ServiceAccount")?;
                let token = tr.status.context("TokenRequest without status")?.token;
                (
                    Subject {
                        api_group: None,
                        kind: "ServiceAccount".into(),
                        name: name.into(),
                        namespace: Some(self.ns.clone()),
                    },
                    self.cluster.token_client(&token, name).await?,
                )
            }
        };
        Api::<RoleBinding>::namespaced(self.admin.clone(), &self.ns)
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta,
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: name.into(),
                    },
                    subjects: Some(vec![subject]),
                },
            )
            .await
            .context("creating the least-privilege RoleBinding")?;
        Ok(client)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let Cluster::External { kubeconfig } = self.cluster else {
            return;
        };
        let kubeconfig = kubeconfig.clone();
        let ns = self.ns.clone();
        let nodes = std::mem::take(&mut *self.nodes.lock().expect("node list"));
        // Drop cannot await, and the test's runtime may be shutting down: clean up on a
        // thread with a runtime of its own, and wait for it.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("clean-up runtime");
            rt.block_on(async move {
                let client = client_from_kubeconfig_file(&kubeconfig).await?;
                let dp = DeleteParams::default();
                for node in nodes {
                    let _ = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                        .delete(&node, &dp)
                        .await;
                }
                Api::<Namespace>::all(client).delete(&ns, &dp).await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("warning: cleaning up test namespace: {e:#}");
        }
    }
}
