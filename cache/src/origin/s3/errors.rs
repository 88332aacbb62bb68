//! How `S3Origin` classifies failures: what an S3 answer or an SDK failure means as an
//! `OriginError` (transient, refused, or one of S3's own errors).

use std::io;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::super::OriginError;

/// What a 404 without an S3 error code (the answer to a HEAD) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Subject {
    Bucket,
    Object,
    /// A PUT of an object: S3 answers it 404 only with a code (NoSuchBucket, or NoSuchKey from
    /// an origin that answers so for good); a bare 404 is a proxy's or a load balancer's, a fault.
    Write,
    Upload,
}

/// Turns any SDK failure into an `OriginError`. `subject` says what a bare 404 means. A failure
/// of Perch's side (transient, or local) keeps the SDK's error as its source.
pub(super) fn classify<E>(err: SdkError<E, HttpResponse>, subject: Subject) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let classified = match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            if (200..300).contains(&status) {
                // A success whose body could not be read or parsed.
                return OriginError::transient_from(
                    format!("unreadable {status} answer: {}", DisplayErrorContext(&err)),
                    err,
                );
            }
            let code = ctx.err().code().unwrap_or_default().to_owned();
            let message = ctx
                .err()
                .message()
                .map_or_else(|| DisplayErrorContext(&err).to_string(), str::to_owned);
            with_answer_headers(
                classify_answer(status, code, message, subject),
                ctx.raw().headers().get("etag"),
                ctx.raw().headers().get("content-range"),
            )
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let message = DisplayErrorContext(&err).to_string();
            if (200..300).contains(&status) {
                // A success whose body broke or could not be read: worth another try.
                OriginError::transient(message)
            } else {
                with_answer_headers(
                    classify_answer(status, String::new(), message, subject),
                    ctx.raw().headers().get("etag"),
                    ctx.raw().headers().get("content-range"),
                )
            }
        }
        SdkError::TimeoutError(_) => OriginError::transient(format!("timed out: {}", causes(&err))),
        SdkError::DispatchFailure(failure) if failure.is_user() => {
            // The request could not be sent for a local reason (e.g. its body failed).
            let text = causes(&err);
            return OriginError::Io(io::Error::other(Described { text, err }));
        }
        SdkError::DispatchFailure(_) => OriginError::transient(causes(&err)),
        SdkError::ConstructionFailure(_) => OriginError::rejected(
            400,
            "InvalidArgument",
            format!("could not build the origin request: {}", DisplayErrorContext(&err)),
        ),
        _ => OriginError::transient(causes(&err)),
    };
    match classified {
        OriginError::Transient { what, cause: None } => OriginError::transient_from(what, err),
        other => other,
    }
}

/// An SDK failure shown with its causes' text (`causes`), which the SDK's own display leaves out.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
struct Described<E: std::error::Error + 'static> {
    text: String,
    #[source]
    err: E,
}

/// An error and its sources, each as it displays itself, joined by `: ` (a source its parent's
/// text already holds is left out): `dispatch failure: io error: … Connection refused (os error
/// 111)`, where the SDK's own context prints the connector's fields as a structure.
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Refusals of Perch's own signature rather than of the request: the clock is off, the
/// credentials expired, were rotated, or are wrong. The same request succeeds once the clock or
/// the keys are right (`perch serve` reloads them on SIGHUP), so they are retried like an outage:
/// an acknowledged write is never given up for them (docs/write-back.md, "What the origin may
/// refuse").
const CREDENTIAL_CODES: &[&str] = &[
    "RequestTimeTooSkewed",
    "RequestExpired",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
];

/// What an error answer's headers add to it: a 304 carries the object's ETag (RFC 9110), which
/// the client's 304 carries on; a 416 the object's size (`Content-Range: bytes */N`), which the
/// client's 416 names in turn.
pub(super) fn with_answer_headers(e: OriginError, etag: Option<&str>, content_range: Option<&str>) -> OriginError {
    match e {
        OriginError::InvalidRange { size: None } => OriginError::InvalidRange {
            size: content_range
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|n| n.trim().parse().ok()),
        },
        OriginError::NotModified {
            etag: None,
            last_modified,
            cache_control,
            expires,
        } => OriginError::NotModified {
            etag: etag.map(str::to_owned),
            last_modified,
            cache_control,
            expires,
        },
        e => e,
    }
}

