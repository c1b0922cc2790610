use std::path::{Path, PathBuf};

use super::keyfile::{self, keyfiles};
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert/network")
}

fn host_text(case: &str) -> HostText {
    let dir = fixtures().join(case);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    HostText {
        addr: read("addr.json"),
        route4: read("route.json"),
        route6: read("route6.json"),
        resolv_conf: read("resolv.conf"),
    }
}

fn captured(case: &str) -> Capture {
    capture(&host_text(case), CaptureOptions::default()).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Compares rendered keyfiles with tests/fixtures/convert/network/golden/CASE/.
fn golden(case: &str, files: &[(String, String)]) {
    let dir = fixtures().join("golden").join(case);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e} (UPDATE_GOLDEN=1 writes it)", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    let mut names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, expected, "keyfile names for {case}");
    for (name, text) in files {
        let want = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(
            text, &want,
            "{case}/{name} differs (UPDATE_GOLDEN=1 rewrites it)"
        );
    }
}

#[test]
fn the_build_machine_capture() {
    let c = captured("host");
    assert_eq!(c.interfaces.len(), 1);
    let eth0 = &c.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.mac, "02:fc:00:00:00:01");
    assert_eq!(eth0.mtu, Some(1400));
    assert_eq!(eth0.ipv4.method, Method::Manual);
    assert_eq!(
        eth0.ipv4.addresses,
        [Address {
            ip: ip("192.0.2.2"),
            prefix: 24,
            dynamic: false
        }]
    );
    assert_eq!(eth0.ipv4.gateway, Some(ip("192.0.2.1")));
    assert!(
        eth0.ipv4.routes.is_empty(),
        "the kernel's prefix route is its own"
    );
    assert_eq!(eth0.ipv4.dns, [ip("10.255.255.53")]);
    assert_eq!(eth0.ipv6.method, Method::Manual);
    assert_eq!(
        eth0.ipv6.addresses.len(),
        1,
        "link-local left to the kernel"
    );
    assert_eq!(eth0.ipv6.gateway, Some(ip("fd00::1")));
    assert_eq!(eth0.ipv6.gateway_metric, None, "1024 is the kernel default");
    let left: Vec<(&str, &str)> = c
        .left_out
        .iter()
        .map(|l| (l.name.as_str(), l.reason.as_str()))
        .collect();
    assert_eq!(left[0], ("lo", "loopback"));
    assert_eq!(left[1].0, "ifb0");
    assert!(left[1].1.contains("(ifb*)"), "{left:?}");
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    golden("host", &keyfiles(&c, None).files);
}

