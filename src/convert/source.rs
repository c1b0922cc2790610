//! Where the image comes from: a file, or an http(s) URL fetched with a small blocking client
//! (ureq, rustls, the Mozilla root store). It decides nothing; the plan decides what to fetch
//! and how to verify.
//!
//! Guarantees: a server that answers an error status, or stops sending for
//! [`Timeouts::stall`], ends the read with one line naming the URL and what to do; nothing is
//! retried silently. [`download`] leaves no file behind when verification fails.
//! [`check_signature`] runs Debian's `gpgv` on a detached OpenPGP signature with only the
//! keyring the admin named, streaming the image through its standard input while hashing it,
//! so one pass gives both the signature's verdict and the digest the installer then checks.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::image::format::{self, Format, XZ_TAIL_LEN};
use super::image::verify::HashingReader;

/// A signature file larger than this is not a detached signature.
const MAX_SIGNATURE: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url(url) => f.write_str(url),
        }
    }
}

impl Source {
    /// `http://…`, `https://…`, `file:///…` or a path. A relative path is made absolute, since
    /// the plan is read elsewhere.
    pub fn parse(text: &str) -> Result<Source, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Url(text.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Source::File(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "{text}: {scheme}:// is not supported; give an http(s) URL or a file path"
            ));
        }
        let path = Path::new(text);
        Ok(Source::File(if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_owned())
        }))
    }

    pub fn is_url(&self) -> bool {
        matches!(self, Source::Url(_))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// No byte for this long ends the transfer.
    pub stall: Duration,
}

impl Timeouts {
    /// `stall` without data ends a transfer; connecting may take as long, up to 30 s.
    pub fn stalling_after(stall: Duration) -> Timeouts {
        Timeouts {
            connect: stall.min(Duration::from_secs(30)),
            stall,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            stall: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image {path}: {source}; give the path of a NestOS metal image (.raw, .raw.xz, .raw.gz, .raw.zst)")]
    File {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {url}: the server answered {status}; check the URL")]
    Status { url: String, status: String },
    #[error("GET {url}: {message}; check the address and that the server is reachable")]
    Transport { url: String, message: String },
    #[error("reading {what}: no data for {secs} s, the server stalled; try again, or use another mirror")]
    Stalled { what: String, secs: u64 },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("image checksum mismatch: expected sha256 {expected}, got {actual}; the image is corrupt, truncated, or not the one the checksum is for")]
    Checksum { expected: String, actual: String },
    #[error("{0}")]
    Said(String),
    #[error("signature {signature}: {message}")]
    Signature { signature: String, message: String },
}

/// An opened source: a reader and its length when known.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
}

fn agent(timeouts: Timeouts) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeouts.connect)
        .timeout_read(timeouts.stall)
        .build()
}

fn request(
    url: &str,
    timeouts: Timeouts,
    range: Option<&str>,
) -> Result<ureq::Response, SourceError> {
    let mut req = agent(timeouts).get(url);
    if let Some(range) = range {
        req = req.set("Range", range);
    }
    req.call().map_err(|e| match e {
        ureq::Error::Status(code, resp) => SourceError::Status {
            url: url.to_owned(),
            status: format!("{code} {}", resp.status_text()),
        },
        ureq::Error::Transport(t) => {
            if is_timeout(&t.to_string()) {
                SourceError::Stalled {
                    what: url.to_owned(),
                    secs: timeouts.stall.as_secs(),
                }
            } else {
                SourceError::Transport {
                    url: url.to_owned(),
                    message: t.to_string(),
                }
            }
        }
    })
}

fn is_timeout(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("timed out") || m.contains("would block") || m.contains("temporarily unavailable")
}

/// Turns a socket timeout inside a body read into a "stalled" error that names the URL.
struct StallReader<R> {
    inner: R,
    what: String,
    secs: u64,
}

impl<R: Read> Read for StallReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) || is_timeout(&e.to_string())
            {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    SourceError::Stalled {
                        what: self.what.clone(),
                        secs: self.secs,
                    }
                    .to_string(),
                )
            } else {
                e
            }
        })
    }
}

