//! An http(s) file read by offset through Range requests, so `x2nestos plan --live URL` reads
//! an ISO's directories, boot entries and kernel header from a mirror without downloading the
//! whole image. A server that does not answer ranges is refused in one line, never read
//! whole behind the admin's back.

use std::io::{self, Read};

use super::{read_error, request, Source, SourceError, StallReader, Timeouts};

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
    // The block asked for, no more: a server's Content-Range sizes the buffer below.
    let Some((first, last, total)) =
        said.filter(|&(first, last, _)| first == start && last - first < RANGE_BLOCK)
    else {
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

impl crate::convert::overlay::iso::ReadAt for RangedUrl {
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
}
