//! Key material for the test cluster, made with the `openssl` command (Debian's `openssl`).
//!
//! A throw-away CA, a serving certificate for kube-apiserver (valid for two days), and the
//! service-account signing key pair. The serving certificate names 127.0.0.1 and localhost, and
//! also 10.0.2.2: the address under which QEMU's user-mode network shows this host's loopback to
//! a guest, so hkd inside a VM (vm-tests) verifies the same server. ECDSA P-256 for the TLS
//! keys (fast to make, accepted by Go and rustls); RSA for the service-account key, which every
//! Kubernetes version accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// This host's loopback as a QEMU guest on a user-mode network reaches it.
pub const QEMU_HOST_IP: &str = "10.0.2.2";

pub struct Certs {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

/// Fails with an install hint when the `openssl` command is missing.
pub fn check_openssl() -> Result<()> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!(
            "the `openssl` command is missing: run tests/kube/build-kube.sh or apt-get install openssl"
        ),
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Make all key material in `dir`.
pub fn generate(dir: &Path) -> Result<Certs> {
    check_openssl()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=housekeeper-test-ca",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ]);
    openssl(dir, &ca)?;

    let mut csr = vec!["req", "-new", "-subj", "/CN=kube-apiserver"];
    csr.extend(ec);
    csr.extend(["-keyout", "apiserver.key", "-out", "apiserver.csr"]);
    openssl(dir, &csr)?;
    std::fs::write(
        dir.join("apiserver.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{QEMU_HOST_IP}\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
        ],
    )?;

    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;

    Ok(Certs {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    })
}
