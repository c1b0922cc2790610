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

/// Parses a SHA-256 digest written as 64 hex digits (as `sha256sum` prints it; a trailing
/// file name is not accepted here, the caller splits it off).
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest)
        .map_err(|_| format!("{text:?} is not a SHA-256 digest (64 hex digits)"))?;
    Ok(digest)
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
        assert_eq!(
            parse_sha256(hex).unwrap(),
            <[u8; 32]>::from(Sha256::digest(b"abc"))
        );
        assert_eq!(parse_sha256(&hex.to_uppercase()).unwrap()[0], 0xba);
        assert!(parse_sha256("abc").unwrap_err().contains("64 hex digits"));
        assert!(parse_sha256(&hex.replace('b', "g")).is_err());
    }
}
