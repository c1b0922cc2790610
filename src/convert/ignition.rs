//! The carried-over identity as one Ignition config (spec 3.3.0), merged with the admin's.
//!
//! Spec 3.3.0 because it is the newest that Debian's Ignition 2.14 (`ignition-validate`)
//! accepts, and NestOS's Ignition reads it too; any 3.x config the admin gives (3.0.0–3.3.0)
//! is a subset of 3.3.0 and is carried up unchanged.
//!
//! Merge rules (the admin's config is the admin's word, ours is a default):
//! - `passwd.users`: same name → one user; the admin's fields win, SSH keys are combined
//!   (admin's first, duplicates dropped). Other users are added.
//! - `storage.files` and `storage.links`: same path → the admin's entry wins and ours is
//!   dropped, with a note. Other entries are added.
//! - Everything else in the admin's config (systemd units, disks, kernel arguments, merge
//!   directives, …) passes through untouched.
//! - `ignition.config.replace` is refused: at first boot it would throw the carried identity
//!   away. `merge` is fine.
//!
//! Every file we write is `overwrite: true` (the image may ship /etc/localtime or a default
//! keyfile) and secrets (host keys, network keyfiles) are 0600.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

/// The Ignition spec version written.
pub const SPEC_VERSION: &str = "3.3.0";

const KEYFILE_DIR: &str = "/etc/NetworkManager/system-connections";
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// What is carried over from the running machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub hostname: Option<String>,
    /// Login keys per user (already stripped of options).
    pub users: Vec<UserKeys>,
    /// SSH host keys, when asked to keep them: file name under /etc/ssh and contents.
    pub host_keys: Vec<(String, Vec<u8>)>,
    /// NetworkManager keyfiles: connection file name (without directory) and contents.
    pub keyfiles: Vec<(String, String)>,
    /// IANA time zone name (`Europe/Berlin`).
    pub timezone: Option<String>,
    /// Extra files named by the admin.
    pub files: Vec<ExtraFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    pub name: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// The config, and what the merge decided that the admin should see.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: Value,
    pub notes: Vec<String>,
}

impl Rendered {
    /// The config as written to disk: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.config).expect("a Value always serializes");
        text.push('\n');
        text
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IgnitionError {
    #[error("the admin's Ignition config is not valid JSON: {0}")]
    Syntax(String),
    #[error("the admin's Ignition config has no ignition.version; add \"ignition\": {{\"version\": \"{SPEC_VERSION}\"}}")]
    NoVersion,
    #[error("the admin's Ignition config is version {0}; x2nestos reads 3.0.0 to {SPEC_VERSION} (convert it with butane, or write spec 3)")]
    Version(String),
    #[error("the admin's Ignition config uses ignition.config.replace, which would discard the carried identity at first boot; use ignition.config.merge instead")]
    Replace,
    #[error("the admin's Ignition config: {0} must be a list")]
    NotAList(&'static str),
    #[error("hostname {0:?} is not a valid host name (letters, digits, '-' and '.', at most 64 characters)")]
    Hostname(String),
    #[error("time zone {0:?} is not a zoneinfo name such as Europe/Berlin")]
    Timezone(String),
    #[error("file path {0:?} must be absolute and plain (no '..', no trailing '/')")]
    Path(String),
    #[error("user name {0:?} is not a valid login name")]
    User(String),
}

// Typed serde structs for the subset we generate.

#[derive(Serialize)]
struct Generated {
    ignition: Version,
    #[serde(skip_serializing_if = "Passwd::is_empty")]
    passwd: Passwd,
    #[serde(skip_serializing_if = "Storage::is_empty")]
    storage: Storage,
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
}

#[derive(Serialize, Default)]
struct Passwd {
    users: Vec<User>,
}
impl Passwd {
    fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct User {
    name: String,
    ssh_authorized_keys: Vec<String>,
}

#[derive(Serialize, Default)]
struct Storage {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<File>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<Link>,
}
impl Storage {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.links.is_empty()
    }
}

#[derive(Serialize)]
struct File {
    path: String,
    mode: u32,
    overwrite: bool,
    contents: Contents,
}

#[derive(Serialize)]
struct Contents {
    source: String,
}

#[derive(Serialize)]
struct Link {
    path: String,
    target: String,
    hard: bool,
    overwrite: bool,
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn file(path: String, mode: u32, bytes: &[u8]) -> File {
    File {
        path,
        mode,
        overwrite: true,
        contents: Contents {
            source: data_url(bytes),
        },
    }
}

fn check_path(path: &str) -> Result<(), IgnitionError> {
    let plain = path.starts_with('/')
        && !path.ends_with('/')
        && !path.split('/').any(|c| c == ".." || c == ".")
        && !path.contains("//");
    if plain {
        Ok(())
    } else {
        Err(IgnitionError::Path(path.to_owned()))
    }
}

fn check_hostname(name: &str) -> Result<(), IgnitionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(IgnitionError::Hostname(name.to_owned()))
    }
}

fn check_timezone(tz: &str) -> Result<(), IgnitionError> {
    let ok = !tz.is_empty()
        && !tz.starts_with('/')
        && tz.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part != "."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(IgnitionError::Timezone(tz.to_owned()))
    }
}

