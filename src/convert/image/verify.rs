//! A `Read` adapter that hashes what passes through it, so an image is verified while it
//! streams instead of being read twice.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Passes bytes through and feeds them to SHA-256; counts them too.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.bytes
    }

    /// Reads whatever is left (a decompressor may stop before trailing padding), then returns
    /// the digest of the whole stream and its length.
    pub fn finish(mut self) -> io::Result<([u8; 32], u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finalize().into(), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A SHA-256 digest the admin gave (`--sha256`) or that was computed: 64 hex digits parsed
/// once, shown and serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Sha256Sum([u8; 32]);

impl Sha256Sum {
    /// Parses 64 hex digits (as `sha256sum` prints them; a trailing file name is not
    /// accepted here, the caller splits it off).
    pub fn parse(text: &str) -> Result<Sha256Sum, String> {
        let text = text.trim();
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest)
            .map_err(|_| format!("{text:?} is not a SHA-256 digest (64 hex digits)"))?;
        Ok(Sha256Sum(digest))
    }

    pub fn bytes(self) -> [u8; 32] {
        self.0
    }
}

/// [`Sha256Sum::parse`], for callers that need the bytes.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    Sha256Sum::parse(text).map(Sha256Sum::bytes)
}

impl From<[u8; 32]> for Sha256Sum {
    fn from(bytes: [u8; 32]) -> Self {
        Sha256Sum(bytes)
    }
}

impl std::fmt::Display for Sha256Sum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Sha256Sum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Sum({self})")
    }
}

impl From<Sha256Sum> for String {
    fn from(sum: Sha256Sum) -> String {
        sum.to_string()
    }
}

impl TryFrom<String> for Sha256Sum {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Sha256Sum::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_bytes_left_unread() {
        let mut reader = HashingReader::new(&b"abc-and-more"[..]);
        let mut first = [0u8; 3];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(reader.count(), 3);
        let (digest, len) = reader.finish().unwrap();
        assert_eq!(len, 12);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"abc-and-more")));
    }

    #[test]
    fn parses_hex_digests() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let sum = Sha256Sum::parse(hex).unwrap();
        assert_eq!(sum.bytes(), <[u8; 32]>::from(Sha256::digest(b"abc")));
        assert_eq!(Sha256Sum::parse(&hex.to_uppercase()).unwrap(), sum);
        assert_eq!(sum.to_string(), hex, "shown as lowercase hex");
        assert!(Sha256Sum::parse("abc")
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(Sha256Sum::parse(&hex.replace('b', "g")).is_err());
        // On the wire: a hex string, read back only when it is one.
        let json = serde_json::to_string(&sum).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<Sha256Sum>(&json).unwrap(), sum);
        assert!(serde_json::from_str::<Sha256Sum>("\"abc\"").is_err());
    }
}
