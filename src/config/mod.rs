//! Configuration: TOML fragments from drop-in directories, merged, validated, with provenance.
//!
//! Three steps, as in `dropin` → here:
//! 1. *find* the fragments (`dropin::scan`: override by name, `/dev/null` masking, name order);
//! 2. *check* each fragment on its own against the settings type, so an unknown key or a
//!    wrong type is reported with the file, line, key and what was expected;
//! 3. *merge* the fragments key by key (a later fragment wins; tables merge, arrays and
//!    values are replaced whole) and deserialize the result once, remembering which file
//!    set each value.
//!
//! The settings type decides the schema: every struct in it must carry
//! `#[serde(default, deny_unknown_fields)]`, so that a fragment may set any subset of keys.

pub mod dropin;
pub mod hkd;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a configuration could not be loaded. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("listing configuration directory {}: {source}; check its permissions", dir.display())]
    ListDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("reading configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}:{line}: unknown key `{key}` ({expected}); remove it or correct its spelling", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        expected: String,
    },
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    /// Settings that are each valid but cannot work together with what is on disk.
    #[error("{key}: {message}")]
    Unusable { key: String, message: String },
}

/// A loaded configuration: the validated settings and where each value came from.
#[derive(Debug)]
pub struct Loaded<T> {
    pub settings: T,
    /// Dotted key (`os.backend`) → the fragment that set it last. Keys not listed are defaults.
    pub provenance: BTreeMap<String, PathBuf>,
    /// The fragments read, in the order applied.
    pub fragments: Vec<PathBuf>,
    /// Entries in the drop-in directories that were not read, with why.
    pub ignored: Vec<(PathBuf, &'static str)>,
    /// Entries that mask a fragment name.
    pub masked: Vec<PathBuf>,
}

/// Loads the configuration of program `app` from its drop-in directories below `root`.
pub fn load<T>(root: &Path, app: &str) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Default,
{
    let scan = dropin::scan(
        &dropin::directories(root, &format!("{app}/config.d")),
        dropin::Wanted::Toml,
    )?;
    let mut merged = toml::Table::new();
    let mut provenance = BTreeMap::new();
    for path in &scan.fragments {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table = check_fragment::<T>(path, &text)?;
        merge(&mut merged, table, path, "", &mut provenance);
    }
    // Every fragment passed the schema on its own, and merging keeps keys and types, so this
    // can only fail if the schema itself is inconsistent; report it against the last file.
    let settings = T::deserialize(merged).map_err(|e| ConfigError::BadValue {
        path: scan.fragments.last().cloned().unwrap_or_default(),
        line: 0,
        key: String::new(),
        message: e.to_string(),
    })?;
    Ok(Loaded {
        settings,
        provenance,
        fragments: scan.fragments,
        ignored: scan.ignored,
        masked: scan.masked,
    })
}

/// Parses one fragment and checks it against the schema of `T`; returns its table.
fn check_fragment<T: DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        line: 0,
        column: 0,
        message: one_line(e.message()),
    })?;
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(deserializer) {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = line_col(text, inner.span().map_or(0, |s| s.start)).0;
        let message = one_line(inner.message());
        return Err(match unknown_field(&message) {
            Some(expected) => ConfigError::UnknownKey {
                path: path.to_owned(),
                line,
                key,
                expected,
            },
            None => ConfigError::BadValue {
                path: path.to_owned(),
                line,
                key,
                message,
            },
        });
    }
    Ok(table)
}

/// Recognises serde's "unknown field `x`, expected one of `a`, `b`" and returns the second half.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (_, expected) = rest.split_once("`, ")?;
    Some(expected.replace("`", ""))
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Merges `from` into `into`: tables key by key, anything else replaced whole. Every leaf
/// under a key that `from` sets is attributed to `source`.
fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    source: &Path,
    prefix: &str,
    provenance: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in from {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming, source, &dotted, provenance);
            }
            (_, value) => {
                // A replaced table's old leaves no longer exist.
                provenance.retain(|k, _| !k.starts_with(&format!("{dotted}.")));
                attribute(&value, &dotted, source, provenance);
                into.insert(key, value);
            }
        }
    }
}

fn attribute(
    value: &toml::Value,
    dotted: &str,
    source: &Path,
    provenance: &mut BTreeMap<String, PathBuf>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                attribute(value, &format!("{dotted}.{key}"), source, provenance);
            }
        }
        _ => {
            provenance.insert(dotted.to_owned(), source.to_owned());
        }
    }
}