fn check_user(name: &str) -> Result<(), IgnitionError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(IgnitionError::User(name.to_owned()))
    }
}

/// Builds our part of the config from the identity.
fn generate(identity: &Identity) -> Result<Value, IgnitionError> {
    let mut storage = Storage::default();
    if let Some(hostname) = &identity.hostname {
        check_hostname(hostname)?;
        storage.files.push(file(
            "/etc/hostname".into(),
            0o644,
            format!("{hostname}\n").as_bytes(),
        ));
    }
    for (name, contents) in &identity.host_keys {
        let path = format!("/etc/ssh/{name}");
        check_path(&path)?;
        let mode = if name.ends_with(".pub") { 0o644 } else { 0o600 };
        storage.files.push(file(path, mode, contents));
    }
    for (name, contents) in &identity.keyfiles {
        let path = format!("{KEYFILE_DIR}/{name}");
        check_path(&path)?;
        storage.files.push(file(path, 0o600, contents.as_bytes()));
    }
    for extra in &identity.files {
        check_path(&extra.path)?;
        storage
            .files
            .push(file(extra.path.clone(), extra.mode, &extra.contents));
    }
    if let Some(tz) = &identity.timezone {
        check_timezone(tz)?;
        storage.links.push(Link {
            path: "/etc/localtime".into(),
            target: format!("{ZONEINFO}/{tz}"),
            hard: false,
            overwrite: true,
        });
    }
    let mut passwd = Passwd::default();
    for user in &identity.users {
        check_user(&user.name)?;
        passwd.users.push(User {
            name: user.name.clone(),
            ssh_authorized_keys: user.keys.clone(),
        });
    }
    let generated = Generated {
        ignition: Version {
            version: SPEC_VERSION,
        },
        passwd,
        storage,
    };
    Ok(serde_json::to_value(generated).expect("the generated config always serializes"))
}

/// Reads and checks the admin's config: JSON, spec 3.0.0–3.3.0, no `replace`.
pub fn parse_admin(text: &str) -> Result<Value, IgnitionError> {
    let config: Value =
        serde_json::from_str(text).map_err(|e| IgnitionError::Syntax(e.to_string()))?;
    let version = config
        .pointer("/ignition/version")
        .and_then(Value::as_str)
        .ok_or(IgnitionError::NoVersion)?;
    if !["3.0.0", "3.1.0", "3.2.0", "3.3.0"].contains(&version) {
        return Err(IgnitionError::Version(version.to_owned()));
    }
    if config
        .pointer("/ignition/config/replace")
        .is_some_and(|r| r.get("source").is_some_and(|s| !s.is_null()))
    {
        return Err(IgnitionError::Replace);
    }
    Ok(config)
}

