//! SigV4 for S3 with the `aws-sigv4` crate, as pure functions of (request, credentials, time):
//! header signing for s3warden's own requests and query pre-signing for URLs handed to browsers.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use http::{HeaderMap, HeaderValue, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;

use super::credentials::Keys;

/// Query values keep only RFC 3986 unreserved characters, as SigV4's canonical form does.
pub(crate) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The body's hash as S3 needs it in `x-amz-content-sha256`.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// A body known in full (empty for GET, HEAD and DELETE).
    Bytes(&'a [u8]),
    /// A streamed body whose hash is not computed (`UNSIGNED-PAYLOAD`).
    Unsigned,
}

/// Signing failed: only for malformed input, which s3warden never builds.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(String);

impl SignError {
    pub(crate) fn new(message: String) -> SignError {
        SignError(message)
    }
}

/// Everything signing needs besides the request and the keys.
#[derive(Clone)]
pub struct Signer {
    region: String,
}

impl Signer {
    /// The region it signs for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// A signer for `region`.
    pub fn new(region: &str) -> Signer {
        Signer {
            region: region.to_owned(),
        }
    }

    /// Adds `Authorization`, `x-amz-date`, `x-amz-content-sha256` (and the session token) to
    /// `headers`, which must already hold every other header that will be sent and signed.
    pub fn sign_headers(
        &self,
        keys: &Keys,
        method: &Method,
        url: &Url,
        headers: &mut HeaderMap,
        payload: Payload<'_>,
        time: SystemTime,
    ) -> Result<(), SignError> {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let body = match payload {
            Payload::Bytes(b) => SignableBody::Bytes(b),
            Payload::Unsigned => SignableBody::UnsignedPayload,
        };
        let signable = SignableRequest::new(method.as_str(), url.as_str(), pairs.into_iter(), body)
            .map_err(|e| SignError(e.to_string()))?;
        let settings = s3_settings();
        let params = self.params(keys, settings, time)?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        for header in new_headers {
            let mut value =
                HeaderValue::from_str(header.value()).map_err(|e| SignError(e.to_string()))?;
            value.set_sensitive(header.sensitive());
            headers.insert(header.name(), value);
        }
        Ok(())
    }

    /// A query pre-signed URL for `method` on `url`, dated `time` and valid for `expires`; the
    /// request must carry `headers` exactly (they are signed). The same inputs always give the
    /// same URL, which is what makes windowed URLs stable.
    pub fn presign(
        &self,
        keys: &Keys,
        method: &Method,
        url: &Url,
        headers: &[(&str, &str)],
        time: SystemTime,
        expires: Duration,
    ) -> Result<String, SignError> {
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            headers.iter().copied(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| SignError(e.to_string()))?;
        let mut settings = s3_settings();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
        let params = self.params(keys, settings, time)?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        // Append the signing parameters to the URL as they are (percent-encoded), without
        // re-parsing it: this is the hot path of batch signing.
        let mut out = String::with_capacity(url.as_str().len() + 512);
        out.push_str(url.as_str());
        let mut separator = if url.query().is_some() { '&' } else { '?' };
        for (name, value) in instructions.params() {
            out.push(separator);
            out.push_str(name);
            out.push('=');
            out.extend(utf8_percent_encode(value, QUERY_VALUE));
            separator = '&';
        }
        Ok(out)
    }

    fn params<'a>(
        &'a self,
        keys: &'a Keys,
        settings: SigningSettings,
        time: SystemTime,
    ) -> Result<aws_sigv4::http_request::SigningParams<'a>, SignError> {
        let params = v4::SigningParams::builder()
            .identity(&keys.identity)
            .region(&self.region)
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| SignError(e.to_string()))?;
        Ok(params.into())
    }
}

/// What S3 needs from SigV4: the payload hash header, the path taken as already encoded once,
/// and no path normalization (S3 keys may hold `.` and `//`-like sequences legitimately).
fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AwsCredentials;

    fn keys() -> Keys {
        Keys::from_config(
            &AwsCredentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
            "test",
        )
    }

    fn signer() -> Signer {
        Signer::new("us-east-1")
    }

    #[test]
    fn header_signing_is_a_pure_function_of_its_inputs() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 2013-05-24
        let sign = || {
            let mut headers = HeaderMap::new();
            headers.insert("range", HeaderValue::from_static("bytes=0-9"));
            signer()
                .sign_headers(
                    &keys(),
                    &Method::GET,
                    &url,
                    &mut headers,
                    Payload::Bytes(b""),
                    time,
                )
                .unwrap();
            headers
        };
        let (a, b) = (sign(), sign());
        assert_eq!(a, b);
        // AWS's published example for this exact request ("Example: GET Object" in the S3
        // SigV4 documentation), so a settings mistake shows up as a wrong signature.
        assert_eq!(
            a["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            a["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn session_tokens_are_sent_and_signed() {
        let signer = Signer::new("eu-west-1");
        let keys = Keys::from_config(
            &AwsCredentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: Some("the-session-token".into()),
            },
            "test",
        );
        let url = Url::parse("https://bucket.s3.eu-west-1.amazonaws.com/a.txt").unwrap();
        let mut headers = HeaderMap::new();
        signer
            .sign_headers(
                &keys,
                &Method::GET,
                &url,
                &mut headers,
                Payload::Bytes(b""),
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(headers["x-amz-security-token"], "the-session-token");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
    }

    #[test]
    fn presigned_urls_depend_only_on_their_inputs() {
        let url = Url::parse("http://127.0.0.1:9000/bucket/a%20b.jpg").unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let presign = || {
            let hour = Duration::from_secs(3600);
            (signer().presign(&keys(), &Method::GET, &url, &[], time, hour)).unwrap()
        };
        let (a, b) = (presign(), presign());
        assert_eq!(a, b);
        assert!(a.contains("X-Amz-Date=20231114T221320Z"));
        assert!(a.contains("X-Amz-Expires=3600"));
        assert!(a.contains(
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20231114%2Fus-east-1%2Fs3%2Faws4_request"
        ));
        assert!(a.starts_with("http://127.0.0.1:9000/bucket/a%20b.jpg?X-Amz-"));
        let later = signer()
            .presign(
                &keys(),
                &Method::GET,
                &url,
                &[],
                time + Duration::from_secs(1),
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_ne!(a, later);
    }
}