/// Opens the source for reading from its start.
pub fn open(source: &Source, timeouts: Timeouts) -> Result<Opened, SourceError> {
    match source {
        Source::File(path) => {
            let file = File::open(path).map_err(|e| file_error(path, e))?;
            let length = file.metadata().map_err(|e| file_error(path, e))?.len();
            Ok(Opened {
                reader: Box::new(file),
                length: Some(length),
            })
        }
        Source::Url(url) => {
            let resp = request(url, timeouts, None)?;
            let length = resp.header("Content-Length").and_then(|l| l.parse().ok());
            Ok(Opened {
                reader: Box::new(StallReader {
                    inner: resp.into_reader(),
                    what: url.clone(),
                    secs: timeouts.stall.as_secs(),
                }),
                length,
            })
        }
    }
}

fn file_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::File {
        path: path.display().to_string(),
        source,
    }
}

/// What can be told about an image without reading all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    /// Bytes as read.
    pub length: Option<u64>,
    /// Bytes once decompressed, when the format tells (raw: the length; xz: its index).
    pub image_bytes: Option<u64>,
}

/// Checks that the source is there and reads its head (format) and, for xz, its index (size).
pub fn probe(source: &Source, timeouts: Timeouts) -> Result<Probe, SourceError> {
    let opened = open(source, timeouts)?;
    let mut head = Vec::new();
    opened
        .reader
        .take(format::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| read_error(source, e))?;
    let format = format::sniff(&head);
    let image_bytes = match (format, opened.length) {
        (Format::Raw, length) => length,
        (Format::Xz, Some(length)) => tail(source, length, timeouts)
            .ok()
            .flatten()
            .and_then(|t| format::xz_image_size(&t, length)),
        _ => None,
    };
    Ok(Probe {
        format,
        length: opened.length,
        image_bytes,
    })
}

/// The last [`XZ_TAIL_LEN`] bytes (a Range request for a URL; `None` if the server ignores it).
fn tail(source: &Source, length: u64, timeouts: Timeouts) -> Result<Option<Vec<u8>>, SourceError> {
    let want = length.min(XZ_TAIL_LEN as u64);
    let mut out = Vec::new();
    match source {
        Source::File(path) => {
            use std::io::{Seek, SeekFrom};
            let mut file = File::open(path).map_err(|e| file_error(path, e))?;
            file.seek(SeekFrom::Start(length - want))
                .and_then(|_| file.take(want).read_to_end(&mut out))
                .map_err(|e| file_error(path, e))?;
        }
        Source::Url(url) => {
            let resp = request(url, timeouts, Some(&format!("bytes={}-", length - want)))?;
            if resp.status() != 206 {
                return Ok(None);
            }
            resp.into_reader()
                .take(want)
                .read_to_end(&mut out)
                .map_err(|e| read_error(source, e))?;
        }
    }
    Ok(Some(out))
}

fn read_error(source: &Source, e: io::Error) -> SourceError {
    // A stall already says all (see StallReader); anything else is named here.
    if e.kind() == io::ErrorKind::TimedOut {
        if let Some(inner) = e
            .get_ref()
            .filter(|i| i.to_string().starts_with("reading "))
        {
            return SourceError::Said(inner.to_string());
        }
    }
    SourceError::Read {
        what: source.to_string(),
        source: e,
    }
}

