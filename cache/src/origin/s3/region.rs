//! Which region an S3 origin expects its requests signed for, found as the AWS SDKs find a
//! bucket's region: ask, and read the region the service names in its refusal.

use super::*;

/// Services whose region is `auto`: Tigris (the default origin) and Cloudflare R2.
const AUTO_REGION_HOSTS: &[&str] = &["tigris.dev", "storage.dev", "r2.cloudflarestorage.com"];

/// The region asked with first: S3's global endpoint's, which any S3 service that does not
/// check regions accepts (and which makes a CreateBucket without a location constraint valid).
const FIRST_GUESS: &str = "us-east-1";

/// Whether `endpoint` is a service whose region is `auto`.
fn serves_auto_region(endpoint: &str) -> bool {
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    AUTO_REGION_HOSTS
        .iter()
        .any(|h| host == *h || host.ends_with(&format!(".{h}")))
}

/// The region named by an answer: its `x-amz-bucket-region` header, or the `<Region>` of its XML
/// error (AuthorizationHeaderMalformed, PermanentRedirect, IllegalLocationConstraintException).
fn named_region(response: &HttpResponse) -> Option<String> {
    if let Some(r) = response.headers().get("x-amz-bucket-region").filter(|r| !r.is_empty()) {
        return Some(r.to_owned());
    }
    let body = std::str::from_utf8(response.body().bytes()?).ok()?;
    xml_text(body, "Region").filter(|r| !r.is_empty())
}

impl S3Origin {
    /// The region to sign for at `cfg.endpoint`: `auto` for Tigris and R2; for any other service,
    /// the one it names when asked (ListBuckets) with a request signed for us-east-1, or us-east-1
    /// when it accepts that. An origin that does not answer is an error: Perch cannot know.
    pub async fn find_region(cfg: &S3OriginConfig) -> OriginResult<String> {
        if serves_auto_region(&cfg.endpoint) {
            return Ok("auto".to_owned());
        }
        let probe = S3Origin::new(S3OriginConfig {
            region: FIRST_GUESS.to_owned(),
            ..cfg.clone()
        })?;
        let asked = tokio::time::timeout(probe.read_timeout, probe.client.list_buckets().send()).await;
        match asked {
            Err(_) => Err(OriginError::transient(format!(
                "no answer from the origin within {:?}",
                probe.read_timeout
            ))),
            Ok(Ok(_)) => Ok(FIRST_GUESS.to_owned()),
            Ok(Err(SdkError::ServiceError(ctx))) => {
                let raw = ctx.raw();
                if let Some(region) = named_region(raw) {
                    return Ok(region);
                }
                if raw.status().is_server_error() {
                    return Err(classify(SdkError::ServiceError(ctx), Subject::Bucket));
                }
                // A refusal that names no region (e.g. 403 for keys scoped to one bucket) came
                // past the region check.
                Ok(FIRST_GUESS.to_owned())
            }
            Ok(Err(e)) => Err(classify(e, Subject::Bucket)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_region_services() {
        assert!(serves_auto_region("https://fly.storage.tigris.dev"));
        assert!(serves_auto_region("https://t3.storage.dev:443/"));
        assert!(serves_auto_region("https://acct.r2.cloudflarestorage.com"));
        assert!(!serves_auto_region("http://127.0.0.1:9000"));
        assert!(!serves_auto_region("https://s3.eu-west-1.amazonaws.com"));
        assert!(!serves_auto_region("https://notstorage.dev"));
    }
}
