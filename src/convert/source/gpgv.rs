//! The detached OpenPGP signature check: Debian's `gpgv` with only the keyring the admin
//! named, the image streamed through its standard input while it is hashed, so one pass gives
//! both the signature's verdict and the digest the installer then checks.
//!
//! gpgv runs with an empty home of its own (no `trustedkeys.kbx` of root's is consulted). Its
//! exit status alone is not the verdict: gpgv exits 0 for a signature made with an expired
//! key, so the status lines are parsed ([`verdict`]) and a signature counts only when every
//! one in the file is good (`GOODSIG` and `VALIDSIG`; `EXPKEYSIG`, `REVKEYSIG`, `EXPSIG`,
//! `BADSIG`, `ERRSIG` refuse), and, with `--fingerprint`, made with the pinned key.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::{open, read_error, write_error, Source, SourceError, Timeouts};
use crate::convert::image::verify::HashingReader;
use crate::sys::command::{Cmd, CommandError};

/// A signature file larger than this is not a detached signature.
const MAX_SIGNATURE: u64 = 64 << 10;

/// An OpenPGP key fingerprint: 40 (v4) or 64 (v5) hex digits, kept in upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Parses a fingerprint as `gpg --fingerprint` prints it (spaces allowed, any case).
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let hex = hex.strip_prefix("0x").unwrap_or(&hex).to_ascii_uppercase();
        if !(hex.len() == 40 || hex.len() == 64) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not an OpenPGP fingerprint (40 or 64 hex digits, as `gpg --fingerprint` prints)"
            ));
        }
        Ok(Fingerprint(hex))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why gpgv's status lines do not show a good signature.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("was made with key {0}, which has expired; get the image signed with a current key, or a keyring with the key's renewed expiry")]
    ExpiredKey(String),
    #[error("was made with key {0}, which is revoked: do not trust this image")]
    RevokedKey(String),
    #[error("has expired (key {0}); get a current signature of the image")]
    ExpiredSignature(String),
    #[error("is BAD (key {0}): the image is not the one that was signed")]
    Bad(String),
    #[error("cannot be checked (key {key}, gpg error code {code}): the key is not in the keyring, or the signature is damaged")]
    Unchecked { key: String, code: String },
    #[error("shows no good signature")]
    NoGoodSignature,
    #[error("was made with key {signer}, not the pinned --fingerprint {pinned}; check which key signs these images")]
    NotPinned { signer: String, pinned: Fingerprint },
}

/// The signer's primary key fingerprint when gpgv's status lines show every signature good
/// (and one made with `pinned`, when given); else why not.
pub fn verdict(status: &str, pinned: Option<&Fingerprint>) -> Result<String, Refusal> {
    let mut good = 0;
    let mut valid: Vec<(String, String)> = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split_ascii_whitespace();
        let keyword = words.next().unwrap_or_default();
        let first = words.next().unwrap_or_default().to_owned();
        match keyword {
            "GOODSIG" => good += 1,
            "EXPKEYSIG" => return Err(Refusal::ExpiredKey(first)),
            "REVKEYSIG" => return Err(Refusal::RevokedKey(first)),
            "EXPSIG" => return Err(Refusal::ExpiredSignature(first)),
            "BADSIG" => return Err(Refusal::Bad(first)),
            "ERRSIG" => {
                return Err(Refusal::Unchecked {
                    key: first,
                    code: rest
                        .split_ascii_whitespace()
                        .last()
                        .unwrap_or("?")
                        .to_owned(),
                })
            }
            "VALIDSIG" => {
                // VALIDSIG <fpr> <date> <timestamp> <expires> <version> <reserved> <pk-algo>
                // <hash-algo> <class> <primary-fpr>
                let primary = words
                    .nth(8)
                    .map(str::to_owned)
                    .unwrap_or_else(|| first.clone());
                valid.push((first.to_ascii_uppercase(), primary.to_ascii_uppercase()));
            }
            _ => {}
        }
    }
    if good == 0 || valid.len() < good {
        return Err(Refusal::NoGoodSignature);
    }
    match pinned {
        None => Ok(valid[0].1.clone()),
        Some(pin) => valid
            .iter()
            .find(|(fpr, primary)| *fpr == pin.0 || *primary == pin.0)
            .map(|(_, primary)| primary.clone())
            .ok_or_else(|| Refusal::NotPinned {
                signer: valid[0].1.clone(),
                pinned: pin.clone(),
            }),
    }
}