/// Copies the source into `dest` (created 0600), hashing on the way; when `expected` is
/// given and differs, the file is removed and the mismatch reported.
pub fn download(
    source: &Source,
    dest: &Path,
    expected: Option<[u8; 32]>,
    timeouts: Timeouts,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<([u8; 32], u64), SourceError> {
    let opened = open(source, timeouts)?;
    let length = opened.length;
    let result = (|| {
        let mut out = create_private(dest).map_err(|e| write_error(dest, e))?;
        let mut reader = HashingReader::new(opened.reader);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| read_error(source, e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|e| write_error(dest, e))?;
            progress(reader.count(), length);
        }
        out.sync_all().map_err(|e| write_error(dest, e))?;
        let (digest, len) = reader.finish().map_err(|e| read_error(source, e))?;
        check_digest(expected, digest)?;
        Ok((digest, len))
    })();
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

/// Hashes the whole source (a carried image is checked once more before anything is written).
pub fn digest(source: &Source, timeouts: Timeouts) -> Result<([u8; 32], u64), SourceError> {
    let opened = open(source, timeouts)?;
    let mut reader = HashingReader::new(opened.reader);
    io::copy(&mut reader, &mut io::sink()).map_err(|e| read_error(source, e))?;
    reader.finish().map_err(|e| read_error(source, e))
}

/// A mismatch, in the one line the admin sees.
pub fn check_digest(expected: Option<[u8; 32]>, actual: [u8; 32]) -> Result<(), SourceError> {
    match expected {
        Some(expected) if expected != actual => Err(SourceError::Checksum {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        }),
        _ => Ok(()),
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn write_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Write {
        path: path.display().to_string(),
        source,
    }
}

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

    let mut cmd = Command::new("gpgv");
    cmd.arg("--status-fd=1")
        .arg("--keyring")
        .arg(keyring)
        .arg(&sig_path)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = format!(
        "gpgv --status-fd=1 --keyring {} {} -",
        keyring.display(),
        sig_path.display()
    );
    let mut child = cmd.spawn().map_err(|e| {
        fail(format!(
            "running `{line}`: {e}; install gpgv (apt-get install gpgv / dnf install gnupg2)"
        ))
    })?;
    let opened = open(image, timeouts)?;
    let mut reader = HashingReader::new(opened.reader);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let copied = io::copy(&mut reader, &mut stdin);
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for `{line}`: {e}")))?;
    if let Err(e) = copied {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(read_error(image, e));
        }
    }
    let status = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !status.contains("[GNUPG:] VALIDSIG") {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no valid signature")
            .trim()
            .to_owned();
        return Err(fail(format!(
            "does not verify the image with the keyring {} (`{line}`: {why}); the image is not the one that was signed, or the key is not in that keyring",
            keyring.display()
        )));
    }
    let (digest, _) = reader.finish().map_err(|e| read_error(image, e))?;
    Ok(digest)
}

/// Bytes fetched per range request when an image is read in place from a URL.
const RANGE_BLOCK: u64 = 256 << 10;
/// Blocks kept: directory sectors and small files are read again and again.
const RANGE_BLOCKS_KEPT: usize = 8;

/// An http(s) file read by offset through Range requests, a block at a time with the last
/// few blocks kept: `x2nestos plan --live URL` reads an ISO's directories, boot entries and
/// the kernel's header from a mirror without downloading the whole image.
pub struct RangedUrl {
    url: String,
    timeouts: Timeouts,
    len: u64,
    kept: std::sync::Mutex<std::collections::VecDeque<(u64, std::sync::Arc<Vec<u8>>)>>,
}

impl RangedUrl {
    /// Fetches the first block; a server that does not answer with 206 Partial Content and
    /// the total length cannot be read in place.
    pub fn open(url: &str, timeouts: Timeouts) -> Result<RangedUrl, SourceError> {
        let (first, len) = fetch_block(url, timeouts, 0)?;
        Ok(RangedUrl {
            url: url.to_owned(),
            timeouts,
            len,
            kept: std::sync::Mutex::new([(0, first)].into()),
        })
    }

    fn block(&self, index: u64) -> io::Result<std::sync::Arc<Vec<u8>>> {
        if let Some((_, b)) = self.kept.lock().unwrap().iter().find(|(i, _)| *i == index) {
            return Ok(b.clone());
        }
        let (block, _) = fetch_block(&self.url, self.timeouts, index)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut kept = self.kept.lock().unwrap();
        if kept.len() == RANGE_BLOCKS_KEPT {
            kept.pop_front();
        }
        kept.push_back((index, block.clone()));
        Ok(block)
    }
}

