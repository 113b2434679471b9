//! The AWS CLI's settings for every AWS client of thunkmesh (S3 here, Lambda in
//! `thunkmesh-lambda`): one chain, aws-config's, that reads the environment, the shared
//! `~/.aws/credentials` and `~/.aws/config` files with their profiles, web identity, SSO-free
//! process credentials, and the container and instance metadata services, with `--profile` and
//! `--region` on top. Credentials it gives are cached until five minutes before they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::aws::AwsCredential;

/// Credentials closer than this to their expiry are fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// A profile and a region to use instead of the chain's own choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// The profile of the shared config files (as `AWS_PROFILE`).
    pub profile: Option<String>,
    /// The region (as `AWS_REGION`).
    pub region: Option<String>,
}

impl AwsSettings {
    /// A loader of the standard configuration with these settings, speaking TLS through ring.
    pub fn loader(&self) -> aws_config::ConfigLoader {
        let mut loader = with_https(aws_config::defaults(BehaviorVersion::latest()));
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        loader
    }

    /// The region and credentials the chain finds (either may be missing).
    pub(crate) async fn resolve(&self) -> (Option<String>, Option<ChainCredentials>) {
        let config = self.loader().load().await;
        let region = config.region().map(|r| r.as_ref().to_owned());
        (region, config.credentials_provider().map(ChainCredentials::new))
    }
}

/// `loader` with the AWS SDK's HTTPS client over TLS through ring (as quinn's), not the SDK's
/// default aws-lc.
pub fn with_https(loader: aws_config::ConfigLoader) -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    loader.http_client(
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https(),
    )
}

/// object_store's view of the chain's credentials, cached.
#[derive(Debug)]
pub(crate) struct ChainCredentials {
    chain: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl ChainCredentials {
    fn new(chain: SharedCredentialsProvider) -> ChainCredentials {
        ChainCredentials { chain, cached: tokio::sync::Mutex::new(None) }
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = &*cached
            && expiry.is_none_or(|t| t > SystemTime::now() + REFRESH_BEFORE)
        {
            return Ok(credential.clone());
        }
        let fresh = self.chain.provide_credentials().await.map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: format!(
                "the AWS credential chain (environment, profile, container or instance role) found none: {e}"
            )
            .into(),
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: fresh.access_key_id().to_owned(),
            secret_key: fresh.secret_access_key().to_owned(),
            token: fresh.session_token().map(str::to_owned),
        });
        *cached = Some((credential.clone(), fresh.expiry()));
        Ok(credential)
    }
}
