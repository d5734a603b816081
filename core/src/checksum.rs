//! Checksums as the catalog stores them: sha256, 64 lower-case hex characters.

pub const SHA256_HEX_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("checksum \"{0}\" is not a sha256 digest of 64 hexadecimal characters")]
    Malformed(String),
}

/// Lower-case hex of `bytes` (a digest).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xF)] as char);
    }
    out
}

/// Whether `s` is a sha256 digest as the catalog stores it (64 lower-case hex digits): what a
/// manifest line or a catalog row must hold before it is used or written into a script.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Validates a sha256 hex digest and returns it in lower case, the form the catalog stores.
pub fn normalize_sha256_hex(s: &str) -> Result<String, ChecksumError> {
    if s.len() == SHA256_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ChecksumError::Malformed(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases_digests() {
        let d = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(normalize_sha256_hex(d).unwrap(), d.to_ascii_lowercase());
        assert!(is_sha256_hex(&d.to_ascii_lowercase()));
        assert!(!is_sha256_hex(d), "upper case is not the stored form");
    }

    #[test]
    fn refuses_wrong_length_and_non_hex() {
        assert!(normalize_sha256_hex("").is_err());
        assert!(normalize_sha256_hex(&"a".repeat(63)).is_err());
        assert!(normalize_sha256_hex(&"a".repeat(65)).is_err());
        assert!(normalize_sha256_hex(&format!("{}g", "a".repeat(63))).is_err());
        // A multi-byte character must not pass a byte-length check.
        assert!(normalize_sha256_hex(&format!("{}é", "a".repeat(62))).is_err());
        assert!(!is_sha256_hex(&format!("{}\n", "a".repeat(63))));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xAB, 0x7F]), "00ab7f");
    }
}