impl<T: Serialize> Loaded<T> {
    /// The merged configuration as TOML, each value followed by where it came from.
    pub fn render_toml(&self) -> String {
        let mut out = String::new();
        out.push_str("# Merged configuration. Fragments applied, in order:\n");
        if self.fragments.is_empty() {
            out.push_str("#   (none: every value is a default)\n");
        }
        for path in &self.fragments {
            let _ = writeln!(out, "#   {}", path.display());
        }
        for path in &self.masked {
            let _ = writeln!(out, "# masked by {}", path.display());
        }
        let table = match toml::Table::try_from(&self.settings) {
            Ok(table) => table,
            Err(e) => return format!("{out}# cannot render settings: {e}\n"),
        };
        self.render_table(&mut out, &table, "");
        out
    }

    fn render_table(&self, out: &mut String, table: &toml::Table, prefix: &str) {
        let (tables, values): (Vec<_>, Vec<_>) = table.iter().partition(|(_, v)| v.is_table());
        if !values.is_empty() && !prefix.is_empty() {
            let _ = writeln!(out, "\n[{prefix}]");
        }
        for (key, value) in values {
            let dotted = join(prefix, key);
            let line = format!("{key} = {value}");
            let origin = self
                .provenance
                .get(&dotted)
                .map_or_else(|| "default".to_owned(), |p| p.display().to_string());
            let _ = writeln!(out, "{line:<40} # {origin}");
        }
        for (key, value) in tables {
            if let toml::Value::Table(inner) = value {
                self.render_table(out, inner, &join(prefix, key));
            }
        }
    }

