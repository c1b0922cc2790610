//! The running machine's network, captured so that the converted machine comes back on the
//! same addresses.
//!
//! [`capture`] is pure: the text of `ip -json addr`, `ip -json route`, `ip -json -6 route`
//! and resolv.conf in, one [`Interface`] per physical NIC out, keyed by its MAC address
//! (device names may change across the conversion, MACs do not). [`keyfile`] renders the
//! model as NetworkManager keyfiles and carries existing keyfiles over. [`read_host`] runs
//! `ip` and reads resolv.conf; it decides nothing.
//!
//! What is carried, per family: addresses (static ones as they are; DHCP / SLAAC ones only
//! as "ask again", see [`Method`]), the default gateway, static routes, DNS servers and search
//! domains. What is left out, each with a note: loopback, interfaces with no address, links
//! that are not Ethernet, container and overlay plumbing (docker0, veth*, cni*, flannel*,
//! cali*, …), bond/bridge members and VLANs (not carried yet), interfaces sharing a MAC,
//! link-local and temporary (privacy) IPv6 addresses, and routes the kernel or a DHCP/RA
//! client made.

pub mod keyfile;
mod resolv;

pub use resolv::parse_resolv_conf;

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::sys::command::Cmd;

/// Name prefixes of interfaces that container runtimes, CNI plugins and hypervisors create;
/// they are rebuilt by their owners and must not be pinned to a MAC on the new system.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "veth",
    "cni",
    "flannel",
    "cali",
    "vxlan",
    "tunl",
    "kube-",
    "cilium",
    "lxc",
    "virbr",
    "br-",
    "weave",
    "vnet",
    "tap",
    "tun",
    "wg",
    "ifb",
    "dummy",
    "nodelocaldns",
];

/// How a family's addresses are configured on the new system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Addresses written down (`method=manual`).
    Manual,
    /// Ask DHCP / router advertisements again (`method=auto`). A DHCP-assigned address is not
    /// pinned by default: the lease belongs to the DHCP server, which may hand it to another
    /// machine once it expires, and the server gives the same MAC the same address again in
    /// the usual case. [`CaptureOptions::pin_dynamic`] turns them into manual addresses for
    /// networks where nobody will answer the new system.
    Auto,
    /// IPv6 with only a link-local address.
    LinkLocal,
    /// No address of this family.
    Disabled,
}

impl Method {
    pub fn keyfile_word(self) -> &'static str {
        match self {
            Method::Manual => "manual",
            Method::Auto => "auto",
            Method::LinkLocal => "link-local",
            Method::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
    /// Given by DHCP or SLAAC (has a lifetime), rather than configured.
    pub dynamic: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    /// Next hop; `None` for a route straight onto the link.
    pub via: Option<IpAddr>,
    pub metric: Option<u32>,
}

/// One family's settings on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub method: Method,
    pub addresses: Vec<Address>,
    pub gateway: Option<IpAddr>,
    /// Metric of the default route, when the kernel shows one.
    pub gateway_metric: Option<u32>,
    pub routes: Vec<Route>,
    pub dns: Vec<IpAddr>,
}

