//! Reading `authorized_keys` files and stripping the options in front of keys.
//!
//! Cloud images often prefix root's key with `command="echo 'Please login as the user …'"`
//! or `no-port-forwarding,…`: carried over verbatim, such a key locks the admin out of the
//! converted machine. Ignition's `sshAuthorizedKeys` are plain keys, so every option is
//! stripped and returned for showing. A `cert-authority` line is not a login key at all and is
//! left out, with the reason.
//!
//! The syntax is sshd(8)'s: options are comma-separated, an option's value may be quoted, and
//! a quoted value may hold commas, spaces and `\"`.

use base64::Engine as _;

/// One login key, with the options that stood before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// 1-based line number in the file.
    pub line: usize,
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, `sk-ssh-ed25519@openssh.com`, …
    pub key_type: String,
    /// The base64 blob.
    pub blob: String,
    pub comment: Option<String>,
    /// Options stripped from the line, as written (`command="…"`, `from="…"`, `no-pty`, …).
    pub stripped: Vec<String>,
}

impl AuthorizedKey {
    /// The line to carry over: type, key and comment, no options.
    pub fn to_line(&self) -> String {
        match &self.comment {
            Some(comment) => format!("{} {} {}", self.key_type, self.blob, comment),
            None => format!("{} {}", self.key_type, self.blob),
        }
    }
}

/// A line that is not carried over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedKeys {
    pub keys: Vec<AuthorizedKey>,
    pub skipped: Vec<Skipped>,
}

/// Key types sshd accepts in authorized_keys (certificates are keys too).
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn is_key_type(word: &str) -> bool {
    KEY_TYPES.contains(&word)
        || word
            .strip_suffix("-cert-v01@openssh.com")
            .is_some_and(|base| {
                KEY_TYPES
                    .iter()
                    .any(|t| t.trim_end_matches("@openssh.com") == base)
            })
}

/// Parses an authorized_keys file. Never fails: what cannot be used is in `skipped`.
pub fn parse_authorized_keys(text: &str) -> AuthorizedKeys {
    let mut out = AuthorizedKeys::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed) {
            Ok(Some((key_type, blob, comment, stripped))) => out.keys.push(AuthorizedKey {
                line,
                key_type,
                blob,
                comment,
                stripped,
            }),
            Ok(None) => out.skipped.push(Skipped {
                line,
                reason: "a cert-authority key (trusts certificates, is not a login key)".into(),
            }),
            Err(reason) => out.skipped.push(Skipped { line, reason }),
        }
    }
    out
}

type Parsed = (String, String, Option<String>, Vec<String>);

fn parse_line(line: &str) -> Result<Option<Parsed>, String> {
    let first = line.split_whitespace().next().unwrap_or_default();
    let (options, rest) = if is_key_type(first) {
        (Vec::new(), line)
    } else {
        let (options, rest) = split_options(line)?;
        (options, rest.trim_start())
    };
    if options
        .iter()
        .any(|o| o.eq_ignore_ascii_case("cert-authority"))
    {
        return Ok(None);
    }
    let mut words = rest.splitn(3, char::is_whitespace);
    let key_type = words.next().unwrap_or_default();
    if !is_key_type(key_type) {
        return Err(format!("unknown key type {key_type:?}"));
    }
    let blob = words
        .next()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("no key after {key_type}"))?;
    check_blob(key_type, blob)?;
    let comment = words
        .next()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok(Some((
        key_type.to_owned(),
        blob.to_owned(),
        comment,
        options,
    )))
}

/// Splits the leading option list off: commas separate options, whitespace ends the list,
/// both only outside double quotes; `\"` inside quotes is a literal quote.
fn split_options(line: &str) -> Result<(Vec<String>, &str), String> {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quoted => {
                current.push(c);
                if let Some((_, next)) = chars.next() {
                    current.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => {
                options.push(current);
                return Ok((options, &line[i..]));
            }
            c => current.push(c),
        }
    }
    if quoted {
        Err("an option's quote is not closed".into())
    } else {
        Err("options but no key".into())
    }
}