/// Whether `code` is an S3 error code that refuses a request's signature or credentials.
pub(crate) fn is_credential_code(code: &str) -> bool {
    CREDENTIAL_CODES.contains(&code)
}

/// Classifies an HTTP answer of the origin by status and S3 error code.
pub(super) fn classify_answer(status: u16, code: String, message: String, subject: Subject) -> OriginError {
    const TRANSIENT_CODES: &[&str] = &[
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        // 409s S3 asks to retry: a conditional write raced another (its answer may then be 412),
        // or a conflicting operation on the bucket was under way.
        "ConditionalRequestConflict",
        "OperationAborted",
    ];
    if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code.as_str()) {
        let code = if code.is_empty() { status.to_string() } else { code };
        return OriginError::transient(format!("{status} {code}: {message}"));
    }
    if matches!(status, 400 | 403) && CREDENTIAL_CODES.contains(&code.as_str()) {
        return OriginError::transient(format!(
            "{status} {code}: {message} (Perch's origin keys or clock; fix them and send SIGHUP to reload the keys)"
        ));
    }
    match (status, code.as_str()) {
        (304, _) => OriginError::NotModified {
            etag: None,
            last_modified: None,
            cache_control: None,
            expires: None,
        },
        (412, _) => OriginError::PreconditionFailed,
        (416, _) => OriginError::InvalidRange { size: None },
        (404, "NoSuchKey") => OriginError::NoSuchKey,
        (404, "NoSuchBucket") => OriginError::NoSuchBucket,
        (404, "NoSuchUpload") => OriginError::NoSuchUpload,
        (404, "" | "NotFound") => match subject {
            Subject::Bucket => OriginError::NoSuchBucket,
            Subject::Object => OriginError::NoSuchKey,
            Subject::Write => OriginError::transient(format!("404 without an S3 error code: {message}")),
            Subject::Upload => OriginError::NoSuchUpload,
        },
        _ => {
            let code = if code.is_empty() { default_code(status) } else { code };
            OriginError::Rejected { status, code, message }
        }
    }
}

