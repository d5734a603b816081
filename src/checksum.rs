//! Checksums as the catalog stores them: sha256, 64 lower-case hex characters.

use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

pub const SHA256_HEX_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("checksum \"{0}\" is not a sha256 digest of 64 hexadecimal characters")]
    Malformed(String),
}

impl From<ChecksumError> for ErrorReport {
    fn from(e: ChecksumError) -> Self {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string(), "backup_mgmt")
            .set_hint("Pass the output of sha256sum (64 hex characters), or NULL when the checksum is not known.")
    }
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
    }

    #[test]
    fn refuses_wrong_length_and_non_hex() {
        assert!(normalize_sha256_hex("").is_err());
        assert!(normalize_sha256_hex(&"a".repeat(63)).is_err());
        assert!(normalize_sha256_hex(&"a".repeat(65)).is_err());
        assert!(normalize_sha256_hex(&format!("{}g", "a".repeat(63))).is_err());
        // A multi-byte character must not pass a byte-length check.
        assert!(normalize_sha256_hex(&format!("{}é", "a".repeat(62))).is_err());
    }
}