#[test]
fn several_nics_static_dhcp_and_container_plumbing() {
    let c = captured("multi");
    let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["enp1s0", "enp2s0"]);

    let stat = &c.interfaces[0];
    assert_eq!(stat.mac, "52:54:00:aa:00:01", "MACs are lower-cased");
    assert_eq!(stat.mtu, None, "1500 is the default");
    assert_eq!(stat.ipv4.method, Method::Manual);
    assert_eq!(stat.ipv4.addresses.len(), 2, "secondary addresses are kept");
    assert_eq!(stat.ipv4.gateway, Some(ip("10.0.0.1")));
    assert_eq!(stat.ipv4.gateway_metric, Some(100));
    assert_eq!(
        stat.ipv4.routes,
        [
            Route {
                dst: ip("10.20.0.0"),
                prefix: 16,
                via: Some(ip("10.0.0.254")),
                metric: None
            },
            Route {
                dst: ip("10.30.0.0"),
                prefix: 16,
                via: None,
                metric: Some(50)
            },
            Route {
                dst: ip("10.40.1.7"),
                prefix: 32,
                via: Some(ip("10.0.0.253")),
                metric: None
            },
        ]
    );
    assert_eq!(stat.ipv6.method, Method::LinkLocal);
    assert_eq!(stat.ipv4.dns, [ip("10.0.0.53"), ip("10.0.0.54")]);
    assert_eq!(stat.search, ["example.org", "corp.example.org"]);

    let dhcp = &c.interfaces[1];
    assert_eq!(dhcp.ipv4.method, Method::Auto);
    assert!(dhcp.ipv4.addresses.is_empty(), "the lease is not pinned");
    assert_eq!(
        dhcp.ipv4.gateway, None,
        "the DHCP default route comes back by itself"
    );
    assert!(dhcp.ipv4.routes.is_empty());
    assert_eq!(dhcp.ipv6.method, Method::Disabled);
    assert_eq!(dhcp.mtu, Some(9000));

    let left: Vec<&str> = c.left_out.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        left,
        [
            "lo",
            "enp3s0",
            "docker0",
            "flannel.1",
            "cni0",
            "veth3f2a1b0c",
            "cali8d2f1e3a9b0",
            "enp1s0.100",
            "wg0"
        ]
    );
    let reason = |name: &str| {
        c.left_out
            .iter()
            .find(|l| l.name == name)
            .unwrap()
            .reason
            .clone()
    };
    assert!(reason("enp3s0").contains("no address"));
    assert!(reason("docker0").contains("docker*"));
    assert!(reason("cali8d2f1e3a9b0").contains("cali*"));
    assert!(reason("enp1s0.100").contains("stacked on enp1s0"));
    assert!(reason("wg0").contains("a none link"));

    for expected in [
        "DNS: nameserver 127.0.0.53 is a local stub resolver",
        "enp2s0: route 172.31.0.0/16 from protocol bird not carried",
        "enp1s0: unreachable route 192.168.201.0/24 not carried",
        "route 198.51.100.0/24: a multipath route; not carried",
        "DNS: nameserver 2001:db8::53 has no interface of its family",
    ] {
        assert!(
            c.notes.iter().any(|n| n.starts_with(expected)),
            "missing note {expected:?} in {:#?}",
            c.notes
        );
    }
    golden("multi", &keyfiles(&c, None).files);
}

#[test]
fn pinning_dhcp_addresses_when_asked() {
    let c = capture(&host_text("multi"), CaptureOptions { pin_dynamic: true }).unwrap();
    let dhcp = &c.interfaces[1];
    assert_eq!(dhcp.ipv4.method, Method::Manual);
    assert_eq!(dhcp.ipv4.addresses[0].ip, ip("172.16.4.23"));
    assert!(dhcp.ipv4.addresses[0].dynamic);
    assert!(c
        .notes
        .contains(&"enp2s0: dynamic address 172.16.4.23/20 pinned as static".to_owned()));
    let (_, text) = keyfile::render_interface(dhcp);
    assert!(
        text.contains("method=manual\naddress1=172.16.4.23/20\n"),
        "{text}"
    );
}

#[test]
fn ipv6_static_slaac_and_privacy_addresses() {
    let c = captured("ipv6");
    let eth0 = &c.interfaces[0];
    assert_eq!(eth0.ipv4.method, Method::Disabled);
    assert_eq!(eth0.ipv6.method, Method::Auto, "SLAAC is asked for again");
    assert_eq!(
        eth0.ipv6.addresses,
        [Address {
            ip: ip("2001:db8:10::15"),
            prefix: 64,
            dynamic: false
        }],
        "the static address stays beside SLAAC; the SLAAC and temporary ones go"
    );
    assert_eq!(
        eth0.ipv6.gateway, None,
        "the RA default route comes back by itself"
    );
    let eth1 = &c.interfaces[1];
    assert_eq!(eth1.ipv4.method, Method::Manual);
    assert_eq!(eth1.ipv4.gateway, None);
    assert_eq!(eth1.ipv6.gateway, Some(ip("2001:db8:30::1")));
    assert_eq!(eth1.ipv6.routes.len(), 1);
    assert_eq!(eth1.ipv6.dns, [ip("2001:db8:30::53")]);
    assert_eq!(eth1.search, ["v6.example.net"]);
    let files = keyfiles(&c, None).files;
    assert!(files[1].1.contains("[ipv6]\nmethod=manual\naddr-gen-mode=eui64\naddress1=2001:db8:30::10/64\ngateway=2001:db8:30::1\nroute1=2001:db8:99::/48,2001:db8:30::1\ndns=2001:db8:30::53;\ndns-search=v6.example.net;\n"), "{}", files[1].1);
    golden("ipv6", &files);
}

