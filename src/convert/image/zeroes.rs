//! Finding the long zero runs of a decompressed image. A metal image is mostly free file-system
//! space, which is zeroes; the writer has the kernel zero those ranges (write-zeroes on the
//! device) instead of pushing every zero through the page cache and the disk's link. This room
//! only finds them; it neither writes nor asks the kernel anything.

use std::ops::Range;

/// The largest granule: every chunk the writer is handed starts on a MiB boundary, so a
/// granule of at most 1 MiB never straddles two chunks.
pub const MAX_GRANULE: usize = 1 << 20;

/// The smallest granule: one page, a multiple of every logical sector size (512 and 4096), so
/// an aligned run is always a whole number of sectors.
pub const MIN_GRANULE: usize = 4096;

/// The granule for a requested zero-run size: `None` when zeroing is off (0), else the power of
/// two at least `zero_run`, kept between [`MIN_GRANULE`] and [`MAX_GRANULE`].
pub fn granule(zero_run: usize) -> Option<usize> {
    (zero_run > 0).then(|| {
        zero_run
            .clamp(MIN_GRANULE, MAX_GRANULE)
            .next_power_of_two()
            .min(MAX_GRANULE)
    })
}

/// A stretch of a chunk, as indices into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes to write as they are (zeroes among them when shorter than a granule).
    Data(Range<usize>),
    /// Whole granules of zeroes, one after the other.
    Zero(Range<usize>),
}

/// Splits `chunk`, which starts on a multiple of `granule` in the image, into data and runs of
/// whole zero granules, in order and covering it exactly. A trailing part shorter than a
/// granule is data whatever it holds, so a zero run is always granule-aligned at both ends.
pub fn split(chunk: &[u8], granule: usize) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut push = |zero: bool, range: Range<usize>| match pieces.last_mut() {
        Some(Piece::Zero(last)) if zero => last.end = range.end,
        Some(Piece::Data(last)) if !zero => last.end = range.end,
        _ => pieces.push(if zero {
            Piece::Zero(range)
        } else {
            Piece::Data(range)
        }),
    };
    let mut at = 0;
    while at < chunk.len() {
        let end = (at + granule).min(chunk.len());
        let whole = end - at == granule;
        push(whole && is_zero(&chunk[at..end]), at..end);
        at = end;
    }
    pieces
}

/// Whether every byte is zero. ORs a page at a time (which the compiler turns into wide vector
/// operations) and stops at the first page holding anything: data is found at once, a zero
/// granule costs one pass at memory speed.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn granules_are_powers_of_two_within_bounds() {
        assert_eq!(granule(0), None);
        assert_eq!(granule(1), Some(4 * KIB));
        assert_eq!(granule(4 * KIB), Some(4 * KIB));
        assert_eq!(granule(5 * KIB), Some(8 * KIB));
        assert_eq!(granule(1 << 20), Some(1 << 20));
        assert_eq!(granule(3 << 20), Some(1 << 20));
        assert_eq!(granule(usize::MAX), Some(1 << 20));
    }

    #[test]
    fn zero_granules_are_found_and_merged() {
        let g = 4 * KIB;
        let mut chunk = vec![0u8; 8 * g];
        chunk[g + 17] = 1; // granule 1 holds data
        chunk[5 * g] = 9; // granule 5 too
        assert_eq!(
            split(&chunk, g),
            vec![
                Piece::Zero(0..g),
                Piece::Data(g..2 * g),
                Piece::Zero(2 * g..5 * g),
                Piece::Data(5 * g..6 * g),
                Piece::Zero(6 * g..8 * g),
            ]
        );
    }

    #[test]
    fn a_short_tail_is_data_even_when_zero() {
        let g = 4 * KIB;
        let chunk = vec![0u8; 2 * g + 512];
        assert_eq!(
            split(&chunk, g),
            vec![Piece::Zero(0..2 * g), Piece::Data(2 * g..2 * g + 512)]
        );
        assert_eq!(split(&chunk[..100], g), vec![Piece::Data(0..100)]);
        assert_eq!(split(&[], g), vec![]);
    }

    #[test]
    fn a_single_byte_anywhere_makes_its_granule_data() {
        let g = 8 * KIB;
        for at in [0, 1, 4095, 4096, g - 1] {
            let mut chunk = vec![0u8; 2 * g];
            chunk[at] = 0x80;
            assert_eq!(
                split(&chunk, g),
                vec![Piece::Data(0..g), Piece::Zero(g..2 * g)],
                "byte at {at}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn pieces_cover_the_chunk_and_zero_pieces_are_zero(
            bytes in proptest::collection::vec(proptest::prop_oneof![3 => proptest::strategy::Just(0u8), 1 => proptest::num::u8::ANY], 0..400),
            shift in 12u32..14,
        ) {
            let g = 1usize << shift;
            // Runs of zeroes long enough to matter: stretch each byte over 512.
            let chunk: Vec<u8> = bytes.iter().flat_map(|&b| std::iter::repeat_n(b, 256)).collect();
            let pieces = split(&chunk, g);
            let mut at = 0;
            for piece in &pieces {
                match piece {
                    Piece::Data(r) => { proptest::prop_assert_eq!(r.start, at); at = r.end; }
                    Piece::Zero(r) => {
                        proptest::prop_assert_eq!(r.start, at);
                        proptest::prop_assert!(r.start % g == 0 && r.len() % g == 0);
                        proptest::prop_assert!(is_zero(&chunk[r.clone()]));
                        at = r.end;
                    }
                }
            }
            proptest::prop_assert_eq!(at, chunk.len());
            // Every whole zero granule was found.
            for (i, granule) in chunk.chunks_exact(g).enumerate() {
                if is_zero(granule) {
                    proptest::prop_assert!(pieces.iter().any(|p| matches!(p, Piece::Zero(r) if r.contains(&(i * g)))));
                }
            }
        }
    }
}
