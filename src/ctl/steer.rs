//! `hkctl pause`, `resume` and `abort`: one merge patch on the Update's spec each. The
//! coordinator reacts on its watch: no new grants while paused or aborted; nodes already
//! granted finish (or, on `abort --in-flight roll-back`, those not yet rebooted withdraw).

use std::io::Write;

use anyhow::{bail, Result};
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::Ctx;
use crate::cluster::update::{InFlight, Update};

/// What an admin asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    Abort(InFlight),
}

/// The spec patch for `steer` on `u`, or why there is nothing to do (`Ok(None)`: already so)
/// or it cannot be done (`Err`).
pub fn decide(u: &Update, steer: Steer) -> Result<Option<serde_json::Value>, String> {
    let ns = u.namespace().unwrap_or_default();
    let name = u.name_any();
    match steer {
        Steer::Pause if u.spec.paused => Ok(None),
        Steer::Pause => Ok(Some(json!({"spec": {"paused": true}}))),
        Steer::Resume if u.spec.abort.is_some() => Err(format!(
            "Update {ns}/{name} was aborted, and an aborted rollout does not resume: start it \
             again with hkctl upgrade --update {name} --image REF"
        )),
        Steer::Resume if !u.spec.paused => Ok(None),
        Steer::Resume => Ok(Some(json!({"spec": {"paused": false}}))),
        Steer::Abort(f) if u.spec.abort.as_ref().is_some_and(|a| a.in_flight == f) => Ok(None),
        Steer::Abort(f) => Ok(Some(json!({"spec": {"abort": {"inFlight": f}}}))),
    }
}

fn in_flight(u: &Update) -> i32 {
    u.status.as_ref().map_or(0, |s| s.counts.in_flight)
}

/// Apply `steer` to the Update and say what follows from it.
pub async fn steer(ctx: &Ctx, name: Option<&str>, steer: Steer, out: &mut dyn Write) -> Result<()> {
    let u = ctx.pick_update(name).await?;
    let what = format!("Update {}/{}", ctx.namespace, u.name_any());
    let patch = match decide(&u, steer) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let state = match steer {
                Steer::Pause => "paused",
                Steer::Resume => "running (not paused)",
                Steer::Abort(_) => "aborted that way",
            };
            writeln!(out, "{what} is already {state}; nothing changed")?;
            return Ok(());
        }
        Err(e) => bail!("{e}"),
    };
    let u = ctx
        .updates()
        .patch(
            &u.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| ctx.fail(&format!("changing {what}"), e))?;
    let n = in_flight(&u);
    let line = match steer {
        Steer::Pause => format!("{what} paused: no new grants; {n} node(s) in flight finish"),
        Steer::Resume => format!("{what} resumed: the coordinator grants again"),
        Steer::Abort(InFlight::Finish) => {
            format!("{what} aborted: no new grants, ever; {n} node(s) in flight finish")
        }
        Steer::Abort(InFlight::RollBack) => format!(
            "{what} aborted: no new grants, ever; of {n} node(s) in flight, those not yet \
             rebooted withdraw, the others finish"
        ),
    };
    writeln!(out, "{line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(spec: serde_json::Value) -> Update {
        let mut u = Update::new("os", serde_json::from_value(spec).unwrap());
        u.metadata.namespace = Some("ns".into());
        u
    }

    #[test]
    fn each_steer_patches_once_and_then_is_a_no_op() {
        let running = update(json!({"osImageURL": "x"}));
        let paused = update(json!({"osImageURL": "x", "paused": true}));
        let aborted = update(json!({"osImageURL": "x", "paused": true, "abort": {}}));
        assert_eq!(
            decide(&running, Steer::Pause),
            Ok(Some(json!({"spec": {"paused": true}})))
        );
        assert_eq!(decide(&paused, Steer::Pause), Ok(None));
        assert_eq!(
            decide(&paused, Steer::Resume),
            Ok(Some(json!({"spec": {"paused": false}})))
        );
        assert_eq!(decide(&running, Steer::Resume), Ok(None));
        assert_eq!(
            decide(&running, Steer::Abort(InFlight::RollBack)),
            Ok(Some(json!({"spec": {"abort": {"inFlight": "rollBack"}}})))
        );
        assert_eq!(decide(&aborted, Steer::Abort(InFlight::Finish)), Ok(None));
        assert!(decide(&aborted, Steer::Abort(InFlight::RollBack))
            .unwrap()
            .is_some());
        let e = decide(&aborted, Steer::Resume).unwrap_err();
        assert!(
            e.contains("does not resume") && e.contains("hkctl upgrade"),
            "{e}"
        );
    }
}
