//! S3's XML, read and written with `quick-xml` (serde): error bodies, the multipart upload
//! answers and the CompleteMultipartUpload request.

use serde::{Deserialize, Serialize};

/// What s3warden reads of an S3 answer body: an `<Error>` (`Code`, and for clock errors
/// `ServerTime`), or a result with an `UploadId` or `ETag`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Answer {
    /// `<Error><Code>` (`NoSuchKey`, `RequestTimeTooSkewed`, ...).
    pub code: Option<String>,
    /// `<Error><ServerTime>` of clock errors (RFC 3339).
    pub server_time: Option<String>,
    /// `<Error><Region>`: the bucket's region, when a request named another one.
    pub region: Option<String>,
    /// `<InitiateMultipartUploadResult><UploadId>`.
    pub upload_id: Option<String>,
    /// `<CompleteMultipartUploadResult><ETag>`.
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
}

/// Reads an answer body; anything that is not such XML reads as empty.
pub fn answer(text: &str) -> Answer {
    quick_xml::de::from_str(text).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename = "CompleteMultipartUpload")]
struct Complete<'a> {
    #[serde(rename = "Part")]
    parts: Vec<CompletePart<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CompletePart<'a> {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: &'a str,
}

/// The body of a CompleteMultipartUpload request for `(number, etag)` parts.
pub fn complete_multipart<'a>(parts: impl Iterator<Item = (u32, &'a str)>) -> String {
    let parts = parts
        .map(|(part_number, etag)| CompletePart { part_number, etag })
        .collect();
    quick_xml::se::to_string(&Complete { parts }).expect("plain strings and numbers serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors() {
        let a = answer(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><Key>k</Key>\
             <UploadId>abc-1</UploadId></InitiateMultipartUploadResult>",
        );
        assert_eq!(a.upload_id.as_deref(), Some("abc-1"));
        assert_eq!(a.code, None);
        let a = answer(
            "<CompleteMultipartUploadResult><ETag>&quot;x-2&quot;</ETag></CompleteMultipartUploadResult>",
        );
        assert_eq!(a.etag.as_deref(), Some("\"x-2\""));
        // Some S3 implementations write the quotes as numeric character references.
        let a = answer(
            "<CompleteMultipartUploadResult><ETag>&#34;x-3&#34;</ETag></CompleteMultipartUploadResult>",
        );
        assert_eq!(a.etag.as_deref(), Some("\"x-3\""));
        let a = answer(
            "<CompleteMultipartUploadResult><ETag>&#x22;x-4&#x22;</ETag></CompleteMultipartUploadResult>",
        );
        assert_eq!(a.etag.as_deref(), Some("\"x-4\""));
        let a = answer(
            "<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the \
             request time and the current time is too large.</Message><RequestTime>\
             20261130T120000Z</RequestTime><ServerTime>2026-11-30T12:30:00Z</ServerTime>\
             <MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds><RequestId>R\
             </RequestId><HostId>H</HostId></Error>",
        );
        assert_eq!(a.code.as_deref(), Some("RequestTimeTooSkewed"));
        assert_eq!(a.server_time.as_deref(), Some("2026-11-30T12:30:00Z"));
        assert_eq!(answer("not xml <<").code, None);
        assert_eq!(answer("").code, None);
    }

    #[test]
    fn complete_bodies_escape_etags() {
        assert_eq!(
            complete_multipart([(1, "\"a&b\""), (2, "\"c\"")].into_iter()),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag>\
             </Part><Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }
}
