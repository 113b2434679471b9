//! thunkmesh on AWS Lambda, from the client's side: packaging the `thunkmesh` binary as a
//! custom-runtime function and deploying it ([`package()`], [`deploy()`]), and launching workers
//! that join a rendezvous for a job or keep a pool warm ([`launch()`]). The function's own side,
//! the node serving invocations, is `thunkmesh_node::lambda`.
//!
//! AWS settings come from the standard places (environment, profile, region), as the AWS CLI
//! reads them; `AWS_ENDPOINT_URL_LAMBDA` points the client at a local implementation of the API.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod deploy;
pub mod launch;
pub mod package;

pub use deploy::{DeployError, Deployed, FunctionSpec, deploy};
pub use launch::{Demand, LaunchError, LaunchSpec, Launched, launch};
pub use package::{Arch, PackageError, package};
pub use thunkmesh_node::lambda::{Invocation, Report};

use aws_sdk_lambda::config::retry::RetryConfig;
use thunkmesh_store::AwsSettings;

/// A Lambda client from the standard AWS configuration (with `aws`'s profile and region where
/// given), speaking TLS through ring. `retries` false leaves every retry to the caller:
/// [`launch()`] retries invocations itself, because a handler error can come back as a 500 that
/// the SDK would otherwise retry for a second.
pub async fn client(aws: &AwsSettings, retries: bool) -> aws_sdk_lambda::Client {
    client_from(aws.loader(), retries).await
}

/// Like [`client`], with settings from `loader` (an endpoint, credentials) where given.
pub async fn client_from(loader: aws_config::ConfigLoader, retries: bool) -> aws_sdk_lambda::Client {
    let shared = thunkmesh_store::aws::with_https(loader).load().await;
    let mut config = aws_sdk_lambda::config::Builder::from(&shared);
    if !retries {
        config = config.retry_config(RetryConfig::disabled());
    }
    aws_sdk_lambda::Client::from_conf(config.build())
}