/// The identity as a config, merged with the admin's config (already parsed) by the module's
/// rules.
pub fn render(identity: &Identity, admin: Option<&Value>) -> Result<Rendered, IgnitionError> {
    let mut ours = generate(identity)?;
    let mut notes = Vec::new();
    let Some(admin) = admin else {
        return Ok(Rendered {
            config: ours,
            notes,
        });
    };
    let mut merged = admin.clone();
    merged["ignition"]["version"] = Value::from(SPEC_VERSION);

    // Users: combine by name.
    let our_users = take_list(&mut ours, "/passwd/users");
    if !our_users.is_empty() {
        let users = list_mut(&mut merged, "passwd", "users", "passwd.users")?;
        for user in our_users {
            let name = user["name"].as_str().unwrap_or_default().to_owned();
            match users.iter_mut().find(|u| u["name"] == name.as_str()) {
                Some(existing) => {
                    let keys = existing
                        .as_object_mut()
                        .expect("a listed user is an object")
                        .entry("sshAuthorizedKeys")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    let Some(keys) = keys.as_array_mut() else {
                        return Err(IgnitionError::NotAList("passwd.users[].sshAuthorizedKeys"));
                    };
                    for key in user["sshAuthorizedKeys"].as_array().into_iter().flatten() {
                        if !keys.contains(key) {
                            keys.push(key.clone());
                        }
                    }
                    notes.push(format!(
                        "user {name}: defined in the admin's config too; SSH keys combined"
                    ));
                }
                None => users.push(user),
            }
        }
    }
    // Files and links: the admin's path wins.
    for (pointer, key, what) in [
        ("/storage/files", "files", "storage.files"),
        ("/storage/links", "links", "storage.links"),
    ] {
        let ours_list = take_list(&mut ours, pointer);
        if ours_list.is_empty() {
            continue;
        }
        let theirs = list_mut(&mut merged, "storage", key, what)?;
        for entry in ours_list {
            if theirs.iter().any(|t| t["path"] == entry["path"]) {
                notes.push(format!(
                    "{}: the admin's config sets it; the carried-over one is dropped",
                    entry["path"].as_str().unwrap_or_default()
                ));
            } else {
                theirs.push(entry);
            }
        }
    }
    Ok(Rendered {
        config: merged,
        notes,
    })
}

fn take_list(config: &mut Value, pointer: &str) -> Vec<Value> {
    match config.pointer_mut(pointer).map(Value::take) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    }
}

