//! Concurrency per topology domain: beside `maxUnavailable`, at most `maxUnavailablePerZone`
//! nodes out of service per value of a node label (`topologyKey`, by default
//! `topology.kubernetes.io/zone`), and at most `maxUnavailableZones` domains with a node out of
//! service at once. Pure; the planner asks [`ZoneBudget::admit`] before each grant.
//!
//! What counts as out of service is the planner's (see [`super::plan`]): the same nodes that
//! use up `maxUnavailable` use up their domain's limit. A node without the label belongs to no
//! domain: it is never granted while a limit is set (it would escape the limit), and when it
//! is out of service for reasons of its own it counts against `maxUnavailable` only.

use std::collections::BTreeMap;
use std::fmt;

use super::update::UpdateSpec;

/// The topology key when the Update names none.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// The limits an Update asks for; `None` from [`ZoneLimits::from_spec`] when it asks none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneLimits {
    pub key: String,
    pub per_zone: Option<usize>,
    pub zones: Option<usize>,
}

impl ZoneLimits {
    pub fn from_spec(spec: &UpdateSpec) -> Option<ZoneLimits> {
        let limit = |v: Option<i32>| v.map(|v| v.max(1) as usize);
        let (per_zone, zones) = (
            limit(spec.max_unavailable_per_zone),
            limit(spec.max_unavailable_zones),
        );
        (per_zone.is_some() || zones.is_some()).then(|| ZoneLimits {
            key: spec
                .topology_key
                .clone()
                .unwrap_or_else(|| DEFAULT_TOPOLOGY_KEY.to_owned()),
            per_zone,
            zones,
        })
    }
}

/// Why one more node in a domain may not go out of service now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneHold {
    /// The node carries no value of the topology key.
    NoLabel { key: String },
    /// Its domain has `limit` nodes out of service already.
    ZoneFull { zone: String, limit: usize },
    /// `limit` other domains have nodes out of service.
    OtherZonesBusy { busy: Vec<String>, limit: usize },
}

impl fmt::Display for ZoneHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneHold::NoLabel { key } => write!(f, "no label {key}; the zone limits need it"),
            ZoneHold::ZoneFull { zone, limit } => {
                write!(f, "zone {zone} full (maxUnavailablePerZone {limit})")
            }
            ZoneHold::OtherZonesBusy { busy, limit } => write!(
                f,
                "zone(s) {} out of service (maxUnavailableZones {limit})",
                busy.join(", ")
            ),
        }
    }
}

/// Nodes out of service per domain, and what one more would do.
#[derive(Debug, Clone)]
pub struct ZoneBudget<'a> {
    limits: &'a ZoneLimits,
    out: BTreeMap<String, usize>,
}

impl<'a> ZoneBudget<'a> {
    /// `out_of_service`: the domain of each node out of service (`None`: no label).
    pub fn new<'z>(
        limits: &'a ZoneLimits,
        out_of_service: impl IntoIterator<Item = Option<&'z str>>,
    ) -> ZoneBudget<'a> {
        let mut out = BTreeMap::new();
        for zone in out_of_service.into_iter().flatten() {
            *out.entry(zone.to_owned()).or_insert(0) += 1;
        }
        ZoneBudget { limits, out }
    }

    /// Whether a node in `zone` may go out of service now.
    pub fn admit(&self, zone: Option<&str>) -> Result<(), ZoneHold> {
        let Some(zone) = zone else {
            return Err(ZoneHold::NoLabel {
                key: self.limits.key.clone(),
            });
        };
        let here = self.out.get(zone).copied().unwrap_or(0);
        if let Some(limit) = self.limits.per_zone {
            if here >= limit {
                return Err(ZoneHold::ZoneFull {
                    zone: zone.to_owned(),
                    limit,
                });
            }
        }
        if let Some(limit) = self.limits.zones {
            let busy: Vec<String> = self
                .out
                .iter()
                .filter(|(z, n)| **n > 0 && z.as_str() != zone)
                .map(|(z, _)| z.clone())
                .collect();
            // Counted with this zone: other zones already out (even by no grant of ours, a
            // NotReady node) leave no room, not even in a zone that is out already.
            if busy.len() >= limit {
                return Err(ZoneHold::OtherZonesBusy { busy, limit });
            }
        }
        Ok(())
    }

    /// Count one more node of `zone` out of service.
    pub fn take(&mut self, zone: &str) {
        *self.out.entry(zone.to_owned()).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_zone: Option<usize>, zones: Option<usize>) -> ZoneLimits {
        ZoneLimits {
            key: DEFAULT_TOPOLOGY_KEY.into(),
            per_zone,
            zones,
        }
    }

    #[test]
    fn per_zone_limit_counts_each_zone_apart() {
        let l = limits(Some(2), None);
        let mut b = ZoneBudget::new(&l, [Some("a"), Some("a"), Some("b"), None]);
        assert_eq!(
            b.admit(Some("a")),
            Err(ZoneHold::ZoneFull {
                zone: "a".into(),
                limit: 2
            })
        );
        assert_eq!(b.admit(Some("b")), Ok(()));
        b.take("b");
        assert!(b.admit(Some("b")).is_err());
        assert_eq!(b.admit(Some("c")), Ok(()));
        assert_eq!(
            b.admit(None).unwrap_err().to_string(),
            "no label topology.kubernetes.io/zone; the zone limits need it"
        );
    }

    #[test]
    fn one_zone_at_a_time_admits_more_in_the_busy_zone_only() {
        let l = limits(None, Some(1));
        let mut b = ZoneBudget::new(&l, []);
        assert_eq!(b.admit(Some("b")), Ok(()));
        b.take("b");
        assert_eq!(b.admit(Some("b")), Ok(()));
        let e = b.admit(Some("a")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zone(s) b out of service (maxUnavailableZones 1)"
        );
        // Zone a out as well (a node NotReady by itself): no more in b either.
        let b = ZoneBudget::new(&l, [Some("a"), Some("b")]);
        assert!(b.admit(Some("b")).is_err());
        assert!(b.admit(Some("a")).is_err());
    }

    #[test]
    fn no_limit_asked_no_limits() {
        let spec: UpdateSpec =
            serde_json::from_value(serde_json::json!({"osImageURL": "x"})).unwrap();
        assert_eq!(ZoneLimits::from_spec(&spec), None);
        let spec: UpdateSpec = serde_json::from_value(serde_json::json!({
            "osImageURL": "x", "maxUnavailableZones": 1, "topologyKey": "rack"
        }))
        .unwrap();
        assert_eq!(
            ZoneLimits::from_spec(&spec),
            Some(ZoneLimits {
                key: "rack".into(),
                per_zone: None,
                zones: Some(1)
            })
        );
    }
}
