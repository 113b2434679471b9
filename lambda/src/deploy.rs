//! Creating or updating the function: `provided.al2023`, handler `bootstrap`, the package from
//! [`crate::package()`]. An existing function gets its configuration updated first and its code
//! second, each after Lambda says the previous update has finished (Lambda refuses an update
//! while another is in progress).

use std::time::Duration;

use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, EphemeralStorage, FunctionCode, Runtime};
use tracing::info;

use crate::package::{Arch, BOOTSTRAP};

/// The largest package Lambda takes in the request itself (larger ones go through S3).
pub const DIRECT_UPLOAD_LIMIT: usize = 50 * 1024 * 1024;

/// How long Lambda has to make a created or updated function ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The function to create or update.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Its name.
    pub name: String,
    /// The execution role's ARN.
    pub role: String,
    /// Memory in MB (Lambda gives one vCPU per 1,769 MB).
    pub memory_mb: i32,
    /// Size of `/tmp` in MB (512 to 10,240), where the node keeps its cache and sandboxes.
    pub tmp_mb: i32,
    /// Seconds an invocation may run (at most 900).
    pub timeout_seconds: i32,
    /// Its instruction set.
    pub arch: Arch,
}

/// What Lambda says about the deployed function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// Its ARN.
    pub arn: String,
    /// Whether it was created (rather than updated).
    pub created: bool,
}

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The package is larger than a direct upload allows.
    #[error(
        "the package is {size} bytes; Lambda takes at most {DIRECT_UPLOAD_LIMIT} in a direct upload: deploy a release build (docs/lambda.md)"
    )]
    TooLarge {
        /// The package's size.
        size: usize,
    },
    /// A Lambda API call failed.
    #[error("Lambda {call} for function `{function}` failed: {message}")]
    Aws {
        /// The API call.
        call: &'static str,
        /// The function.
        function: String,
        /// Lambda's (or the transport's) error.
        message: String,
    },
}

/// Creates the function, or updates its configuration and code if it exists.
pub async fn deploy(
    client: &aws_sdk_lambda::Client,
    spec: &FunctionSpec,
    zip: Vec<u8>,
) -> Result<Deployed, DeployError> {
    if zip.len() > DIRECT_UPLOAD_LIMIT {
        return Err(DeployError::TooLarge { size: zip.len() });
    }
    let name = spec.name.as_str();
    let exists = match client.get_function().function_name(name).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => false,
        Err(e) => return Err(failed("GetFunction", name, e)),
    };
    let arn = if exists { update(client, spec, zip).await? } else { create(client, spec, zip).await? };
    info!(function = name, %arn, created = !exists, "deployed");
    Ok(Deployed { arn, created: !exists })
}

async fn create(client: &aws_sdk_lambda::Client, spec: &FunctionSpec, zip: Vec<u8>) -> Result<String, DeployError> {
    let name = spec.name.as_str();
    let created = client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .handler(BOOTSTRAP)
        .role(&spec.role)
        .memory_size(spec.memory_mb)
        .timeout(spec.timeout_seconds)
        .ephemeral_storage(tmp(spec)?)
        .architectures(architecture(spec.arch))
        .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
        .description("thunkmesh worker (https://github.com/thunkmesh/thunkmesh)")
        .send()
        .await
        .map_err(|e| failed("CreateFunction", name, e))?;
    ready(client, name, true).await?;
    Ok(created.function_arn().unwrap_or(name).to_owned())
}

async fn update(client: &aws_sdk_lambda::Client, spec: &FunctionSpec, zip: Vec<u8>) -> Result<String, DeployError> {
    let name = spec.name.as_str();
    client
        .update_function_configuration()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .handler(BOOTSTRAP)
        .role(&spec.role)
        .memory_size(spec.memory_mb)
        .timeout(spec.timeout_seconds)
        .ephemeral_storage(tmp(spec)?)
        .send()
        .await
        .map_err(|e| failed("UpdateFunctionConfiguration", name, e))?;
    ready(client, name, false).await?;
    let updated = client
        .update_function_code()
        .function_name(name)
        .zip_file(Blob::new(zip))
        .architectures(architecture(spec.arch))
        .send()
        .await
        .map_err(|e| failed("UpdateFunctionCode", name, e))?;
    ready(client, name, false).await?;
    Ok(updated.function_arn().unwrap_or(name).to_owned())
}

/// Waits until Lambda has made the function active (after a create) or finished its last update.
async fn ready(client: &aws_sdk_lambda::Client, name: &str, created: bool) -> Result<(), DeployError> {
    let waited = if created {
        client.wait_until_function_active_v2().function_name(name).wait(READY_TIMEOUT).await.map(|_| ())
    } else {
        client.wait_until_function_updated_v2().function_name(name).wait(READY_TIMEOUT).await.map(|_| ())
    };
    waited.map_err(|e| DeployError::Aws {
        call: "GetFunction (waiting until ready)",
        function: name.into(),
        message: DisplayErrorContext(e).to_string(),
    })
}

fn tmp(spec: &FunctionSpec) -> Result<EphemeralStorage, DeployError> {
    EphemeralStorage::builder().size(spec.tmp_mb).build().map_err(|e| DeployError::Aws {
        call: "CreateFunction",
        function: spec.name.clone(),
        message: e.to_string(),
    })
}

fn architecture(arch: Arch) -> Architecture {
    match arch {
        Arch::X86_64 => Architecture::X8664,
        Arch::Arm64 => Architecture::Arm64,
    }
}

fn failed<E, R>(call: &'static str, function: &str, e: SdkError<E, R>) -> DeployError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    DeployError::Aws { call, function: function.into(), message: DisplayErrorContext(e).to_string() }
}
