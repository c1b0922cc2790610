//! Leader election for the coordinator through a `coordination.k8s.io/v1` Lease.
//!
//! Every coordinator candidate campaigns; the one holding the Lease acts, the others wait. The
//! decision is [`lease_decision`], pure; [`Elector`] reads the Lease, asks it, and writes.
//!
//! Expected flow: [`Elector::try_lead`] every `renew_every` (a holder renews, others look
//! again when the holder's term would end) → act while [`Role::Leader`]'s `until` is ahead →
//! [`Elector::step_down`] before the node drains or hkd stops.
//!
//! Guarantees:
//! - every write carries the resourceVersion the decision was made on: of two coordinators
//!   racing for a free or expired Lease, one write wins and the other gets 409 and stays a
//!   follower (creating a Lease that exists is 409 as well);
//! - time is measured on each process's own monotonic clock, never by comparing one host's
//!   wall clock with another's (a clock stepped by NTP on either side changes nothing): the
//!   holder's term ends `leaseDurationSeconds` after it *sent* its last successful write; a
//!   waiting candidate takes the Lease over only once the record it reads (holder, renewTime,
//!   transitions) has stayed the same for `leaseDurationSeconds` since it first read it —
//!   so it never takes over before the holder's own count has ended;
//! - every acquisition adds one to `leaseTransitions`, and that number is the holder's
//!   *term*, which fences its writes (see [`super::ledger`]); renewing keeps the term;
//! - a process renews only the holding it took itself: another process with the same identity
//!   (a restarted hkd) takes the Lease over with a new term, which fences the old one;
//! - stepping down clears `holderIdentity`, so a successor takes over at its next look instead
//!   of after the whole term.
//!
//! Caveats: a holder that stalls longer than its term (a stopped process) may still send a
//! write when it resumes; the term in the ledger, not this module, makes that write harmless.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

use super::events::brief;

/// The Lease's name in the coordinator's namespace.
pub const LEASE_NAME: &str = "housekeeper-coordinator";

/// What the decision needs from a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// `None` (or empty in the object): nobody holds it.
    pub holder: Option<String>,
    /// As written by the holder, on the holder's clock: compared only for change.
    pub renew_time: Option<Timestamp>,
    pub duration: Option<Duration>,
    /// `leaseTransitions`: the holder's term.
    pub transitions: i64,
}

impl LeaseView {
    pub fn from_lease(lease: &Lease) -> LeaseView {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseView {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.or(spec.acquire_time).map(|t| t.0),
            duration: spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
            transitions: i64::from(spec.lease_transitions.unwrap_or(0).max(0)),
        }
    }
}

/// What a coordinator does about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// Free, expired, or held under this identity by another process: take it over.
    Acquire,
    /// Ours, in this process's term: renew it.
    Renew,
    /// Someone else holds it: look again after `remaining` unless it changes.
    Wait { holder: String, remaining: Duration },
}

/// Decide about the Lease. Pure: `unchanged_for` is how long this process has seen the very
/// same record (on its monotonic clock), `my_term` the term this process holds, if any.
pub fn lease_decision(
    lease: Option<&LeaseView>,
    me: &str,
    my_term: Option<i64>,
    unchanged_for: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let Some(holder) = &lease.holder else {
        return Decision::Acquire;
    };
    if holder == me {
        return if my_term == Some(lease.transitions) {
            Decision::Renew
        } else {
            Decision::Acquire
        };
    }
    match lease.duration.filter(|d| !d.is_zero()) {
        Some(d) if unchanged_for <= d => Decision::Wait {
            holder: holder.clone(),
            remaining: d - unchanged_for,
        },
        // Expired, or without a term at all (as client-go reads a zero duration).
        _ => Decision::Acquire,
    }
}

/// Where this coordinator stands after a look at the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the Lease as `term` until `until` (its own monotonic clock) unless it renews.
    Leader { term: i64, until: Instant },
    /// Someone else holds it (`holder`, when known); look again after `remaining`, or soon when
    /// `None` (a race just lost: the winner's Lease is re-read at the next look).
    Follower {
        holder: Option<String>,
        remaining: Option<Duration>,
    },
}

