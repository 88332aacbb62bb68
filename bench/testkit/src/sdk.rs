//! aws-sdk-s3 clients of perch and of moto, built the same way in every test.

use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};

use crate::servers::{
    DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer, PerchServer,
};

/// An aws-sdk-s3 client for `endpoint`: path style, us-east-1, the given keys, no retries
/// (so that every error is the first answer the server gave).
pub fn client_with(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> Client {
    let creds = Credentials::new(access_key_id, secret_access_key, None, None, "perch-tests");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .force_path_style(true)
        .credentials_provider(creds)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// A client of perch signing with the development key pair.
pub fn perch_client(perch: &PerchServer) -> Client {
    client_with(&perch.endpoint, DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
}

/// A client talking to moto directly, past perch.
pub fn moto_client(moto: &MotoServer) -> Client {
    client_with(&moto.endpoint, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)
}
