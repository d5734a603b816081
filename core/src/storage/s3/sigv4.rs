//! AWS Signature Version 4 for S3 (path-style requests, any S3-compatible server).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::credentials::Secret;
use crate::checksum::hex;

type HmacSha256 = Hmac<Sha256>;

/// Percent-encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~` (and `/` when asked).
pub(super) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/');
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m =
        HmacSha256::new_from_slice(key).unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The pieces of one signed request.
pub struct Signed {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Signs a request (AWS Signature Version 4, service `s3`).  `query` is unencoded pairs;
/// `extra` are additional headers to sign (lower-case names).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    endpoint: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, &str)],
    payload_sha256: &str,
    region: &str,
    access_key: &str,
    secret: &Secret,
    now: chrono::DateTime<chrono::Utc>,
) -> Signed {
    let host = endpoint
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let canonical_uri = uri_encode(path, true);
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host.to_owned()),
        ("x-amz-content-sha256".into(), payload_sha256.to_owned()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
    );
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", secret.expose()).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
    ));
    // The host header is the agent's to send.
    headers.retain(|(k, _)| k != "host");
    let url = if canonical_query.is_empty() {
        format!("{}{canonical_uri}", endpoint.trim_end_matches('/'))
    } else {
        format!(
            "{}{canonical_uri}?{canonical_query}",
            endpoint.trim_end_matches('/')
        )
    };
    Signed { url, headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of AWS's Signature Version 4 documentation for S3 ("GET Object",
    /// examplebucket, test.txt with a Range header), reproduced here.
    #[test]
    fn signature_matches_the_aws_example() {
        let secret = Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into());
        let now = chrono::DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let empty = hex(&Sha256::digest(b""));
        let s = sign(
            "GET",
            "https://examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            &[("range", "bytes=0-9")],
            &empty,
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            &secret,
            now,
        );
        let auth = &s
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(!auth.contains("wJalr"));
    }
}