/// Block `index` of `url` and the file's total length, by one Range request.
fn fetch_block(
    url: &str,
    timeouts: Timeouts,
    index: u64,
) -> Result<(std::sync::Arc<Vec<u8>>, u64), SourceError> {
    let start = index * RANGE_BLOCK;
    let range = format!("bytes={start}-{}", start + RANGE_BLOCK - 1);
    let resp = request(url, timeouts, Some(&range))?;
    let said = resp
        .header("Content-Range")
        .and_then(parse_content_range)
        .filter(|_| resp.status() == 206);
    let Some((first, last, total)) = said.filter(|&(first, ..)| first == start) else {
        return Err(SourceError::Said(format!(
            "GET {}: the server does not answer range requests (206 with Content-Range), which reading the image in place needs; download it and give its path",
            url
        )));
    };
    let mut block = Vec::with_capacity((last + 1 - first) as usize);
    StallReader {
        inner: resp.into_reader(),
        what: url.to_owned(),
        secs: timeouts.stall.as_secs(),
    }
    .take(last + 1 - first)
    .read_to_end(&mut block)
    .map_err(|e| read_error(&Source::Url(url.to_owned()), e))?;
    if block.len() as u64 != last + 1 - first {
        return Err(SourceError::Said(format!(
            "GET {}: bytes {first}-{last} ended after {} bytes; try again, or use another mirror",
            url,
            block.len()
        )));
    }
    Ok((std::sync::Arc::new(block), total))
}

impl super::overlay::iso::ReadAt for RangedUrl {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let block = self.block(offset / RANGE_BLOCK)?;
        let at = (offset % RANGE_BLOCK) as usize;
        let n = buf.len().min(block.len().saturating_sub(at));
        buf[..n].copy_from_slice(&block[at..at + n]);
        Ok(n)
    }
}

/// `bytes FIRST-LAST/TOTAL` from a Content-Range header (the total must be known).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-262143/1048576"),
            Some((0, 262143, 1048576))
        );
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, 200))
        );
        // The total must be known, the range inside it and in order.
        assert_eq!(parse_content_range("bytes 0-99/*"), None);
        assert_eq!(parse_content_range("bytes 0-200/200"), None);
        assert_eq!(parse_content_range("bytes 9-1/200"), None);
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("http://10.0.2.2:8080/metal.raw.xz").unwrap(),
            Source::Url("http://10.0.2.2:8080/metal.raw.xz".into())
        );
        assert!(Source::parse("https://x/y").unwrap().is_url());
        assert_eq!(
            Source::parse("file:///srv/metal.raw").unwrap(),
            Source::File("/srv/metal.raw".into())
        );
        assert_eq!(
            Source::parse("/srv/metal.raw").unwrap(),
            Source::File("/srv/metal.raw".into())
        );
        let relative = Source::parse("metal.raw").unwrap();
        assert!(
            matches!(&relative, Source::File(p) if p.is_absolute()),
            "{relative:?}"
        );
        let err = Source::parse("ftp://x/y").unwrap_err();
        assert_eq!(
            err,
            "ftp://x/y: ftp:// is not supported; give an http(s) URL or a file path"
        );
    }

    #[test]
    fn a_file_is_probed_and_downloaded_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("image.raw");
        fs::write(&raw, vec![7u8; 3 << 20]).unwrap();
        let source = Source::File(raw);
        let probed = probe(&source, Timeouts::default()).unwrap();
        assert_eq!(probed.format, Format::Raw);
        assert_eq!(probed.image_bytes, Some(3 << 20));
        let dest = dir.path().join("copy");
        let mut seen = 0;
        let (sum, len) = download(&source, &dest, None, Timeouts::default(), &mut |n, _| {
            seen = n
        })
        .unwrap();
        assert_eq!((len, seen), (3 << 20, 3 << 20));
        assert_eq!(sum, digest_of(&dest));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            digest(&source, Timeouts::default()).unwrap().0,
            digest_of(&dest)
        );

        let err = download(
            &source,
            &dest,
            Some([0; 32]),
            Timeouts::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("image checksum mismatch: expected sha256 0000"),
            "{err}"
        );
        assert!(!dest.exists(), "a failed download leaves no file");

        let missing = Source::File(dir.path().join("nope.raw.xz"));
        let err = probe(&missing, Timeouts::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.raw.xz: No such file"), "{err}");
        assert!(err.ends_with("(.raw, .raw.xz, .raw.gz, .raw.zst)"), "{err}");
    }

    fn digest_of(path: &Path) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(fs::read(path).unwrap()).into()
    }
}
