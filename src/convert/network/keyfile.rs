//! NetworkManager keyfiles for the new system: rendered from the captured model, or carried
//! over from the running machine's own NetworkManager.
//!
//! Every Ethernet connection is matched by MAC (`[ethernet] mac-address=`), never by device
//! name: NestOS may name the NIC differently (eth0 → ens3). An existing keyfile that names
//! its device (`interface-name=eth0`) is re-keyed: the name goes, the MAC of that device comes.
//! Interfaces that no existing keyfile covers (NetworkManager not running, ifcfg files, an
//! unsaved "Wired connection 1") are rendered from the kernel's view. Keyfiles carry secrets
//! (Wi-Fi and VPN passwords): they are written 0600 by the Ignition renderer and never logged.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Capture, Family, Interface, Method};

/// Where NetworkManager keeps its persistent connections (relative to the root).
pub const KEYFILE_DIR: &str = "etc/NetworkManager/system-connections";

/// File names NetworkManager itself skips in its keyfile directory.
const IGNORED_SUFFIXES: &[&str] = &["~", ".bak", ".orig", ".rej", ".swp", ".tmp"];

/// The keyfiles to write, and what was decided on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyfiles {
    /// File name (no directory) and contents.
    pub files: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// A stable UUID for a MAC, so that re-running the capture gives the same keyfile.
fn uuid_for(mac: &str) -> String {
    let hash = Sha256::digest(format!("x2nestos carried connection {mac}").as_bytes());
    let mut b: [u8; 16] = hash[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x50; // version 5-shaped: name-based
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The file name a rendered connection gets.
pub fn file_name(mac: &str) -> String {
    format!("carried-{}.nmconnection", mac.replace(':', "-"))
}

fn write_family(out: &mut String, section: &str, family: &Family, search: &[String], v6: bool) {
    let _ = writeln!(out, "\n[{section}]");
    let _ = writeln!(out, "method={}", family.method.keyfile_word());
    if v6 && family.method != Method::Disabled {
        // The kernel's own choice, so the link-local address (and SLAAC addresses) stay the same.
        out.push_str("addr-gen-mode=eui64\n");
    }
    for (n, a) in family.addresses.iter().enumerate() {
        let _ = writeln!(out, "address{}={}/{}", n + 1, a.ip, a.prefix);
    }
    if let Some(gateway) = family.gateway {
        let _ = writeln!(out, "gateway={gateway}");
    }
    if let Some(metric) = family.gateway_metric {
        let _ = writeln!(out, "route-metric={metric}");
    }
    for (n, r) in family.routes.iter().enumerate() {
        let unspecified = if v6 { "::" } else { "0.0.0.0" };
        let _ = write!(out, "route{}={}/{}", n + 1, r.dst, r.prefix);
        match (r.via, r.metric) {
            (Some(via), Some(metric)) => {
                let _ = write!(out, ",{via},{metric}");
            }
            (Some(via), None) => {
                let _ = write!(out, ",{via}");
            }
            (None, Some(metric)) => {
                let _ = write!(out, ",{unspecified},{metric}");
            }
            (None, None) => {}
        }
        out.push('\n');
    }
    if !family.dns.is_empty() {
        out.push_str("dns=");
        for server in &family.dns {
            let _ = write!(out, "{server};");
        }
        out.push('\n');
    }
    if !search.is_empty() && (!family.dns.is_empty() || !v6) {
        out.push_str("dns-search=");
        for domain in search {
            let _ = write!(out, "{domain};");
        }
        out.push('\n');
    }
}

/// One interface as a keyfile: (file name, contents).
pub fn render_interface(iface: &Interface) -> (String, String) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# carried over by x2nestos from {} ({})",
        iface.name, iface.mac
    );
    out.push_str("[connection]\n");
    let _ = writeln!(out, "id={}", iface.name);
    let _ = writeln!(out, "uuid={}", uuid_for(&iface.mac));
    out.push_str("type=ethernet\nautoconnect=true\n");
    out.push_str("\n[ethernet]\n");
    let _ = writeln!(out, "mac-address={}", iface.mac.to_ascii_uppercase());
    if let Some(mtu) = iface.mtu {
        let _ = writeln!(out, "mtu={mtu}");
    }
    // Search domains go with IPv4 unless the interface has only IPv6 DNS.
    let v4_search = if iface.ipv4.dns.is_empty() && !iface.ipv6.dns.is_empty() {
        &[][..]
    } else {
        &iface.search[..]
    };
    let v6_search = if v4_search.is_empty() {
        &iface.search[..]
    } else {
        &[][..]
    };
    write_family(&mut out, "ipv4", &iface.ipv4, v4_search, false);
    write_family(&mut out, "ipv6", &iface.ipv6, v6_search, true);
    (file_name(&iface.mac), out)
}

/// A keyfile as sections of lines, edited in place so comments and order survive.
struct Ini {
    lines: Vec<String>,
}