/// The record a waiting candidate watches for change, and since when (monotonic) it has seen it.
#[derive(Debug, Default)]
struct Seen {
    record: Option<LeaseView>,
    since: Option<Instant>,
    /// The term this process took, while it holds it.
    term: Option<i64>,
}

/// The thin side: reads and writes the Lease for one identity.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    seen: Mutex<Seen>,
    /// A seam for tests only: this many seconds are added to the wall clock written into
    /// `renewTime` and `acquireTime` (what a host with a wrong clock writes).
    wall_offset: jiff::SignedDuration,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            seen: Mutex::new(Seen::default()),
            wall_offset: jiff::SignedDuration::ZERO,
        }
    }

    /// Write `renewTime` as a host whose clock is off by `offset` would (tests only).
    pub fn with_wall_offset(mut self, offset: jiff::SignedDuration) -> Elector {
        self.wall_offset = offset;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn what(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self) -> anyhow::Result<Option<Lease>> {
        match self.api.get(&self.name).await {
            Ok(l) => Ok(Some(l)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {}", self.what(), brief(&e))),
        }
    }

    fn duration_seconds(&self) -> i32 {
        self.duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// Look at the Lease and act on [`lease_decision`]: create, take over, renew or wait.
    pub async fn try_lead(&self) -> anyhow::Result<Role> {
        let lease = self.read().await?;
        let read_at = Instant::now();
        let view = lease.as_ref().map(LeaseView::from_lease);
        let (my_term, unchanged_for) = {
            let mut seen = self.seen();
            if seen.record != view || seen.since.is_none() {
                seen.record = view.clone();
                seen.since = Some(read_at);
            }
            let since = seen.since.unwrap_or(read_at);
            (seen.term, read_at.saturating_duration_since(since))
        };
        let wall = Timestamp::now()
            .checked_add(self.wall_offset)
            .unwrap_or_else(|_| Timestamp::now());
        let pp = PostParams::default();
        let lost = |holder: Option<String>| {
            self.seen().term = None;
            Ok(Role::Follower {
                holder,
                remaining: None,
            })
        };
        let decision = lease_decision(view.as_ref(), &self.identity, my_term, unchanged_for);
        // The term is counted from before the write is sent: the holder's count never ends
        // later than a waiting candidate's, which starts when it reads the written record.
        let sent_at = Instant::now();
        let until = sent_at + self.duration;
        match decision {
            Decision::Wait { holder, remaining } => {
                self.seen().term = None;
                Ok(Role::Follower {
                    holder: Some(holder),
                    remaining: Some(remaining),
                })
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: Some(MicroTime(wall)),
                        renew_time: Some(MicroTime(wall)),
                        lease_transitions: Some(1),
                        ..Default::default()
                    }),
                };
                match self.api.create(&pp, &lease).await {
                    Ok(_) => {
                        self.seen().term = Some(1);
                        Ok(Role::Leader { term: 1, until })
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => lost(None),
                    Err(e) => Err(anyhow::anyhow!("creating {}: {}", self.what(), brief(&e))),
                }
            }
            d @ (Decision::Acquire | Decision::Renew) => {
                let Some(mut lease) = lease else {
                    anyhow::bail!("deciding about {}: no Lease to {d:?}", self.what());
                };
                let spec = lease.spec.get_or_insert_with(Default::default);
                let mut term = i64::from(spec.lease_transitions.unwrap_or(0).max(0));
                if d == Decision::Acquire {
                    term += 1;
                    spec.acquire_time = Some(MicroTime(wall));
                    spec.lease_transitions = Some(i32::try_from(term).unwrap_or(i32::MAX));
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.renew_time = Some(MicroTime(wall));
                // `lease.metadata.resourceVersion` is the one read: the replace is conditional.
                match self.api.replace(&self.name, &pp, &lease).await {
                    Ok(_) => {
                        self.seen().term = Some(term);
                        Ok(Role::Leader { term, until })
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => lost(None),
                    Err(e) => {
                        let verb = if d == Decision::Renew {
                            "renewing"
                        } else {
                            "acquiring"
                        };
                        Err(anyhow::anyhow!("{verb} {}: {}", self.what(), brief(&e)))
                    }
                }
            }
        }
    }

    /// Forget the term held (after it was lost by other means, e.g. a newer term in the
    /// ledger): the next look takes the Lease over anew rather than renewing.
    pub fn forget_term(&self) {
        self.seen().term = None;
    }

    /// Release the Lease if this process holds it. Returns whether it did.
    pub async fn step_down(&self) -> anyhow::Result<bool> {
        let Some(term) = self.seen().term.take() else {
            return Ok(false);
        };
        let Some(mut lease) = self.read().await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str())
            || i64::from(spec.lease_transitions.unwrap_or(0)) != term
        {
            return Ok(false);
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone wrote it meanwhile: then it is no longer simply ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(anyhow::anyhow!("releasing {}: {}", self.what(), brief(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held(by: &str, transitions: i64) -> LeaseView {
        LeaseView {
            holder: Some(by.into()),
            renew_time: Some("2024-03-01T10:00:00Z".parse().unwrap()),
            duration: Some(D),
            transitions,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(lease_decision(None, "a", None, secs(0)), Decision::Create);
    }

    #[test]
    fn a_lease_of_another_is_waited_for_while_its_record_is_younger_than_its_duration() {
        let l = held("b", 3);
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(0)),
            Decision::Wait {
                holder: "b".into(),
                remaining: D
            }
        );
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(15)),
            Decision::Wait {
                holder: "b".into(),
                remaining: secs(0)
            }
        );
    }

    #[test]
    fn a_record_unchanged_for_longer_than_the_duration_is_taken_over() {
        let l = held("b", 3);
        assert_eq!(
            lease_decision(Some(&l), "a", None, D + Duration::from_millis(1)),
            Decision::Acquire
        );
    }

    #[test]
    fn the_wall_clock_in_the_record_plays_no_part() {
        // A renewTime far in the past or the future changes nothing: only how long this
        // process has seen the same record counts.
        for renewed in ["1999-01-01T00:00:00Z", "2099-01-01T00:00:00Z"] {
            let mut l = held("b", 3);
            l.renew_time = Some(renewed.parse().unwrap());
            assert!(matches!(
                lease_decision(Some(&l), "a", None, secs(1)),
                Decision::Wait { .. }
            ));
            assert_eq!(
                lease_decision(Some(&l), "a", None, secs(16)),
                Decision::Acquire
            );
        }
    }

    #[test]
    fn own_holding_is_renewed_only_in_the_term_this_process_took() {
        let l = held("a", 4);
        assert_eq!(
            lease_decision(Some(&l), "a", Some(4), secs(100)),
            Decision::Renew
        );
        // A restarted process with the same identity, or one whose term was taken over and
        // given back to the same name: a new term.
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(0)),
            Decision::Acquire
        );
        assert_eq!(
            lease_decision(Some(&l), "a", Some(3), secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut l = held("b", 2);
        l.holder = None;
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_without_a_duration_counts_as_expired() {
        let mut l = held("b", 2);
        l.duration = None;
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(0)),
            Decision::Acquire
        );
        l.duration = Some(Duration::ZERO);
        assert_eq!(
            lease_decision(Some(&l), "a", None, secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn the_view_reads_an_empty_holder_as_free_and_falls_back_to_acquire_time() {
        let t: Timestamp = "2024-03-01T10:00:00Z".parse().unwrap();
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                acquire_time: Some(MicroTime(t)),
                lease_duration_seconds: Some(10),
                lease_transitions: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = LeaseView::from_lease(&lease);
        assert_eq!(v.holder, None);
        assert_eq!(v.renew_time, Some(t));
        assert_eq!(v.transitions, 7);
    }
}