#[test]
fn resolv_conf_parsing() {
    let (servers, search, notes) = parse_resolv_conf(
        "nameserver 1.1.1.1\nnameserver fe80::1%eth0\nnameserver bogus\nsearch a.example b.example\noptions edns0\n",
    );
    assert_eq!(servers, [ip("1.1.1.1"), ip("fe80::1")]);
    assert_eq!(search, ["a.example", "b.example"]);
    assert_eq!(
        notes,
        ["DNS: nameserver \"bogus\" is not an address; not carried"]
    );
    let (servers, search, _) = parse_resolv_conf("");
    assert!(servers.is_empty() && search.is_empty());
}

#[test]
fn broken_ip_output_names_the_command() {
    let text = HostText {
        addr: "[{\"ifname\": 3}]".into(),
        ..HostText::default()
    };
    let err = capture(&text, CaptureOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reading the output of `ip -json addr`: "),
        "{err}"
    );
    let text = HostText {
        addr: "[]".into(),
        route6: "{".into(),
        ..HostText::default()
    };
    let err = capture(&text, CaptureOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reading the output of `ip -json -6 route`: "),
        "{err}"
    );
}

#[test]
fn existing_keyfiles_are_carried_and_rekeyed_by_mac() {
    let root = fixtures().join("nm");
    let existing = keyfile::read_existing(&root)
        .unwrap()
        .expect("NetworkManager runs there");
    let names: Vec<&str> = existing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "eth0.nmconnection",
            "office-wifi.nmconnection",
            "uplink.nmconnection"
        ],
        "backup files are skipped, as NetworkManager does"
    );
    let c = captured("nm");
    let out = keyfiles(&c, Some(&existing));
    assert_eq!(
        out.notes,
        [
            "keyfile eth0.nmconnection: matched eth0 by name; re-keyed by MAC 02:fc:00:00:00:01",
            "keyfile uplink.nmconnection: matched by MAC 02:fc:00:00:00:09; interface-name=ens9 dropped (device names may change)",
        ]
    );
    assert_eq!(
        out.files.len(),
        3,
        "eth0 is covered by its keyfile, not rendered again"
    );
    golden("nm", &out.files);
    let wifi = &out.files[1].1;
    assert_eq!(
        wifi, &existing[1].1,
        "other connection types pass unchanged"
    );
}

#[test]
fn interfaces_without_a_keyfile_are_rendered_beside_carried_ones() {
    let c = captured("multi");
    let existing = vec![(
        "lan.nmconnection".to_owned(),
        "[connection]\nid=lan\ntype=802-3-ethernet\n\n[802-3-ethernet]\nmac-address=52-54-00-AA-00-01\n".to_owned(),
    )];
    let out = keyfiles(&c, Some(&existing));
    let names: Vec<&str> = out.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["lan.nmconnection", "carried-52-54-00-aa-00-02.nmconnection"]
    );
    assert_eq!(
        out.notes,
        ["enp2s0 (52:54:00:aa:00:02): no NetworkManager keyfile; written from the kernel's addresses and routes"]
    );
}

#[test]
fn no_networkmanager_means_no_existing_keyfiles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(keyfile::KEYFILE_DIR)).unwrap();
    assert_eq!(keyfile::read_existing(dir.path()).unwrap(), None);
    std::fs::create_dir_all(dir.path().join("run/NetworkManager")).unwrap();
    assert_eq!(keyfile::read_existing(dir.path()).unwrap(), Some(vec![]));
}

#[test]
fn rendered_keyfiles_are_stable_and_valid_for_ignition() {
    let c = captured("multi");
    let a = keyfiles(&c, None);
    let b = keyfiles(&c, None);
    assert_eq!(
        a, b,
        "the same capture gives the same files (uuid from the MAC)"
    );
    let identity = crate::convert::ignition::Identity {
        keyfiles: a.files,
        ..Default::default()
    };
    crate::convert::ignition::render(&identity, None).unwrap();
}
