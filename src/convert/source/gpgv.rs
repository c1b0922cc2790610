//! The detached OpenPGP signature check: Debian's `gpgv` with only the keyring the admin
//! named, the image streamed through its standard input while it is hashed, so one pass gives
//! both the signature's verdict and the digest the installer then checks. The verdict is
//! gpgv's `VALIDSIG` status line, not its exit status alone.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::{open, read_error, write_error, Source, SourceError, Timeouts};
use crate::convert::image::verify::HashingReader;
use crate::sys::command::{Cmd, CommandError};

/// A signature file larger than this is not a detached signature.
const MAX_SIGNATURE: u64 = 64 << 10;

/// Checks a detached OpenPGP signature over the image with `gpgv` and only `keyring`, and
/// returns the image's SHA-256 computed in the same pass.
pub fn check_signature(
    image: &Source,
    signature: &Source,
    keyring: &Path,
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

    let gpgv = Cmd::new("gpgv")
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
    if !fed.status.success() || !fed.stdout.contains("[GNUPG:] VALIDSIG") {
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
    let (digest, _) = reader.finish().map_err(|e| read_error(image, e))?;
    Ok(digest)
}
