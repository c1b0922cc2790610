//! Leader election for the coordinator through a `coordination.k8s.io/v1` Lease.
//!
//! Every hkd runs a coordinator; the one holding the Lease acts, the others wait. The decision
//! is [`lease_decision`], pure; [`Elector`] reads the Lease, asks it, and writes.
//!
//! Expected flow: [`Elector::try_lead`] every `renew_every` (a holder renews, others look
//! again when the holder's term would end) → act while [`Role::Leader`]'s `until` is in the
//! future → [`Elector::step_down`] before the node drains or hkd stops.
//!
//! Guarantees:
//! - every write carries the resourceVersion the decision was made on: of two coordinators
//!   racing for a free or expired Lease, one write wins and the other gets 409 and stays a
//!   follower (creating a Lease that exists is 409 as well);
//! - a Lease is taken over only when free (no holder) or expired
//!   (`renewTime + leaseDurationSeconds < now`);
//! - stepping down clears `holderIdentity`, so a successor takes over at its next look instead
//!   of after the whole term.
//!
//! Assumptions: the nodes' clocks agree to well within `leaseDurationSeconds` (expiry compares
//! the holder's `renewTime` with the reader's clock).
//!
//! Caveats: a holder that stalls longer than its term (a stopped process) may still believe it
//! leads when it resumes; the coordinator checks `until` before each write and every grant
//! carries a resourceVersion precondition, which bounds but does not exclude such a write.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::events::brief;

/// The Lease's name in the coordinator's namespace.
pub const LEASE_NAME: &str = "housekeeper-coordinator";

/// What the decision needs from a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// `None` (or empty in the object): nobody holds it.
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    pub duration: Option<Duration>,
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
        }
    }

    /// When the holder's term ends; a Lease without renewTime or duration has no term left.
    pub fn expires(&self) -> Option<Timestamp> {
        let renewed = self.renew_time?;
        let d = SignedDuration::try_from(self.duration?).ok()?;
        renewed.checked_add(d).ok()
    }
}

/// What a coordinator does about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// Free or expired: take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it until `until`: look again then.
    Wait { holder: String, until: Timestamp },
}

/// Decide about the Lease. Pure: `now` is given.
pub fn lease_decision(lease: Option<&LeaseView>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match (&lease.holder, lease.expires()) {
        (None, _) => Decision::Acquire,
        (Some(h), _) if h == me => Decision::Renew,
        (Some(h), Some(until)) if until >= now => Decision::Wait {
            holder: h.clone(),
            until,
        },
        // Expired, or without a term at all (as client-go reads it: a zero duration).
        (Some(_), _) => Decision::Acquire,
    }
}

/// Where this coordinator stands after a look at the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the Lease until `until` unless it renews.
    Leader { until: Timestamp },
    /// Someone else holds it (`holder`, when known); look again at `until`, or soon when `None`
    /// (a race just lost: the winner's Lease is re-read at the next look).
    Follower {
        holder: Option<String>,
        until: Option<Timestamp>,
    },
}

/// The thin side: reads and writes the Lease for one identity.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
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
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn what(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
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
    pub async fn try_lead(&self, now: Timestamp) -> anyhow::Result<Role> {
        let lease = self.read().await?;
        let view = lease.as_ref().map(LeaseView::from_lease);
        let until = now
            .checked_add(SignedDuration::from_secs(i64::from(
                self.duration_seconds(),
            )))
            .unwrap_or(now);
        let pp = PostParams::default();
        let lost = |holder: Option<String>| {
            Ok(Role::Follower {
                holder,
                until: None,
            })
        };
        match lease_decision(view.as_ref(), &self.identity, now) {
            Decision::Wait { holder, until } => Ok(Role::Follower {
                holder: Some(holder),
                until: Some(until),
            }),
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
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&pp, &lease).await {
                    Ok(_) => Ok(Role::Leader { until }),
                    Err(kube::Error::Api(s)) if s.code == 409 => lost(None),
                    Err(e) => Err(anyhow::anyhow!("creating {}: {}", self.what(), brief(&e))),
                }
            }
            d @ (Decision::Acquire | Decision::Renew) => {
                let Some(mut lease) = lease else {
                    anyhow::bail!("deciding about {}: no Lease to {d:?}", self.what());
                };
                let previous = view.and_then(|v| v.holder);
                let spec = lease.spec.get_or_insert_with(Default::default);
                if d == Decision::Acquire {
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(
                        spec.lease_transitions.unwrap_or(0)
                            + i32::from(previous.is_some_and(|p| p != self.identity)),
                    );
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.renew_time = Some(MicroTime(now));
                // `lease.metadata.resourceVersion` is the one read: the replace is conditional.
                match self.api.replace(&self.name, &pp, &lease).await {
                    Ok(_) => Ok(Role::Leader { until }),
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

    /// Release the Lease if this identity holds it. Returns whether it did.
    pub async fn step_down(&self) -> anyhow::Result<bool> {
        let Some(mut lease) = self.read().await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
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

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn held(by: &str, renewed: &str, secs: u64) -> LeaseView {
        LeaseView {
            holder: Some(by.into()),
            renew_time: Some(t(renewed)),
            duration: Some(Duration::from_secs(secs)),
        }
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(
            lease_decision(None, "a", t("2024-03-01T10:00:00Z")),
            Decision::Create
        );
    }

    #[test]
    fn a_valid_lease_of_another_is_waited_for_until_its_term_ends() {
        let l = held("b", "2024-03-01T10:00:00Z", 15);
        for now in ["2024-03-01T10:00:00Z", "2024-03-01T10:00:15Z"] {
            assert_eq!(
                lease_decision(Some(&l), "a", t(now)),
                Decision::Wait {
                    holder: "b".into(),
                    until: t("2024-03-01T10:00:15Z")
                },
                "{now}"
            );
        }
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let l = held("b", "2024-03-01T10:00:00Z", 15);
        assert_eq!(
            lease_decision(Some(&l), "a", t("2024-03-01T10:00:15.001Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed_even_when_expired() {
        let l = held("a", "2024-03-01T10:00:00Z", 15);
        for now in ["2024-03-01T10:00:01Z", "2024-03-01T11:00:00Z"] {
            assert_eq!(lease_decision(Some(&l), "a", t(now)), Decision::Renew);
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut l = held("b", "2024-03-01T10:00:00Z", 15);
        l.holder = None;
        assert_eq!(
            lease_decision(Some(&l), "a", t("2024-03-01T10:00:01Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_without_a_term_counts_as_expired() {
        let mut l = held("b", "2024-03-01T10:00:00Z", 15);
        l.duration = None;
        assert_eq!(
            lease_decision(Some(&l), "a", t("2024-03-01T10:00:01Z")),
            Decision::Acquire
        );
        let mut l = held("b", "2024-03-01T10:00:00Z", 15);
        l.renew_time = None;
        assert_eq!(
            lease_decision(Some(&l), "a", t("2024-03-01T10:00:01Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn the_view_reads_an_empty_holder_as_free_and_falls_back_to_acquire_time() {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                acquire_time: Some(MicroTime(t("2024-03-01T10:00:00Z"))),
                lease_duration_seconds: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = LeaseView::from_lease(&lease);
        assert_eq!(v.holder, None);
        assert_eq!(v.expires(), Some(t("2024-03-01T10:00:10Z")));
    }
}
