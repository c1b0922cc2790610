//! resolv.conf: the nameservers and search domains the capture carries.

use std::net::IpAddr;

/// Nameservers and search domains from resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> (Vec<IpAddr>, Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut notes = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(word) = words.next() else { continue };
                // A link-local server's zone (`fe80::1%eth0`) names a device that may change.
                let word = word.split('%').next().unwrap_or(word);
                match word.parse::<IpAddr>() {
                    Ok(ip) if ip.is_loopback() => notes.push(format!(
                        "DNS: nameserver {ip} is a local stub resolver; not carried (read the upstream servers from /run/systemd/resolve/resolv.conf when systemd-resolved runs)"
                    )),
                    Ok(ip) if !servers.contains(&ip) => servers.push(ip),
                    Ok(_) => {}
                    Err(_) => notes.push(format!(
                        "DNS: nameserver {word:?} is not an address; not carried"
                    )),
                }
            }
            // The last `search` or `domain` line wins, as in the resolver.
            Some("search") | Some("domain") => {
                search = words.map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    (servers, search, notes)
}
