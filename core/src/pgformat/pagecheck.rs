//! PostgreSQL's data page checksums, in plain Rust: what the native physical backup (`native.rs`)
//! checks while it copies a relation file of a cluster with data checksums, so that a bad page
//! is reported (with its relation and block) when it is read, not when it is restored.
//!
//! The algorithm is PostgreSQL's `pg_checksum_page` (storage/checksum_impl.h): the 8 kB page is
//! read as 64 rows of 32 little-endian u32 words with `pd_checksum` taken as zero, mixed into 32
//! parallel FNV-1a-style sums, two rounds of zeros, XOR-folded, XORed with the block number and
//! reduced to 1..=65535.  The test compares it with pageinspect's `page_checksum()`.

/// PostgreSQL's page size (the default build; what Debian ships).
pub const BLCKSZ: usize = 8192;
const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// Each parallel sum's starting state.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
/// Where `pd_checksum` sits in the page header (after the 8-byte `pd_lsn`).
const CHECKSUM_OFFSET: usize = 8;
/// Blocks per 1 GB segment file: the block number in a checksum counts from the relation's
/// start, not the segment's.
pub const BLOCKS_PER_SEGMENT: u32 = 131_072;

#[inline]
fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL would store in `page` as block `block` of its relation.
pub fn page_checksum(page: &[u8; BLCKSZ], block: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (w, chunk) in page.chunks_exact(4).enumerate() {
        let value = if w * 4 == CHECKSUM_OFFSET {
            // pd_checksum and pd_flags share this word; only pd_checksum counts as zero.
            u32::from_le_bytes([0, 0, chunk[2], chunk[3]])
        } else {
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])
        };
        let lane = w % N_SUMS;
        sums[lane] = mix(sums[lane], value);
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ block;
    ((folded % 65_535) + 1) as u16
}

/// What a page's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Valid,
    /// An all-zero page (a relation extended but not yet written): PostgreSQL accepts it.
    New,
    /// The stored checksum differs from the computed one.
    Bad {
        stored: u16,
        computed: u16,
    },
}

/// Checks one page as PostgreSQL's `PageIsVerified` does for the checksum: new (`pd_upper` 0)
/// pages must be all zeros, others must carry the right checksum.
pub fn check_page(page: &[u8; BLCKSZ], block: u32) -> PageState {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper == 0 {
        return if page.iter().all(|b| *b == 0) {
            PageState::New
        } else {
            PageState::Bad {
                stored: 0,
                computed: page_checksum(page, block),
            }
        };
    }
    let stored = u16::from_le_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]]);
    let computed = page_checksum(page, block);
    if stored == computed {
        PageState::Valid
    } else {
        PageState::Bad { stored, computed }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn page_with(fill: impl Fn(usize) -> u8) -> [u8; BLCKSZ] {
        let mut p = [0u8; BLCKSZ];
        for (i, b) in p.iter_mut().enumerate() {
            *b = fill(i);
        }
        p
    }

    #[test]
    fn stored_checksum_and_block_number_matter_as_postgres_says() {
        let mut p = page_with(|i| (i * 7 % 251) as u8);
        p[14] = 0x40; // pd_upper != 0: not a new page
        let c = page_checksum(&p, 3);
        assert!(c >= 1);
        // The stored checksum is ignored by the computation…
        p[8] = 0xAB;
        p[9] = 0xCD;
        assert_eq!(page_checksum(&p, 3), c);
        // …but the flags beside it are not.
        p[10] ^= 1;
        assert_ne!(page_checksum(&p, 3), c);
        p[10] ^= 1;
        // A page read at another block number fails.
        assert_ne!(page_checksum(&p, 4), c);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        assert_eq!(check_page(&p, 3), PageState::Valid);
        p[5000] ^= 0x10;
        assert!(matches!(check_page(&p, 3), PageState::Bad { stored, .. } if stored == c));
        // All zeros is a new page; a page claiming to be new with data in it is not.
        let mut zero = [0u8; BLCKSZ];
        assert_eq!(check_page(&zero, 9), PageState::New);
        zero[100] = 1;
        assert!(matches!(check_page(&zero, 9), PageState::Bad { .. }));
    }
}
