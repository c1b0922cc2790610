//! The rollout as an observer sees it: the Nodes and the Updates (whose status holds the grant
//! ledger) from two watches, merged into one stream in the order the API server made the
//! changes.
//!
//! Two watches deliver independently, so a grant recorded in an Update's ledger right after a
//! node's Done can arrive before that Done: an observer that applied them as they came would
//! count one node too many in flight. Every change carries its resourceVersion (an etcd
//! revision, one order for the whole cluster); changes are held for [`REORDER`] and released
//! in that order, so a change is applied only after every earlier one that arrived within
//! that time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use futures::{Stream, StreamExt};
use housekeeper::cluster::annotations::NodeView;
use housekeeper::cluster::ledger;
use housekeeper::cluster::update::Update;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

/// How long a change is held for earlier ones still on their way.
pub const REORDER: Duration = Duration::from_millis(300);

/// One change, applied to a [`RolloutView`].
#[derive(Debug, Clone)]
pub enum Change {
    Node(Box<Node>),
    NodeGone(String),
    Update(Box<Update>),
    UpdateGone(String),
}

/// The Nodes and Updates as last seen.
#[derive(Debug, Default)]
pub struct RolloutView {
    pub nodes: BTreeMap<String, Node>,
    pub updates: BTreeMap<String, Update>,
}

impl RolloutView {
    pub fn apply(&mut self, c: Change) {
        match c {
            Change::Node(n) => {
                self.nodes.insert(n.name_any(), *n);
            }
            Change::NodeGone(n) => {
                self.nodes.remove(&n);
            }
            Change::Update(u) => {
                self.updates.insert(u.name_any(), *u);
            }
            Change::UpdateGone(u) => {
                self.updates.remove(&u);
            }
        }
    }

    /// The views of the Nodes `keep` accepts, their grants from the ledgers.
    pub fn views(&self, keep: impl Fn(&str) -> bool) -> Vec<NodeView> {
        let updates: Vec<Update> = self.updates.values().cloned().collect();
        let mut views: Vec<NodeView> = self
            .nodes
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(_, n)| NodeView::from_node(n))
            .collect();
        ledger::attach(&mut views, &updates);
        views
    }
}

fn version(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The changes of every Node and of the Updates of `namespace`, in the server's order (see
/// the module documentation). Watch errors are skipped: the watcher resumes by itself, after a
/// backoff (an API server away is not asked again in a busy loop).
pub fn changes(client: Client, namespace: &str) -> impl Stream<Item = Change> {
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .filter_map(|ev| async move {
            match ev.ok()? {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    Some((version(&n.metadata), Change::Node(Box::new(n))))
                }
                watcher::Event::Delete(n) => {
                    Some((version(&n.metadata), Change::NodeGone(n.name_any())))
                }
                _ => None,
            }
        });
    let updates = watcher(
        Api::<Update>::namespaced(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|ev| async move {
        match ev.ok()? {
            watcher::Event::Apply(u) | watcher::Event::InitApply(u) => {
                Some((version(&u.metadata), Change::Update(Box::new(u))))
            }
            watcher::Event::Delete(u) => {
                Some((version(&u.metadata), Change::UpdateGone(u.name_any())))
            }
            _ => None,
        }
    });
    let merged = futures::stream::select(nodes.boxed(), updates.boxed());
    // (version, arrival, sequence) → change; the smallest version goes first once it has
    // waited REORDER.
    let state = (
        merged,
        BinaryHeap::<Reverse<(u64, Instant, u64)>>::new(),
        BTreeMap::<u64, Change>::new(),
        0u64,
        false,
    );
    futures::stream::unfold(
        state,
        |(mut merged, mut heap, mut held, mut seq, mut ended)| async move {
            loop {
                if let Some(Reverse((_, arrived, s))) = heap.peek().copied() {
                    let due = arrived + REORDER;
                    if Instant::now() >= due || ended {
                        heap.pop();
                        let c = held.remove(&s).expect("held with its sequence");
                        return Some((c, (merged, heap, held, seq, ended)));
                    }
                    tokio::select! {
                        next = merged.next(), if !ended => match next {
                            Some((v, c)) => {
                                heap.push(Reverse((v, Instant::now(), seq)));
                                held.insert(seq, c);
                                seq += 1;
                            }
                            None => ended = true,
                        },
                        _ = tokio::time::sleep_until(due) => {}
                    }
                } else if ended {
                    return None;
                } else {
                    match merged.next().await {
                        Some((v, c)) => {
                            heap.push(Reverse((v, Instant::now(), seq)));
                            held.insert(seq, c);
                            seq += 1;
                        }
                        None => ended = true,
                    }
                }
            }
        },
    )
}
