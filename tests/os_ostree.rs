//! The plain OSTree backend against the real `ostree` command, on sysroots in temporary
//! directories (never the host's own). Needs Debian's `ostree` package.

mod ostree_host;

use std::fs;

use housekeeper::image_ref::{ImagePolicy, ImageRef};
use housekeeper::os::ostree::Ostree;
use housekeeper::os::{Backend, OsError};
use ostree_host::{ostree, read, Host, OS};

#[test]
fn stage_keeps_the_current_system_as_the_next_boot() {
    let host = Host::new().allowing_unverified();
    let v2 = host.commit_upstream("2");
    let staged = host.backend.stage(&host.target()).unwrap();
    assert_eq!(staged, v2);
    assert_eq!(host.versions(), ["1", "2(staged)"]);
    let all = host.backend.status().unwrap();
    let d = all.staged().unwrap();
    assert!(d.finalization_locked);
    assert_eq!(d.origin.as_deref(), Some("upstream:testos/x86_64/stable"));
    // The boot loader's default entry still starts v1.
    assert_eq!(read(&host.default_etc().join("motd")), "testos 1\n");

    // Staging again changes nothing.
    assert_eq!(host.backend.stage(&host.target()).unwrap(), v2);
    assert_eq!(host.versions(), ["1", "2(staged)"]);
}

#[test]
fn finalize_makes_the_target_default_and_carries_etc_changed_after_staging() {
    let host = Host::new().allowing_unverified();
    let v2 = host.commit_upstream("2");
    host.backend.stage(&host.target()).unwrap();
    fs::write(
        host.default_etc().join("site.conf"),
        "changed after staging\n",
    )
    .unwrap();

    host.backend.finalize(&v2).unwrap();
    assert_eq!(host.versions(), ["2", "1"]);
    assert_eq!(read(&host.default_etc().join("motd")), "testos 2\n");
    assert_eq!(
        read(&host.default_etc().join("site.conf")),
        "changed after staging\n"
    );
    let all = host.backend.status().unwrap();
    assert_eq!(
        all.default_deployment().unwrap().origin.as_deref(),
        Some("upstream:testos/x86_64/stable")
    );

    // A repeat (after a crash) is a no-op.
    host.backend.finalize(&v2).unwrap();
    assert_eq!(host.versions(), ["2", "1"]);
}

#[test]
fn rollback_makes_the_previous_deployment_default_and_cleanup_tidies() {
    let host = Host::new().allowing_unverified();
    let v2 = host.commit_upstream("2");
    host.backend.stage(&host.target()).unwrap();
    host.backend.finalize(&v2).unwrap();

    host.backend.rollback().unwrap();
    assert_eq!(host.versions(), ["1", "2", "1"]);
    assert_eq!(read(&host.default_etc().join("motd")), "testos 1\n");

    host.backend.cleanup().unwrap();
    assert_eq!(host.versions(), ["1", "2"]);
}

#[test]
fn cleanup_keeps_pinned_deployments() {
    let host = Host::new().allowing_unverified();
    for v in ["2", "3"] {
        let sum = host.commit_upstream(v);
        host.backend.stage(&host.target()).unwrap();
        host.backend.finalize(&sum).unwrap();
    }
    assert_eq!(host.versions(), ["3", "2", "1"]);
    ostree(&[
        "admin",
        "pin",
        &format!("--sysroot={}", host.backend.sysroot.display()),
        "2",
    ]);
    host.backend.cleanup().unwrap();
    assert_eq!(
        host.versions(),
        ["3", "2", "1"],
        "a pinned deployment was removed"
    );
    ostree(&[
        "admin",
        "pin",
        "--unpin",
        &format!("--sysroot={}", host.backend.sysroot.display()),
        "2",
    ]);
    host.backend.cleanup().unwrap();
    assert_eq!(host.versions(), ["3", "2"]);
}

#[test]
fn unstage_removes_only_the_staged_deployment() {
    let host = Host::new().allowing_unverified();
    host.commit_upstream("2");
    host.backend.stage(&host.target()).unwrap();
    host.backend.unstage().unwrap();
    assert_eq!(host.versions(), ["1"]);
    host.backend.unstage().unwrap();
    assert_eq!(host.versions(), ["1"]);
}

#[test]
fn a_staged_deployment_replaced_by_someone_else_is_not_finalized() {
    let host = Host::new().allowing_unverified();
    let v2 = host.commit_upstream("2");
    host.backend.stage(&host.target()).unwrap();
    let v3 = host.commit_upstream("3");
    host.backend.stage(&host.target()).unwrap(); // someone else stages v3 over it
    let err = host.backend.finalize(&v2).unwrap_err();
    assert!(matches!(err, OsError::State(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("the staged deployment is {v3}")),
        "{err}"
    );
    assert_eq!(host.versions(), ["1", "3(staged)"]);
}

#[test]
fn a_remote_that_verifies_nothing_is_refused_by_default() {
    let host = Host::new();
    host.commit_upstream("2");
    let err = host.backend.stage(&host.target()).unwrap_err().to_string();
    assert!(
        err.contains("remote upstream verifies nothing (gpg-verify=false)"),
        "{err}"
    );
    assert!(err.contains("os.allow_unverified_images = true"), "{err}");
    assert_eq!(host.versions(), ["1"]);
}

#[test]
fn a_missing_branch_or_container_image_is_a_clear_error_and_changes_nothing() {
    let host = Host::new().allowing_unverified();
    let missing =
        ImageRef::parse("upstream:testos/x86_64/nope", ImagePolicy::ALLOW_UNVERIFIED).unwrap();
    let err = host.backend.stage(&missing).unwrap_err();
    assert!(matches!(err, OsError::NotFound(_)), "{err}");
    let container = ImageRef::parse(
        "ostree-image-signed:docker://registry.example/os:1",
        ImagePolicy::STRICT,
    )
    .unwrap();
    let err = host.backend.stage(&container).unwrap_err().to_string();
    assert!(err.contains("cannot deploy container images"), "{err}");
    let absent = ImageRef::parse(&"0".repeat(64), ImagePolicy::STRICT).unwrap();
    assert!(matches!(
        host.backend.stage(&absent),
        Err(OsError::NotFound(_))
    ));
    assert_eq!(host.versions(), ["1"]);
}

#[test]
fn a_sysroot_that_is_not_one_is_reported_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Ostree {
        sysroot: dir.path().to_owned(),
        osname: OS.into(),
        run_dir: dir.path().join("run"),
        policy: ImagePolicy::STRICT,
    };
    let err = backend.status().unwrap_err();
    assert!(matches!(err, OsError::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("reading OSTree deployments: `ostree admin status --sysroot="),
        "{err}"
    );
}

#[test]
fn a_full_disk_fails_staging_with_a_clear_error_and_changes_nothing() {
    let host = Host::with_small_disk(48).allowing_unverified();
    host.commit_upstream_with(ostree_host::BRANCH, "2", 64);
    let err = host.backend.stage(&host.target()).unwrap_err().to_string();
    assert!(
        err.starts_with("not enough free space in the sysroot"),
        "{err}"
    );
    assert_eq!(host.versions(), ["1"]);
    assert!(host.backend.status().unwrap().staged().is_none());
}