impl Default for Family {
    fn default() -> Self {
        Family {
            method: Method::Disabled,
            addresses: Vec::new(),
            gateway: None,
            gateway_metric: None,
            routes: Vec::new(),
            dns: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name on the running machine (shown, and used as the connection's id).
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: Option<u32>,
    pub ipv4: Family,
    pub ipv6: Family,
    pub search: Vec<String>,
}

/// An interface that is not carried, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub interfaces: Vec<Interface>,
    pub left_out: Vec<LeftOut>,
    /// Things dropped or decided that the admin should see (routes skipped, DNS stub, …).
    pub notes: Vec<String>,
}

/// The text the capture reads.
#[derive(Debug, Clone, Default)]
pub struct HostText {
    pub addr: String,
    pub route4: String,
    pub route6: String,
    pub resolv_conf: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureOptions {
    /// Write DHCP / SLAAC addresses down as static ones.
    pub pin_dynamic: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("reading the output of `{command}`: {source}")]
    Json {
        command: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Command(#[from] crate::sys::command::CommandError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

// The subset of `ip -json` output that is used.

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    mtu: Option<u32>,
    /// Bond or bridge this link is enslaved to.
    #[serde(default)]
    master: Option<String>,
    /// Lower link of a VLAN / macvlan (`eth0.100@eth0`).
    #[serde(default)]
    link: Option<String>,
    /// Peer lives in another network namespace (a veth into a container).
    #[serde(default)]
    link_netnsid: Option<i64>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: String,
    local: IpAddr,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    dynamic: bool,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    dev: Option<String>,
    /// Absent for `boot` (added by hand or by ifupdown / a static config).
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    metric: Option<u32>,
    /// `unicast` when absent; `unreachable`, `blackhole`, `local`, … otherwise.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    nexthops: Option<serde_json::Value>,
}

fn virtual_reason(link: &IpLink) -> Option<String> {
    if link.link_type == "loopback" {
        return Some("loopback".into());
    }
    if link.link_type != "ether" {
        return Some(format!(
            "a {} link, not Ethernet; not carried",
            if link.link_type.is_empty() {
                "non-Ethernet"
            } else {
                &link.link_type
            }
        ));
    }
    if let Some(prefix) = VIRTUAL_PREFIXES
        .iter()
        .find(|p| link.ifname.starts_with(**p))
    {
        return Some(format!(
            "container or virtual plumbing ({prefix}*); its owner recreates it"
        ));
    }
    if link.link_netnsid.is_some() {
        return Some("a veth pair into another network namespace; its owner recreates it".into());
    }
    if let Some(master) = &link.master {
        return Some(format!(
            "a member of {master}; bonds and bridges are not carried yet, configure them in the admin's Ignition config"
        ));
    }
    if let Some(lower) = &link.link {
        return Some(format!(
            "stacked on {lower} (VLAN or macvlan); not carried yet, configure it in the admin's Ignition config"
        ));
    }
    None
}

/// Parses a route destination: `default`, `a.b.c.d/n`, or a host address.
fn parse_dst(dst: &str, v6: bool) -> Option<(IpAddr, u8)> {
    if dst == "default" {
        let any: IpAddr = if v6 {
            "::".parse().ok()?
        } else {
            "0.0.0.0".parse().ok()?
        };
        return Some((any, 0));
    }
    match dst.split_once('/') {
        Some((ip, prefix)) => Some((ip.parse().ok()?, prefix.parse().ok()?)),
        None => {
            let ip: IpAddr = dst.parse().ok()?;
            Some((ip, if ip.is_ipv6() { 128 } else { 32 }))
        }
    }
}

/// Route protocols that some daemon recreates on the new system by itself.
fn made_by_a_client(protocol: Option<&str>) -> bool {
    matches!(protocol, Some("kernel" | "dhcp" | "ra" | "redirect"))
}

fn json<T: for<'de> Deserialize<'de>>(
    command: &'static str,
    text: &str,
) -> Result<Vec<T>, NetworkError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|source| NetworkError::Json { command, source })
}

/// The model of the running network, from the captured text.
pub fn capture(text: &HostText, options: CaptureOptions) -> Result<Capture, NetworkError> {
    let links: Vec<IpLink> = json("ip -json addr", &text.addr)?;
    let mut out = Capture::default();

    // Several carried interfaces with one MAC (some virtual NICs, cloned MACs) cannot be told
    // apart by MAC on the new system. VLANs and bond members share their parent's MAC but are
    // left out anyway, and NetworkManager matches `[ethernet] mac-address` on Ethernet
    // devices only.
    let mut mac_count = std::collections::HashMap::<String, usize>::new();
    for link in links.iter().filter(|l| virtual_reason(l).is_none()) {
        if let Some(mac) = &link.address {
            *mac_count.entry(mac.to_ascii_lowercase()).or_default() += 1;
        }
    }

    for link in &links {
        let leave = |reason: String| LeftOut {
            name: link.ifname.clone(),
            reason,
        };
        if let Some(reason) = virtual_reason(link) {
            out.left_out.push(leave(reason));
            continue;
        }
        let Some(mac) = link.address.as_deref().map(str::to_ascii_lowercase) else {
            out.left_out
                .push(leave("has no MAC address to match it by".into()));
            continue;
        };
        if mac_count.get(&mac).copied().unwrap_or(0) > 1 {
            out.left_out.push(leave(format!(
                "shares MAC {mac} with another interface; it cannot be matched by MAC"
            )));
            continue;
        }
        let mut iface = Interface {
            name: link.ifname.clone(),
            mac,
            mtu: link.mtu.filter(|&m| m != 1500),
            ipv4: Family::default(),
            ipv6: Family::default(),
            search: Vec::new(),
        };
        let mut has_link_local = false;
        for info in &link.addr_info {
            let family = match info.family.as_str() {
                "inet" => &mut iface.ipv4,
                "inet6" => &mut iface.ipv6,
                _ => continue,
            };
            if info.scope == "link" || info.scope == "host" {
                has_link_local |= info.family == "inet6";
                continue;
            }
            if info.temporary {
                continue; // privacy addresses are regenerated
            }
            family.addresses.push(Address {
                ip: info.local,
                prefix: info.prefixlen,
                dynamic: info.dynamic,
            });
        }
        if iface.ipv4.addresses.is_empty() && iface.ipv6.addresses.is_empty() {
            out.left_out.push(leave(
                "has no address; NestOS's defaults apply to it".into(),
            ));
            continue;
        }
        for family in [&mut iface.ipv4, &mut iface.ipv6] {
            let any_dynamic = family.addresses.iter().any(|a| a.dynamic);
            family.method = if family.addresses.is_empty() {
                Method::Disabled
            } else if any_dynamic && !options.pin_dynamic {
                // Static addresses next to dynamic ones stay, as NetworkManager allows both.
                family.addresses.retain(|a| !a.dynamic);
                Method::Auto
            } else {
                Method::Manual
            };
        }
        if iface.ipv6.method == Method::Disabled && has_link_local {
            iface.ipv6.method = Method::LinkLocal;
        }
        if options.pin_dynamic {
            for a in iface
                .ipv4
                .addresses
                .iter()
                .chain(&iface.ipv6.addresses)
                .filter(|a| a.dynamic)
            {
                out.notes.push(format!(
                    "{}: dynamic address {}/{} pinned as static",
                    iface.name, a.ip, a.prefix
                ));
            }
        }
        out.interfaces.push(iface);
    }

    for (command, text, v6) in [
        ("ip -json route", &text.route4, false),
        ("ip -json -6 route", &text.route6, true),
    ] {
        let routes: Vec<IpRoute> = json(command, text)?;
        for route in routes {
            apply_route(&mut out, &route, v6);
        }
    }

    let (servers, search, notes) = parse_resolv_conf(&text.resolv_conf);
    out.notes.extend(notes);
    assign_dns(&mut out, servers, search);
    Ok(out)
}

fn apply_route(out: &mut Capture, route: &IpRoute, v6: bool) {
    let Some(dev) = route.dev.as_deref() else {
        if route.nexthops.is_some() {
            out.notes.push(format!(
                "route {}: a multipath route; not carried",
                route.dst
            ));
        }
        return;
    };
    let Some(iface) = out.interfaces.iter_mut().find(|i| i.name == dev) else {
        return; // on an interface that is left out
    };
    let name = iface.name.clone();
    let family = if v6 { &mut iface.ipv6 } else { &mut iface.ipv4 };
    if let Some(kind) = route.kind.as_deref().filter(|k| *k != "unicast") {
        out.notes
            .push(format!("{name}: {kind} route {} not carried", route.dst));
        return;
    }
    let Some((dst, prefix)) = parse_dst(&route.dst, v6) else {
        out.notes.push(format!(
            "{name}: route {:?} not understood; not carried",
            route.dst
        ));
        return;
    };
    // The kernel's default metrics (IPv4 0, IPv6 1024) are not worth writing down.
    let metric = route.metric.filter(|&m| m != if v6 { 1024 } else { 0 });
    if made_by_a_client(route.protocol.as_deref()) {
        // It comes back by itself; but the metric of a DHCP / RA default route says which
        // uplink the machine preferred, and NetworkManager's own default would differ.
        if prefix == 0 && family.method == Method::Auto && family.gateway_metric.is_none() {
            family.gateway_metric = metric;
        }
        return;
    }
    if family.method == Method::Auto && route.protocol.is_some() {
        // Installed by a routing daemon (bird, zebra, …) on a DHCP interface: its daemon is
        // not carried, so neither is the route.
        out.notes.push(format!(
            "{name}: route {} from protocol {} not carried",
            route.dst,
            route.protocol.as_deref().unwrap_or_default()
        ));
        return;
    }
    if prefix == 0 {
        if family.gateway.is_none() {
            family.gateway = route.gateway;
            family.gateway_metric = metric;
        }
        return;
    }
    family.routes.push(Route {
        dst,
        prefix,
        via: route.gateway,
        metric,
    });
}

/// NetworkManager takes DNS servers only on a family that has addresses.
fn carries_dns(method: Method) -> bool {
    matches!(method, Method::Manual | Method::Auto)
}

/// DNS goes to the interfaces holding a default route of the server's family (NetworkManager
/// merges per-connection servers); with no default route, to the first carried interface of
/// that family.
fn assign_dns(out: &mut Capture, servers: Vec<IpAddr>, search: Vec<String>) {
    for server in servers {
        let v6 = server.is_ipv6();
        let family = |i: &Interface| if v6 { i.ipv6.clone() } else { i.ipv4.clone() };
        let target = out
            .interfaces
            .iter()
            .position(|i| family(i).gateway.is_some())
            .or_else(|| {
                out.interfaces
                    .iter()
                    .position(|i| carries_dns(family(i).method))
            })
            .or_else(|| (!out.interfaces.is_empty()).then_some(0));
        let Some(index) = target else {
            out.notes.push(format!(
                "DNS: nameserver {server} has no interface to go with; not carried"
            ));
            continue;
        };
        let iface = &mut out.interfaces[index];
        let family = if v6 && carries_dns(iface.ipv6.method) {
            &mut iface.ipv6
        } else if !v6 && carries_dns(iface.ipv4.method) {
            &mut iface.ipv4
        } else {
            out.notes.push(format!(
                "DNS: nameserver {server} has no interface of its family; not carried"
            ));
            continue;
        };
        family.dns.push(server);
    }
    if !search.is_empty() {
        let holder = out
            .interfaces
            .iter()
            .position(|i| !i.ipv4.dns.is_empty() || !i.ipv6.dns.is_empty())
            .or_else(|| (!out.interfaces.is_empty()).then_some(0));
        match holder {
            Some(index) => out.interfaces[index].search = search,
            None => out
                .notes
                .push("DNS: search domains have no interface to go with; not carried".into()),
        }
    }
}

/// Runs `ip -json` and reads resolv.conf (the upstream one of systemd-resolved when it runs).
pub fn read_host(root: &Path) -> Result<HostText, NetworkError> {
    let ip = |args: &[&str]| Cmd::new("ip").args(args).run();
    let resolved = root.join("run/systemd/resolve/resolv.conf");
    let resolv = if resolved.exists() {
        resolved
    } else {
        root.join("etc/resolv.conf")
    };
    let resolv_conf = match std::fs::read_to_string(&resolv) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(NetworkError::Read {
                path: resolv.display().to_string(),
                source,
            })
        }
    };
    Ok(HostText {
        addr: ip(&["-json", "addr", "show"])?,
        route4: ip(&["-json", "route", "show", "table", "main"])?,
        route6: ip(&["-json", "-6", "route", "show", "table", "main"])?,
        resolv_conf,
    })
}

#[cfg(test)]
mod tests;