/// Checks a detached OpenPGP signature over the image with `gpgv` and only `keyring` (made
/// with the `pinned` key, when given), and returns the image's SHA-256 computed in the same
/// pass.
pub fn check_signature(
    image: &Source,
    signature: &Source,
    keyring: &Path,
    pinned: Option<&Fingerprint>,
    timeouts: Timeouts,
) -> Result<[u8; 32], SourceError> {
    let sig_name = signature.to_string();
    let fail = |message: String| SourceError::Signature {
        signature: sig_name.clone(),
        message,
    };
    if !keyring.is_file() {
        return Err(fail(format!(
            "the keyring {} does not exist; give the OpenPGP public keys the image is signed with (`gpg --export KEYID >FILE`)",
            keyring.display()
        )));
    }
    let sig = open(signature, timeouts)?;
    let mut sig_bytes = Vec::new();
    sig.reader
        .take(MAX_SIGNATURE + 1)
        .read_to_end(&mut sig_bytes)
        .map_err(|e| read_error(signature, e))?;
    if sig_bytes.len() as u64 > MAX_SIGNATURE {
        return Err(fail("larger than 64 KiB: not a detached signature".into()));
    }
    let dir = tempfile::tempdir().map_err(|e| write_error(Path::new("/tmp"), e))?;
    let sig_path = dir.path().join("image.sig");
    fs::write(&sig_path, &sig_bytes).map_err(|e| write_error(&sig_path, e))?;

    // An empty home: gpgv would otherwise add root's ~/.gnupg/trustedkeys.kbx to the keys.
    let home = dir.path().join("home");
    fs::create_dir(&home).map_err(|e| write_error(&home, e))?;
    let gpgv = Cmd::new("gpgv")
        .arg("--homedir")
        .arg(&home)
        .arg("--status-fd=1")
        .arg("--keyring")
        .arg(keyring)
        .arg(&sig_path)
        .arg("-");
    let opened = open(image, timeouts)?;
    let mut reader = HashingReader::new(opened.reader);
    let fed = match gpgv.run_fed(&mut reader) {
        Ok(fed) => fed,
        Err(CommandError::Spawn { line, source, .. }) => {
            return Err(fail(format!(
            "running `{line}`: {source}; install gpgv (apt-get install gpgv / dnf install gnupg2)"
        )))
        }
        Err(CommandError::Input { source, .. }) => return Err(read_error(image, source)),
        Err(e) => return Err(fail(e.to_string())),
    };
    if !fed.status.success() {
        let why = fed
            .stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no valid signature")
            .trim()
            .to_owned();
        return Err(fail(format!(
            "does not verify the image with the keyring {} (`{}`: {why}); the image is not the one that was signed, or the key is not in that keyring",
            keyring.display(),
            fed.line
        )));
    }
    verdict(&fed.stdout, pinned).map_err(|refusal| fail(refusal.to_string()))?;
    let (digest, _) = reader.finish().map_err(|e| read_error(image, e))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPR: &str = "1E0A7F8A21F29FC5F3469249295C949DA3C197DC";
    const SUB: &str = "AAAABBBBCCCCDDDDEEEEFFFF0000111122223333";

    fn status(kind: &str, signer: &str, primary: &str) -> String {
        format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] KEY_CONSIDERED {primary} 0\n[GNUPG:] SIG_ID x 2020-01-01 1577840400\n\
             [GNUPG:] {kind} 295C949DA3C197DC test <t@x>\n\
             [GNUPG:] VALIDSIG {signer} 2020-01-01 1577840400 0 4 0 22 8 00 {primary}\n"
        )
    }

    #[test]
    fn only_good_signatures_by_the_pinned_key_count() {
        assert_eq!(verdict(&status("GOODSIG", FPR, FPR), None), Ok(FPR.into()));
        // A subkey's signature answers with its primary key.
        let pin = Fingerprint::parse(&FPR.to_lowercase()).unwrap();
        assert_eq!(
            verdict(&status("GOODSIG", SUB, FPR), Some(&pin)),
            Ok(FPR.into())
        );
        let other = Fingerprint::parse(&"AB".repeat(20)).unwrap();
        let err = verdict(&status("GOODSIG", FPR, FPR), Some(&other)).unwrap_err();
        assert!(
            err.to_string()
                .contains("not the pinned --fingerprint ABAB"),
            "{err}"
        );
        // What gpgv says with exit status 0 for an expired key (captured from gpgv 2.2).
        assert_eq!(
            verdict(&status("EXPKEYSIG", FPR, FPR), None),
            Err(Refusal::ExpiredKey("295C949DA3C197DC".into()))
        );
        assert!(matches!(
            verdict(&status("REVKEYSIG", FPR, FPR), None),
            Err(Refusal::RevokedKey(_))
        ));
        assert!(matches!(
            verdict(&status("EXPSIG", FPR, FPR), None),
            Err(Refusal::ExpiredSignature(_))
        ));
        // Two signatures, one bad: refused.
        let two = format!(
            "{}[GNUPG:] BADSIG 1234 other <o@x>\n",
            status("GOODSIG", FPR, FPR)
        );
        assert!(matches!(verdict(&two, None), Err(Refusal::Bad(_))));
        assert_eq!(
            verdict("[GNUPG:] ERRSIG 1234 22 8 00 1577840400 9 -\n", None),
            Err(Refusal::Unchecked {
                key: "1234".into(),
                code: "-".into()
            })
        );
        // A line that merely mentions VALIDSIG is not one.
        assert_eq!(
            verdict("gpgv: [GNUPG:] VALIDSIG forged\n", None),
            Err(Refusal::NoGoodSignature)
        );
        assert_eq!(verdict("", None), Err(Refusal::NoGoodSignature));
    }

    #[test]
    fn fingerprints_parse_as_gpg_prints_them() {
        let f = Fingerprint::parse("1E0A 7F8A 21F2 9FC5 F346  9249 295C 949D A3C1 97DC").unwrap();
        assert_eq!(f.to_string(), FPR);
        assert!(
            Fingerprint::parse("295C949DA3C197DC").is_err(),
            "a key id is not a fingerprint"
        );
        assert!(Fingerprint::parse(&"G".repeat(40)).is_err());
    }
}