/// The blob must be base64 of an SSH wire string starting with the key type.
fn check_blob(key_type: &str, blob: &str) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| format!("the {key_type} key is not valid base64"))?;
    let name = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|len| bytes.get(4..4 + len));
    if name != Some(key_type.as_bytes()) {
        return Err(format!("the key data does not hold a {key_type} key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically real blob for `key_type`: SSH wire string of the type, then padding.
    fn blob(key_type: &str) -> String {
        let mut bytes = (key_type.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(key_type.as_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 32]);
        bytes.extend_from_slice(&[7u8; 32]);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn plain_keys_of_every_type_are_kept() {
        let types = [
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp521",
            "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
            "ssh-ed25519-cert-v01@openssh.com",
        ];
        let text: String = types
            .iter()
            .map(|t| format!("{t} {} admin@laptop\n", blob(t)))
            .collect();
        let parsed = parse_authorized_keys(&text);
        assert_eq!(parsed.skipped, vec![]);
        let got: Vec<_> = parsed.keys.iter().map(|k| k.key_type.as_str()).collect();
        assert_eq!(got, types);
        assert!(parsed.keys.iter().all(|k| k.stripped.is_empty()));
        assert_eq!(parsed.keys[0].comment.as_deref(), Some("admin@laptop"));
    }

    #[test]
    fn cloud_image_command_prefix_is_stripped_and_shown() {
        let key = blob("ssh-rsa");
        let text = format!(
            "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"debian\\\" rather than the user \\\"root\\\".';echo;sleep 10;exit 142\" ssh-rsa {key} cloud-key\n"
        );
        let parsed = parse_authorized_keys(&text);
        assert_eq!(parsed.skipped, vec![]);
        let k = &parsed.keys[0];
        assert_eq!(k.to_line(), format!("ssh-rsa {key} cloud-key"));
        assert_eq!(k.stripped.len(), 4);
        assert_eq!(k.stripped[0], "no-port-forwarding");
        assert!(
            k.stripped[3].starts_with("command=\"echo 'Please login"),
            "{:?}",
            k.stripped
        );
        assert!(k.stripped[3].ends_with("exit 142\""));
    }

    #[test]
    fn quoted_options_may_hold_commas_and_spaces() {
        let key = blob("ssh-ed25519");
        let text = format!(
            "from=\"10.0.0.0/8,192.168.1.1\",environment=\"A=b c\",no-pty ssh-ed25519 {key} with a long comment\n"
        );
        let k = &parse_authorized_keys(&text).keys[0];
        assert_eq!(
            k.stripped,
            [
                "from=\"10.0.0.0/8,192.168.1.1\"",
                "environment=\"A=b c\"",
                "no-pty"
            ]
        );
        assert_eq!(k.comment.as_deref(), Some("with a long comment"));
    }

    #[test]
    fn comments_blank_lines_and_bad_lines() {
        let key = blob("ssh-ed25519");
        let text = format!(
            "# managed by hand\n\n   \nssh-ed25519 {key}\nssh-foo AAAA x\nno-pty\ncommand=\"unterminated ssh-ed25519 {key}\ncert-authority ssh-ed25519 {key} ca\nssh-rsa {key}\nssh-ed25519 !!!notbase64\n"
        );
        let parsed = parse_authorized_keys(&text);
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].line, 4);
        assert_eq!(parsed.keys[0].comment, None);
        let reasons: Vec<_> = parsed
            .skipped
            .iter()
            .map(|s| (s.line, s.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (5, "unknown key type \"AAAA\""),
                (6, "options but no key"),
                (7, "an option's quote is not closed"),
                (
                    8,
                    "a cert-authority key (trusts certificates, is not a login key)"
                ),
                (9, "the key data does not hold a ssh-rsa key"),
                (10, "the ssh-ed25519 key is not valid base64"),
            ]
        );
    }
}
