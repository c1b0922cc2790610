//! The images scenarios boot, built (or found in the cache) by vm-tests/images/build.sh.
//!
//! Each test process asks for the images it needs once; the script is cheap when its cache is
//! warm and takes a lock, so tests running side by side wait for one build instead of racing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

/// The repository this test binary was built from.
pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where scenarios keep their disks and logs: target/tmp/vm-tests/<scenario>/.
pub fn work_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-tests")
}

/// The image cache (same rule as build.sh).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HK_VM_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("housekeeper/vm")
}

/// The plain Debian 12 machine.
#[derive(Debug)]
pub struct Generic {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub disk: PathBuf,
    pub hostname: String,
    pub keys_dir: PathBuf,
}

/// The NestOS-like OSTree test OS.
#[derive(Debug)]
pub struct Testos {
    pub dir: PathBuf,
    /// The metal image as a qcow2 base for overlays.
    pub disk: PathBuf,
    /// The metal image as x2nestos downloads it, and its sha256 file.
    pub metal_xz: PathBuf,
    pub metal_sha256: PathBuf,
    /// The archive-mode OSTree repository the update server serves.
    pub repo: PathBuf,
    pub remote: String,
    pub boot_part_offset: u64,
    pub boot_part_size: u64,
    /// Commit checksums of v1, v2 (good) and v3 (boots, fails the health check).
    pub versions: [String; 3],
    pub keys_dir: PathBuf,
}

fn parse_manifest(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn load_manifest(kind: &str) -> Result<(PathBuf, HashMap<String, String>)> {
    let link = cache_dir().join("current").join(kind);
    let dir = std::fs::canonicalize(&link)
        .with_context(|| format!("image {kind} not built ({})", link.display()))?;
    let path = dir.join("manifest.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((dir, parse_manifest(&text)))
}

fn get<'a>(m: &'a HashMap<String, String>, key: &str) -> Result<&'a str> {
    m.get(key)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("image manifest has no {key}"))
}

/// Runs build.sh for one image kind, its output in a log beside the scenarios' logs.
fn build(kind: &str) -> Result<()> {
    let root = work_root();
    std::fs::create_dir_all(&root)?;
    let log_path = root.join(format!("build-{kind}.log"));
    let log = std::fs::File::create(&log_path)?;
    let script = repo_dir().join("vm-tests/images/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(kind)
        .env("HKD_BIN", env!("CARGO_BIN_EXE_hkd"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "building the {kind} image failed ({status}); log: {}\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

pub fn generic() -> Result<&'static Generic> {
    static CELL: OnceLock<Result<Generic, String>> = OnceLock::new();
    CELL.get_or_init(|| load_generic().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load_generic() -> Result<Generic> {
    build("generic")?;
    let (dir, m) = load_manifest("generic")?;
    Ok(Generic {
        kernel: dir.join(get(&m, "KERNEL")?),
        initrd: dir.join(get(&m, "INITRD")?),
        cmdline: get(&m, "CMDLINE")?.to_string(),
        disk: dir.join(get(&m, "DISK")?),
        hostname: get(&m, "HOSTNAME")?.to_string(),
        keys_dir: cache_dir().join("keys"),
        dir,
    })
}

pub fn testos() -> Result<&'static Testos> {
    static CELL: OnceLock<Result<Testos, String>> = OnceLock::new();
    CELL.get_or_init(|| load_testos().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load_testos() -> Result<Testos> {
    build("testos")?;
    let (dir, m) = load_manifest("testos")?;
    let metal = get(&m, "METAL_XZ")?;
    Ok(Testos {
        disk: dir.join(get(&m, "DISK")?),
        metal_xz: dir.join(metal),
        metal_sha256: dir.join(format!("{metal}.sha256")),
        repo: dir.join(get(&m, "REPO")?),
        remote: get(&m, "REMOTE")?.to_string(),
        boot_part_offset: get(&m, "BOOT_PART_OFFSET")?.parse()?,
        boot_part_size: get(&m, "BOOT_PART_SIZE")?.parse()?,
        versions: [
            get(&m, "V1")?.to_string(),
            get(&m, "V2")?.to_string(),
            get(&m, "V3")?.to_string(),
        ],
        keys_dir: cache_dir().join("keys"),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_split_at_the_first_equals() {
        let m = parse_manifest("CMDLINE=root=LABEL=root rw\nKIND=generic\n");
        assert_eq!(m["CMDLINE"], "root=LABEL=root rw");
        assert_eq!(m["KIND"], "generic");
    }
}