impl Ini {
    fn parse(text: &str) -> Ini {
        Ini {
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    fn section_of(&self, index: usize) -> Option<&str> {
        self.lines[..=index]
            .iter()
            .rev()
            .find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'))
    }

    /// Index of `key=` in the first of `sections`.
    fn find(&self, sections: &[&str], key: &str) -> Option<usize> {
        (0..self.lines.len()).find(|&i| {
            let line = self.lines[i].trim();
            line.split_once('=').is_some_and(|(k, _)| k.trim() == key)
                && self.section_of(i).is_some_and(|s| sections.contains(&s))
        })
    }

    fn get(&self, sections: &[&str], key: &str) -> Option<String> {
        let i = self.find(sections, key)?;
        Some(self.lines[i].split_once('=')?.1.trim().to_owned())
    }

    fn remove(&mut self, sections: &[&str], key: &str) {
        if let Some(i) = self.find(sections, key) {
            self.lines.remove(i);
        }
    }

    /// Sets `key=value` in the first section named in `sections`, adding the section at the end
    /// when there is none.
    fn set(&mut self, sections: &[&str], key: &str, value: &str) {
        if let Some(i) = self.find(sections, key) {
            self.lines[i] = format!("{key}={value}");
            return;
        }
        let header = self.lines.iter().position(|l| {
            l.trim()
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|s| sections.contains(&s))
        });
        match header {
            Some(i) => self.lines.insert(i + 1, format!("{key}={value}")),
            None => {
                if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    self.lines.push(String::new());
                }
                self.lines.push(format!("[{}]", sections[0]));
                self.lines.push(format!("{key}={value}"));
            }
        }
    }

    fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

const CONNECTION: &[&str] = &["connection"];
const ETHERNET: &[&str] = &["ethernet", "802-3-ethernet"];

fn normalize_mac(mac: &str) -> String {
    mac.trim().to_ascii_lowercase().replace('-', ":")
}

/// The keyfiles for the new system.
///
/// `existing` is the running machine's keyfile directory when NetworkManager runs there
/// (`None` otherwise): those connections are carried over, Ethernet ones re-keyed by MAC.
/// Every carried interface that no existing keyfile covers is rendered from `capture`.
pub fn keyfiles(capture: &Capture, existing: Option<&[(String, String)]>) -> Keyfiles {
    let mut out = Keyfiles::default();
    let mut covered: Vec<String> = Vec::new();
    for (name, text) in existing.unwrap_or_default() {
        let mut ini = Ini::parse(text);
        let kind = ini.get(CONNECTION, "type").unwrap_or_default();
        let ethernet = kind == "ethernet" || kind == "802-3-ethernet";
        let by_name = ini.get(CONNECTION, "interface-name");
        let by_mac = ini.get(ETHERNET, "mac-address").map(|m| normalize_mac(&m));
        if ethernet {
            match (&by_mac, &by_name) {
                (Some(mac), by_name) => {
                    if let Some(iface) = capture.interfaces.iter().find(|i| &i.mac == mac) {
                        covered.push(iface.mac.clone());
                    }
                    if let Some(device) = by_name {
                        // Both must match for NetworkManager; the name may change.
                        ini.remove(CONNECTION, "interface-name");
                        out.notes.push(format!(
                            "keyfile {name}: matched by MAC {mac}; interface-name={device} dropped (device names may change)"
                        ));
                    }
                }
                (None, Some(device)) => {
                    match capture.interfaces.iter().find(|i| &i.name == device) {
                        Some(iface) => {
                            ini.remove(CONNECTION, "interface-name");
                            ini.set(ETHERNET, "mac-address", &iface.mac.to_ascii_uppercase());
                            covered.push(iface.mac.clone());
                            out.notes.push(format!(
                                "keyfile {name}: matched {device} by name; re-keyed by MAC {}",
                                iface.mac
                            ));
                        }
                        None => out.notes.push(format!(
                            "keyfile {name}: names device {device}, which is not carried; kept unchanged"
                        )),
                    }
                }
                (None, None) => out.notes.push(format!(
                    "keyfile {name}: matches any Ethernet device; kept unchanged"
                )),
            }
        }
        out.files.push((name.clone(), ini.text()));
    }
    for iface in &capture.interfaces {
        if covered.contains(&iface.mac) {
            continue;
        }
        if existing.is_some() {
            out.notes.push(format!(
                "{} ({}): no NetworkManager keyfile; written from the kernel's addresses and routes",
                iface.name, iface.mac
            ));
        }
        out.files.push(render_interface(iface));
    }
    out
}

/// The running machine's keyfiles, when NetworkManager runs there (its runtime directory
/// exists); `None` otherwise.
pub fn read_existing(root: &Path) -> std::io::Result<Option<Vec<(String, String)>>> {
    if !root.join("run/NetworkManager").is_dir() {
        return Ok(None);
    }
    let dir = root.join(KEYFILE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("listing {}: {e}", dir.display()),
            ))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        if !entry.file_type()?.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading {}: {e}", entry.path().display()))
        })?;
        files.push((name, text));
    }
    files.sort();
    Ok(Some(files))
}