/// An S3-style code for an answer that came without one (a HEAD has no body).
pub(super) fn default_code(status: u16) -> String {
    match status {
        400 => "BadRequest".to_owned(),
        403 => "AccessDenied".to_owned(),
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or_else(|| status.to_string(), |r| r.replace([' ', '-'], "")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let c = |status, code: &str, subject| classify_answer(status, code.to_owned(), String::new(), subject);
        assert!(matches!(c(404, "", Subject::Object), OriginError::NoSuchKey));
        assert!(matches!(c(404, "", Subject::Bucket), OriginError::NoSuchBucket));
        // A bare 404 to a PUT is no answer of S3's: retried. Its NoSuchKey is the origin's own.
        assert!(c(404, "", Subject::Write).is_transient());
        // A refused signature is transient for Perch (its keys can be reloaded), and named.
        let refused = |status, code| {
            c(status, code, Subject::Object)
                .refused_credentials()
                .map(str::to_owned)
        };
        assert_eq!(
            refused(403, "SignatureDoesNotMatch").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(
            refused(400, "RequestTimeTooSkewed").as_deref(),
            Some("RequestTimeTooSkewed")
        );
        assert_eq!(refused(503, "SlowDown"), None);
        assert_eq!(refused(403, "AccessDenied"), None);
        assert!(matches!(c(404, "NoSuchKey", Subject::Write), OriginError::NoSuchKey));
        assert!(matches!(
            c(404, "NoSuchBucket", Subject::Object),
            OriginError::NoSuchBucket
        ));
        assert!(matches!(
            c(404, "NoSuchUpload", Subject::Upload),
            OriginError::NoSuchUpload
        ));
        assert!(matches!(
            c(412, "PreconditionFailed", Subject::Object),
            OriginError::PreconditionFailed
        ));
        assert!(matches!(c(304, "", Subject::Object), OriginError::NotModified { .. }));
        assert!(matches!(
            c(416, "InvalidRange", Subject::Object),
            OriginError::InvalidRange { .. }
        ));
        assert!(c(503, "SlowDown", Subject::Object).is_transient());
        assert!(c(500, "", Subject::Object).is_transient());
        assert!(!c(500, "", Subject::Object).is_not_implemented());
        let unsupported = c(501, "NotImplemented", Subject::Object);
        assert!(
            unsupported.is_transient() && unsupported.is_not_implemented(),
            "{unsupported:?}"
        );
        assert!(c(429, "", Subject::Object).is_transient());
        assert!(c(409, "ConditionalRequestConflict", Subject::Object).is_transient());
        assert!(!c(409, "ConditionalRequestConflict", Subject::Object).may_have_taken_effect());
        assert!(c(409, "OperationAborted", Subject::Bucket).is_transient());
        assert!(c(409, "BucketNotEmpty", Subject::Bucket).is_permanent());
        // A 501 passed on as the refusal it is.
        let passed = unsupported.as_not_implemented();
        assert!(
            matches!(&passed, OriginError::Rejected { status: 501, code, .. } if code == "NotImplemented"),
            "{passed:?}"
        );
        assert!(passed.is_not_implemented() && !passed.is_transient() && !passed.is_permanent());
        // Throttles (the origin asked for fewer requests) told from an outage's answers.
        assert!(c(503, "SlowDown", Subject::Object).is_throttle());
        assert!(c(429, "", Subject::Object).is_throttle());
        assert!(c(400, "ThrottlingException", Subject::Object).is_throttle());
        assert!(!c(503, "ServiceUnavailable", Subject::Object).is_throttle());
        assert!(!c(503, "", Subject::Object).is_throttle());
        assert!(!c(500, "InternalError", Subject::Object).is_throttle());
        assert!(c(400, "RequestTimeout", Subject::Object).is_transient());
        match c(403, "", Subject::Object) {
            OriginError::Rejected { status: 403, code, .. } => assert_eq!(code, "AccessDenied"),
            other => panic!("{other:?}"),
        }
        match c(409, "BucketNotEmpty", Subject::Bucket) {
            OriginError::Rejected { status: 409, code, .. } => assert_eq!(code, "BucketNotEmpty"),
            other => panic!("{other:?}"),
        }
        match c(405, "", Subject::Bucket) {
            OriginError::Rejected { code, .. } => assert_eq!(code, "MethodNotAllowed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_of_perchs_keys_or_clock_are_retried_and_never_permanent() {
        let c = |status, code: &str| classify_answer(status, code.to_owned(), "m".to_owned(), Subject::Object);
        for (status, code) in [
            (403, "RequestTimeTooSkewed"),
            (400, "RequestExpired"),
            (403, "RequestExpired"),
            (400, "ExpiredToken"),
            (403, "ExpiredToken"),
            (400, "TokenRefreshRequired"),
            (400, "InvalidToken"),
            (403, "InvalidAccessKeyId"),
            (403, "SignatureDoesNotMatch"),
        ] {
            let e = c(status, code);
            assert!(e.is_transient(), "{status} {code}: {e:?}");
            assert!(!e.is_permanent(), "{status} {code}: {e:?}");
            assert!(e.to_string().contains(code), "{e}");
        }
        // A refusal of the request itself stays final: a policy, a bad request, a missing bucket.
        for (status, code) in [
            (403, "AccessDenied"),
            (403, ""),
            (400, "InvalidArgument"),
            (400, "EntityTooSmall"),
        ] {
            let e = c(status, code);
            assert!(!e.is_transient() && e.is_permanent(), "{status} {code}: {e:?}");
        }
        assert!(c(404, "NoSuchBucket").is_permanent());
    }
}
