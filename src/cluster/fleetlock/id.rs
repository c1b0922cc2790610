//! Which Node a FleetLock client is: the id Zincati sends, derived from the machine-id.
//!
//! Pure. Zincati's FleetLock id is not the machine-id itself but systemd's application-specific
//! machine id (`sd_id128_get_machine_app_specific(3)`): HMAC-SHA256 keyed with the 16 bytes of
//! `/etc/machine-id` over the 16 bytes of Zincati's application id, the first 16 bytes of the
//! digest made a version-4 UUID, sent as 32 lowercase hex digits without dashes. A Node's
//! `status.nodeInfo.machineID` (the kubelet reads the same file) is the key, so the server
//! finds the Node without any mapping to keep: [`zincati_id`] of every Node's machine-id, and
//! the one equal to the client's id is its Node.
//!
//! Why not trust a node name in the id: a FleetLock request is unauthenticated; an id derived
//! from a machine-id names exactly one Node, and whoever knows it can only ask for that Node's
//! lock (see `server.rs` for what such a caller can do).

use sha2::{Digest, Sha256};

/// Zincati's application id (`de35106b-6ec2-4688-b63a-fddaa156679b`, its `src/identity`).
pub const ZINCATI_APP_ID: [u8; 16] = [
    0xde, 0x35, 0x10, 0x6b, 0x6e, 0xc2, 0x46, 0x88, 0xb6, 0x3a, 0xfd, 0xda, 0xa1, 0x56, 0x67, 0x9b,
];

/// HMAC-SHA256 (RFC 2104) of `message` under `key`; keys longer than a block are hashed first.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// A 128-bit id from 32 hex digits, with or without the dashes of the UUID form, any case.
pub fn parse_id128(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(&hex, &mut out).ok()?;
    Some(out)
}

/// The application-specific id of `machine_id` for `app` (systemd's derivation).
pub fn app_specific(machine_id: &[u8; 16], app: &[u8; 16]) -> [u8; 16] {
    let digest = hmac_sha256(machine_id, app);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40; // version 4
    id[8] = (id[8] & 0x3f) | 0x80; // variant DCE
    id
}

/// The FleetLock id Zincati sends on the machine whose machine-id is `machine_id` (as the
/// Node's `status.nodeInfo.machineID` shows it): 32 lowercase hex digits. `None` when the
/// machine-id is not 128 bits of hex.
pub fn zincati_id(machine_id: &str) -> Option<String> {
    let m = parse_id128(machine_id)?;
    Some(hex::encode(app_specific(&m, &ZINCATI_APP_ID)))
}

/// A client's id in the form [`zincati_id`] returns (a UUID with dashes or capitals is the same
/// id: Zincati's `identity.node_uuid` setting accepts both); `None` when it is not 128 bits.
pub fn normalize(id: &str) -> Option<String> {
    parse_id128(id).map(hex::encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed on Debian 12 with `systemd-id128 -a de35106b6ec24688b63afddaa156679b
    /// machine-id` on a machine whose /etc/machine-id is 3d1219c7c4c5404aaa1f6d2a48adfda4, and
    /// checked with Python's `hmac` (HMAC-SHA256, first 16 bytes, version 4 and variant set).
    const MACHINE: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
    const ZINCATI_ID: &str = "975228d46dc94622b9bbe16671e2b58d";

    #[test]
    fn the_id_is_systemds_app_specific_machine_id() {
        assert_eq!(zincati_id(MACHINE).as_deref(), Some(ZINCATI_ID));
        // The same machine-id in UUID form or capitals names the same machine.
        assert_eq!(
            zincati_id("3D1219C7-C4C5-404A-AA1F-6D2A48ADFDA4").as_deref(),
            Some(ZINCATI_ID)
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe".
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn ids_in_other_spellings_are_the_same_id_and_junk_is_none() {
        assert_eq!(
            normalize("975228D4-6DC9-4622-B9BB-E16671E2B58D").as_deref(),
            Some(ZINCATI_ID)
        );
        assert_eq!(normalize("node-1"), None);
        assert_eq!(normalize(""), None);
        assert_eq!(normalize(&"a".repeat(33)), None);
        assert_eq!(zincati_id("not-a-machine-id"), None);
    }
}