    /// The merged configuration as JSON: settings, sources per key, files read and ignored.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "settings": self.settings,
            "sources": self.provenance,
            "fragments": self.fragments,
            "masked": self.masked,
            "ignored": self.ignored.iter()
                .map(|(path, why)| serde_json::json!({"path": path, "reason": why}))
                .collect::<Vec<_>>(),
        })
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        enabled: bool,
        count: u32,
        list: Vec<String>,
    }

    impl Default for Inner {
        fn default() -> Self {
            Inner {
                enabled: true,
                count: 3,
                list: vec!["a".into()],
            }
        }
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let path = root.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    fn load_tree(
        files: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Loaded<Settings>, ConfigError>) {
        let root = tree(files);
        let loaded = load(root.path(), "app");
        (root, loaded)
    }

    #[test]
    fn no_fragments_give_defaults() {
        let (_root, loaded) = load_tree(&[]);
        let loaded = loaded.unwrap();
        assert_eq!(loaded.settings, Settings::default());
        assert!(loaded.provenance.is_empty());
    }

    #[test]
    fn later_fragments_win_key_by_key() {
        let (root, loaded) = load_tree(&[
            (
                "usr/lib/app/config.d/10-base.toml",
                "name = \"base\"\n[inner]\ncount = 5\nenabled = false\n",
            ),
            ("etc/app/config.d/20-site.toml", "[inner]\ncount = 7\n"),
        ]);
        let loaded = loaded.unwrap();
        assert_eq!(loaded.settings.name, "base");
        assert_eq!(loaded.settings.inner.count, 7);
        assert!(!loaded.settings.inner.enabled);
        let site = root.path().join("etc/app/config.d/20-site.toml");
        let base = root.path().join("usr/lib/app/config.d/10-base.toml");
        assert_eq!(loaded.provenance["inner.count"], site);
        assert_eq!(loaded.provenance["inner.enabled"], base);
        assert_eq!(loaded.provenance["name"], base);
    }

    #[test]
    fn name_order_not_directory_order_decides_precedence() {
        // /run's 10- file applies before /usr/lib's 90- file: the later name wins.
        let (_root, loaded) = load_tree(&[
            ("usr/lib/app/config.d/90-vendor.toml", "name = \"vendor\"\n"),
            ("run/app/config.d/10-runtime.toml", "name = \"runtime\"\n"),
        ]);
        assert_eq!(loaded.unwrap().settings.name, "vendor");
    }

    #[test]
    fn arrays_are_replaced_not_appended() {
        let (_root, loaded) = load_tree(&[
            (
                "etc/app/config.d/10-a.toml",
                "[inner]\nlist = [\"x\", \"y\"]\n",
            ),
            ("etc/app/config.d/20-b.toml", "[inner]\nlist = [\"z\"]\n"),
        ]);
        assert_eq!(loaded.unwrap().settings.inner.list, vec!["z"]);
    }

    #[test]
    fn an_overridden_file_is_not_read() {
        let (_root, loaded) = load_tree(&[
            ("usr/lib/app/config.d/50-x.toml", "this is not toml"),
            ("etc/app/config.d/50-x.toml", "name = \"etc\"\n"),
        ]);
        assert_eq!(loaded.unwrap().settings.name, "etc");
    }

    #[test]
    fn unknown_key_names_file_line_key_and_choices() {
        let (root, loaded) = load_tree(&[(
            "etc/app/config.d/50-x.toml",
            "name = \"n\"\n[inner]\ncount = 1\ncuont = 2\n",
        )]);
        let message = loaded.unwrap_err().to_string();
        let path = root.path().join("etc/app/config.d/50-x.toml");
        assert_eq!(
            message,
            format!(
                "{}:4: unknown key `inner.cuont` (expected one of enabled, count, list); \
                 remove it or correct its spelling",
                path.display()
            )
        );
    }

    #[test]
    fn wrong_type_names_file_line_key_and_expected_type() {
        let (root, loaded) =
            load_tree(&[("etc/app/config.d/50-x.toml", "[inner]\nenabled = \"yes\"\n")]);
        let message = loaded.unwrap_err().to_string();
        let path = root.path().join("etc/app/config.d/50-x.toml");
        assert_eq!(
            message,
            format!(
                "{}:2: key `inner.enabled`: invalid type: string \"yes\", expected a boolean",
                path.display()
            )
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn syntax_error_is_one_line_with_position() {
        let (_root, loaded) =
            load_tree(&[("etc/app/config.d/50-x.toml", "name = \"n\"\n[inner\n")]);
        let err = loaded.unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: 2, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn masked_fragment_is_not_applied() {
        let root = tree(&[("usr/lib/app/config.d/50-x.toml", "name = \"vendor\"\n")]);
        let mask = root.path().join("etc/app/config.d/50-x.toml");
        fs::create_dir_all(mask.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/null", &mask).unwrap();
        let loaded: Loaded<Settings> = load(root.path(), "app").unwrap();
        assert_eq!(loaded.settings.name, "");
        assert_eq!(loaded.masked, vec![mask]);
    }

    #[test]
    fn non_toml_files_are_reported_in_the_result() {
        let (root, loaded) = load_tree(&[
            ("etc/app/config.d/50-x.conf", "name = \"ignored\"\n"),
            ("etc/app/config.d/60-y.toml", "name = \"read\"\n"),
        ]);
        let loaded = loaded.unwrap();
        assert_eq!(loaded.settings.name, "read");
        assert_eq!(loaded.ignored.len(), 1);
        assert_eq!(
            loaded.ignored[0].0,
            root.path().join("etc/app/config.d/50-x.conf")
        );
    }

    #[test]
    fn rendered_toml_shows_where_each_value_came_from() {
        let (root, loaded) = load_tree(&[("etc/app/config.d/50-x.toml", "[inner]\ncount = 9\n")]);
        let loaded = loaded.unwrap();
        let rendered = loaded.render_toml();
        let site = root.path().join("etc/app/config.d/50-x.toml");
        let line = |key: &str| {
            rendered
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no line for {key} in\n{rendered}"))
                .to_owned()
        };
        assert!(line("count = 9").ends_with(&format!("# {}", site.display())));
        assert!(line("enabled = true").ends_with("# default"));
        assert!(line("name = \"\"").ends_with("# default"));
        // What is printed reads back as the same settings.
        let reparsed: Settings = toml::from_str(&rendered).unwrap();
        assert_eq!(reparsed, loaded.settings);
    }

    #[test]
    fn json_output_carries_sources_and_ignored_files() {
        let (_root, loaded) = load_tree(&[
            ("etc/app/config.d/50-x.toml", "name = \"n\"\n"),
            ("etc/app/config.d/README", ""),
        ]);
        let json = loaded.unwrap().to_json();
        assert_eq!(json["settings"]["name"], "n");
        assert!(json["sources"]["name"]
            .as_str()
            .unwrap()
            .ends_with("50-x.toml"));
        assert_eq!(json["ignored"][0]["reason"], "only *.toml files are read");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