fn list_mut<'a>(
    config: &'a mut Value,
    section: &str,
    key: &str,
    what: &'static str,
) -> Result<&'a mut Vec<Value>, IgnitionError> {
    let root = config
        .as_object_mut()
        .ok_or(IgnitionError::NotAList(what))?;
    let section = root
        .entry(section)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(IgnitionError::NotAList(what))?;
    section
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or(IgnitionError::NotAList(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity the golden files are made from.
    pub(crate) fn sample() -> Identity {
        Identity {
            hostname: Some("node-7.example.org".into()),
            users: vec![
                UserKeys {
                    name: "root".into(),
                    keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@laptop".into()],
                },
                UserKeys {
                    name: "ops".into(),
                    keys: vec!["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops".into()],
                },
            ],
            host_keys: vec![
                ("ssh_host_ed25519_key".into(), b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n".to_vec()),
                ("ssh_host_ed25519_key.pub".into(), b"ssh-ed25519 AAAA host\n".to_vec()),
            ],
            keyfiles: vec![(
                "carried-52-54-00-12-34-56.nmconnection".into(),
                "[connection]\nid=carried-52:54:00:12:34:56\ntype=ethernet\n\n[ethernet]\nmac-address=52:54:00:12:34:56\n\n[ipv4]\nmethod=auto\n".into(),
            )],
            timezone: Some("Europe/Berlin".into()),
            files: vec![ExtraFile {
                path: "/etc/motd".into(),
                contents: b"converted by x2nestos\n".to_vec(),
                mode: 0o644,
            }],
        }
    }

    fn golden(name: &str, actual: &str) {
        crate::testing::golden(format!("tests/fixtures/convert/ignition/{name}"), actual);
    }

    #[test]
    fn identity_alone_matches_its_golden_file() {
        let rendered = render(&sample(), None).unwrap();
        assert!(rendered.notes.is_empty());
        golden("identity.ign", &rendered.to_json());
    }

    #[test]
    fn merged_with_an_admin_config_matches_its_golden_file() {
        let admin = parse_admin(include_str!(
            "../../tests/fixtures/convert/ignition/admin.ign"
        ))
        .unwrap();
        let rendered = render(&sample(), Some(&admin)).unwrap();
        assert_eq!(
            rendered.notes,
            [
                "user root: defined in the admin's config too; SSH keys combined",
                "/etc/motd: the admin's config sets it; the carried-over one is dropped",
            ]
        );
        golden("merged.ign", &rendered.to_json());
        let root = &rendered.config["passwd"]["users"][0];
        assert_eq!(root["name"], "root");
        assert_eq!(
            root["passwordHash"], "$6$admin$hash",
            "the admin's fields win"
        );
        assert_eq!(root["sshAuthorizedKeys"].as_array().unwrap().len(), 2);
        assert!(rendered.config["systemd"]["units"][0]["name"] == "admin.service");
    }

    #[test]
    fn an_empty_identity_is_a_bare_config() {
        let rendered = render(&Identity::default(), None).unwrap();
        assert_eq!(
            rendered.to_json(),
            "{\n  \"ignition\": {\n    \"version\": \"3.3.0\"\n  }\n}\n"
        );
    }

    #[test]
    fn secrets_are_0600() {
        let config = render(&sample(), None).unwrap().config;
        let mode = |path: &str| {
            config["storage"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == path)
                .unwrap()["mode"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(mode("/etc/ssh/ssh_host_ed25519_key"), 0o600);
        assert_eq!(mode("/etc/ssh/ssh_host_ed25519_key.pub"), 0o644);
        assert_eq!(
            mode("/etc/NetworkManager/system-connections/carried-52-54-00-12-34-56.nmconnection"),
            0o600
        );
    }

    #[test]
    fn admin_configs_that_are_refused() {
        let cases = [
            ("{", "is not valid JSON"),
            ("{}", "has no ignition.version"),
            (
                r#"{"ignition":{"version":"2.2.0"}}"#,
                "is version 2.2.0; x2nestos reads 3.0.0 to 3.3.0",
            ),
            (r#"{"ignition":{"version":"3.4.0"}}"#, "is version 3.4.0"),
            (
                r#"{"ignition":{"version":"3.3.0","config":{"replace":{"source":"http://x/y.ign"}}}}"#,
                "would discard the carried identity",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_admin(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let admin =
            parse_admin(r#"{"ignition":{"version":"3.0.0"},"storage":{"files":{}}}"#).unwrap();
        let err = render(&sample(), Some(&admin)).unwrap_err();
        assert_eq!(err, IgnitionError::NotAList("storage.files"));
        // A 3.0.0 config is carried up to 3.3.0.
        let admin = parse_admin(r#"{"ignition":{"version":"3.0.0"}}"#).unwrap();
        assert_eq!(
            render(&sample(), Some(&admin)).unwrap().config["ignition"]["version"],
            "3.3.0"
        );
    }

    #[test]
    fn bad_identity_values_are_refused() {
        let mut id = Identity {
            hostname: Some("bad_host".into()),
            ..Identity::default()
        };
        assert!(render(&id, None)
            .unwrap_err()
            .to_string()
            .starts_with("hostname \"bad_host\""));
        id.hostname = None;
        id.timezone = Some("../../etc/shadow".into());
        assert!(matches!(render(&id, None), Err(IgnitionError::Timezone(_))));
        id.timezone = None;
        id.files.push(ExtraFile {
            path: "etc/x".into(),
            contents: vec![],
            mode: 0o644,
        });
        assert!(matches!(render(&id, None), Err(IgnitionError::Path(_))));
        id.files.clear();
        id.host_keys.push(("../shadow".into(), vec![]));
        assert!(matches!(render(&id, None), Err(IgnitionError::Path(_))));
        id.host_keys.clear();
        id.users.push(UserKeys {
            name: "a b".into(),
            keys: vec![],
        });
        assert!(matches!(render(&id, None), Err(IgnitionError::User(_))));
    }
}
