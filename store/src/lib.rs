//! Object storage for what must outlive a job: the job's inputs, its targets, and the memo cache
//! of reductions (and, in storage mode, every intermediate). One API over S3 (`s3://`), a local
//! folder (`file://`) or memory (`memory://`, tests only), through the `object_store` crate; every
//! request is counted for the job summary, every blob read is verified against its id, and large
//! objects stream to and from files rather than sit whole in memory.
//!
//! Keys: `blobs/<blob id>` holds the bytes. A client records a job's memo entries in batches
//! (`memo/<random>`: `thunkmesh-reductions v2`, then per thunk a `thunk <thunk id> <inputs>
//! <producer>` line and its `<blob id> <output name>` lines), one PUT per batch rather than per
//! thunk; every batch is read when a job looks its thunks up (one listing request per 1,000
//! batches, counted with the GETs), and once there are more than [`COMPACT_AFTER`] they are merged
//! into one. Batches of v1 (no inputs, no producer) are read and never reused; single-entry
//! records under `reductions/`, which earlier versions wrote, are not read at all.
//!
//! URL parameters: `?endpoint=http://host:port` points `s3://` at an S3-compatible server (or
//! set `AWS_ENDPOINT_URL`); `?latency=s3-standard|s3-express|none` adds the first-byte latency and
//! per-request bandwidth of that service to every request (see `docs/benchmarks.md`).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod aws;
mod latency;
mod sink;

pub use aws::AwsSettings;
pub use latency::Latency;
pub use sink::{BLOCK, BlobSink};

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::TransferStats;
use tokio::io::AsyncReadExt;

/// Batches before entries named their inputs and producer: read, never reused (see [`MemoRecord`]).
const BATCH_HEADER_V1: &str = "thunkmesh-reductions v1";
const BATCH_HEADER: &str = "thunkmesh-reductions v2";

/// Batches of memo entries read at a lookup past which they are merged into one.
pub const COMPACT_AFTER: usize = 8;

/// A memo entry: what a thunk's outputs were, the inputs it ran on, and who ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoRecord {
    /// Each output's final blob, by name.
    pub outputs: Vec<(String, Id)>,
    /// [`Id::digest_of`] the blobs the thunk's refs resolved to when it ran: the entry holds only
    /// while they resolve to the same blobs (`None`: recorded before entries said, never reused).
    pub inputs: Option<[u8; 32]>,
    /// The certificate fingerprint of the node that ran it (`None`: not recorded).
    pub producer: Option<[u8; 32]>,
}

/// Memo entries by thunk.
pub type Reductions = std::collections::HashMap<Id, MemoRecord>;

/// Objects larger than this are uploaded in parts, streamed from their file.
const MULTIPART_THRESHOLD: u64 = 16 << 20;

/// Keys one LIST request returns at most (S3's page size).
const LIST_PAGE: u64 = 1000;

/// Size of one part of a multipart upload.
const PART_SIZE: usize = 8 << 20;

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL is not one this build can open.
    #[error("store URL `{0}` is not supported: use s3://bucket/prefix, file:///absolute/path or memory://")]
    Unsupported(String),
    /// The URL does not parse, or names an unknown parameter or latency profile.
    #[error("store URL `{url}` is not valid: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The backend refused or failed a request.
    #[error("storage request for `{key}` failed: {error}")]
    Backend {
        /// The object key.
        key: String,
        /// The backend's error (in this message, not a source: one line says it once).
        error: object_store::Error,
    },
    /// A blob's bytes do not match its id. The corrupt object was deleted from storage (if the
    /// backend allowed it), so the next upload of the right bytes takes its place.
    #[error(
        "object `{key}` in storage is corrupt: its bytes hash to {actual}; it was removed, and the next run uploads the right bytes"
    )]
    Corrupt {
        /// The object key.
        key: String,
        /// What the bytes hash to.
        actual: Id,
    },
    /// A reduction record does not parse.
    #[error("reduction `{key}` in storage is malformed at line {line}")]
    MalformedReduction {
        /// The object key.
        key: String,
        /// The first bad line (1-based).
        line: usize,
    },
    /// A local file could not be read or written.
    #[error("{path}: {error}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The AWS credential chain found no credentials for an `s3://` store.
    #[error(
        "no AWS credentials for {url}: {reason} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile of ~/.aws/credentials with --profile or AWS_PROFILE)"
    )]
    NoCredentials {
        /// The store.
        url: String,
        /// What the chain said.
        reason: String,
    },
}

#[derive(Debug, Default)]
struct Counters {
    gets: AtomicU64,
    puts: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

/// A handle on one store, cheap to clone; clones share their counters.
#[derive(Debug, Clone)]
pub struct Store {
    url: String,
    inner: Arc<dyn ObjectStore>,
    latency: Latency,
    counters: Arc<Counters>,
}

impl Store {
    /// Opens `s3://bucket/prefix`, `file:///absolute/path` (created if missing) or `memory://`,
    /// with the URL parameters described in the module documentation.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, &[])
    }

    /// Like [`Store::open`], with an `s3://` store's credentials and region from the AWS CLI's
    /// chain ([`AwsSettings`]) rather than the environment alone: a profile in
    /// `~/.aws/credentials`, SSO-free process credentials, a container or instance role.
    pub async fn connect(url: &str, aws: &AwsSettings) -> Result<Store, StoreError> {
        if !url.starts_with("s3:") {
            return Store::open(url);
        }
        let (region, credentials) = aws.resolve().await;
        // Asked once now, so that missing credentials are one error before any request.
        if let Some(chain) = &credentials {
            use object_store::CredentialProvider;
            chain.get_credential().await.map_err(|e| {
                let reason = match e {
                    object_store::Error::Generic { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                StoreError::NoCredentials { url: url.to_owned(), reason }
            })?;
        }
        Store::build(url, &[], S3Auth { region, credentials })
    }

    /// Like [`Store::open`], with S3 settings (`object_store` AWS config keys such as
    /// `aws_access_key_id`) given here on top of the environment's.
    pub fn open_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Store, StoreError> {
        Store::build(url, s3_options, S3Auth::default())
    }

    fn build(url: &str, s3_options: &[(&str, &str)], auth: S3Auth) -> Result<Store, StoreError> {
        let bad = |reason: String| StoreError::BadUrl { url: url.into(), reason };
        let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let mut latency = Latency::NONE;
        let mut endpoint = None;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "latency" => {
                    latency = Latency::profile(&value).ok_or_else(|| bad(format!("no latency profile `{value}`")))?
                }
                "endpoint" => endpoint = Some(value.into_owned()),
                other => return Err(bad(format!("unknown parameter `{other}`"))),
            }
        }
        parsed.set_query(None);
        let inner: Arc<dyn ObjectStore> = match parsed.scheme() {
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            "file" => open_folder(&parsed).map_err(|e| match e {
                StoreError::BadUrl { reason, .. } => bad(reason),
                other => other,
            })?,
            "s3" => open_s3(&parsed, endpoint, s3_options, auth).map_err(bad)?,
            _ => return Err(StoreError::Unsupported(url.into())),
        };
        Ok(Store { url: url.into(), inner, latency, counters: Arc::default() })
    }

    /// The `file://` URL of a local folder, made absolute.
    pub fn folder_url(dir: &FsPath) -> Result<String, StoreError> {
        let abs = std::path::absolute(dir).map_err(|source| StoreError::Local { path: dir.into(), error: source })?;
        url::Url::from_directory_path(&abs)
            .map(String::from)
            .map_err(|()| StoreError::BadUrl { url: abs.display().to_string(), reason: "not an absolute path".into() })
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests and bytes so far, in the summary's terms.
    pub fn stats(&self) -> TransferStats {
        TransferStats {
            storage_gets: self.counters.gets.load(Ordering::Relaxed),
            storage_puts: self.counters.puts.load(Ordering::Relaxed),
            storage_bytes_read: self.counters.read.load(Ordering::Relaxed),
            storage_bytes_written: self.counters.written.load(Ordering::Relaxed),
            ..TransferStats::default()
        }
    }

    /// Whether storage holds the blob (a HEAD request: asks storage, never a local index).
    pub async fn has_blob(&self, id: Id) -> Result<bool, StoreError> {
        let key = blob_key(id);
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.latency.wait(0).await;
        match self.inner.head(&key).await {
            Ok(meta) => Ok(meta.size == id.size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::Backend { key: key.to_string(), error: source }),
        }
    }

    /// Stores a blob's bytes under its id.
    pub async fn put_blob(&self, id: Id, bytes: Bytes) -> Result<(), StoreError> {
        self.put(blob_key(id), bytes).await
    }

    /// Stores a file whose bytes are `id`, streaming large files in parts.
    pub async fn put_file(&self, id: Id, path: &FsPath) -> Result<(), StoreError> {
        let local = |source| StoreError::Local { path: path.into(), error: source };
        if id.size <= MULTIPART_THRESHOLD {
            let bytes = tokio::fs::read(path).await.map_err(local)?;
            return self.put_blob(id, bytes.into()).await;
        }
        let key = blob_key(id);
        let backend = |source| StoreError::Backend { key: key.to_string(), error: source };
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.latency.wait(id.size).await;
        let upload = self.inner.put_multipart(&key).await.map_err(backend)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = file.read(&mut buf).await.map_err(local)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await.map_err(backend)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(backend)?;
        self.counters.written.fetch_add(id.size, Ordering::Relaxed);
        Ok(())
    }

    /// Streams a blob into `dest`, verifying every byte against the id; `Ok(false)` if absent.
    pub async fn get_blob_to_file(&self, id: Id, dest: &FsPath) -> Result<bool, StoreError> {
        let key = blob_key(id);
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.latency.wait(id.size).await;
        let result = match self.inner.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(source) => return Err(StoreError::Backend { key: key.to_string(), error: source }),
        };
        let local = |source| StoreError::Local { path: dest.into(), error: source };
        let mut sink = BlobSink::new(dest);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => sink.write(&chunk).await.map_err(local),
                Err(source) => Err(StoreError::Backend { key: key.to_string(), error: source }),
            };
            if let Err(e) = written {
                sink.discard().await;
                return Err(e);
            }
        }
        let actual = sink.finish().await.map_err(local)?;
        self.counters.read.fetch_add(actual.size, Ordering::Relaxed);
        if actual != id {
            let _ = tokio::fs::remove_file(dest).await;
            // A HEAD with the right size would otherwise keep every later upload away.
            if let Err(e) = self.inner.delete(&key).await {
                tracing::warn!(%key, error = %e, "cannot remove a corrupt object from storage");
            }
            return Err(StoreError::Corrupt { key: key.to_string(), actual });
        }
        Ok(true)
    }

    /// The keys under `prefix`, counted as one request per [`LIST_PAGE`] keys.
    async fn list_keys(&self, prefix: &Path) -> Result<Vec<Path>, StoreError> {
        let backend = |error| StoreError::Backend { key: format!("{prefix}/"), error };
        let mut keys = Vec::new();
        let mut listing = self.inner.list(Some(prefix));
        loop {
            if (keys.len() as u64).is_multiple_of(LIST_PAGE) {
                // The next key, if any, comes in a new page: one more request.
                self.counters.gets.fetch_add(1, Ordering::Relaxed);
                self.latency.wait(0).await;
            }
            match listing.next().await {
                None | Some(Err(object_store::Error::NotFound { .. })) => return Ok(keys),
                Some(meta) => keys.push(meta.map_err(backend)?.location),
            }
        }
    }

    /// Records many thunks' memo entries in one new batch (one PUT).
    pub async fn put_reductions(&self, entries: &[(Id, MemoRecord)]) -> Result<(), StoreError> {
        let key = Path::from(format!("memo/{:032x}", rand::random::<u128>()));
        self.put(key, Bytes::from(format_batch(entries))).await
    }

    /// Every memo entry recorded in batches: one listing request per 1,000 batches and one GET
    /// per batch. Past [`COMPACT_AFTER`] batches they are merged into one new batch and the old
    /// ones deleted (a PUT and a request per batch), so lookups stay a few requests.
    pub async fn batched_reductions(&self) -> Result<Reductions, StoreError> {
        let (keys, all) = self.read_batches().await?;
        if keys.len() > COMPACT_AFTER {
            self.replace_batches(&keys, &all).await?;
        }
        Ok(all)
    }

    /// Removes every batched memo entry `forget` picks (a node's, say): the rest are written as
    /// one new batch and the old batches deleted. Returns how many were removed; with none,
    /// nothing is written.
    pub async fn forget_reductions(&self, forget: impl Fn(&MemoRecord) -> bool) -> Result<u64, StoreError> {
        let (keys, mut all) = self.read_batches().await?;
        let before = all.len();
        all.retain(|_, record| !forget(record));
        let removed = (before - all.len()) as u64;
        if removed > 0 {
            self.replace_batches(&keys, &all).await?;
        }
        Ok(removed)
    }

    /// The keys of every batch and their entries merged.
    async fn read_batches(&self) -> Result<(Vec<Path>, Reductions), StoreError> {
        let keys = self.list_keys(&Path::from("memo")).await?;
        let reads = keys.iter().map(|key| async move { (key, self.get_small(key).await) });
        let mut all = Reductions::new();
        for (key, bytes) in futures::future::join_all(reads).await {
            // A batch another client merged away since the listing has its entries in the merged one.
            let Some(bytes) = bytes? else { continue };
            let entries =
                parse_batch(&bytes).map_err(|line| StoreError::MalformedReduction { key: key.to_string(), line })?;
            all.extend(entries);
        }
        Ok((keys, all))
    }

    /// Writes `all` as one batch, then deletes the batches at `keys`.
    async fn replace_batches(&self, keys: &[Path], all: &Reductions) -> Result<(), StoreError> {
        let merged: Vec<(Id, MemoRecord)> = all.iter().map(|(t, r)| (*t, r.clone())).collect();
        self.put_reductions(&merged).await?;
        for key in keys {
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            self.latency.wait(0).await;
            if let Err(e) = self.inner.delete(key).await {
                tracing::warn!(%key, error = %e, "cannot delete a merged memo batch");
            }
        }
        Ok(())
    }

    /// A small object's bytes, counted as one GET; `None` if there is none.
    async fn get_small(&self, key: &Path) -> Result<Option<Bytes>, StoreError> {
        let backend = |source| StoreError::Backend { key: key.to_string(), error: source };
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.latency.wait(0).await;
        let bytes = match self.inner.get(key).await {
            Ok(r) => r.bytes().await.map_err(backend)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(backend(source)),
        };
        self.counters.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(bytes))
    }

    async fn put(&self, key: Path, bytes: Bytes) -> Result<(), StoreError> {
        let len = bytes.len() as u64;
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.latency.wait(len).await;
        self.inner
            .put(&key, PutPayload::from_bytes(bytes))
            .await
            .map_err(|source| StoreError::Backend { key: key.to_string(), error: source })?;
        self.counters.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

fn open_folder(url: &url::Url) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let dir = url
        .to_file_path()
        .map_err(|()| StoreError::BadUrl { url: url.to_string(), reason: "not an absolute path".into() })?;
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::Local { path: dir.clone(), error: source })?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .map_err(|source| StoreError::Backend { key: dir.display().to_string(), error: source })?;
    Ok(Arc::new(local))
}

/// S3 with the standard AWS configuration from the environment, and an optional endpoint.
/// What the AWS chain resolved for an S3 store; without it, the environment decides.
#[derive(Debug, Default)]
struct S3Auth {
    region: Option<String>,
    credentials: Option<aws::ChainCredentials>,
}

fn open_s3(
    url: &url::Url,
    endpoint: Option<String>,
    options: &[(&str, &str)],
    auth: S3Auth,
) -> Result<Arc<dyn ObjectStore>, String> {
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or("no bucket: use s3://bucket/prefix")?;
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(region) = auth.region {
        builder = builder.with_region(region);
    }
    if let Some(credentials) = auth.credentials {
        builder = builder.with_credentials(Arc::new(credentials));
    }
    for (key, value) in options {
        let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e: object_store::Error| e.to_string())?;
        builder = builder.with_config(key, *value);
    }
    let endpoint = endpoint.or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
    }
    let s3 = builder.build().map_err(|e| e.to_string())?;
    let prefix = url.path().trim_matches('/');
    if prefix.is_empty() {
        return Ok(Arc::new(s3));
    }
    Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)))
}

fn blob_key(id: Id) -> Path {
    Path::from(format!("blobs/{id}"))
}

/// `<blob id> <output name>`: the output's name and its blob.
fn output_line(line: &str) -> Option<(String, Id)> {
    let (id, name) = line.split_once(' ')?;
    Some((name.to_owned(), id.parse().ok()?))
}

/// A batch's text: per entry a `thunk <thunk id> <inputs> <producer>` line (64 hex digits each,
/// `-` for a producer not known), then a `<blob id> <output name>` line per output.
fn format_batch(entries: &[(Id, MemoRecord)]) -> String {
    let hex_or_dash = |bytes: Option<[u8; 32]>| bytes.map_or_else(|| "-".to_owned(), hex::encode);
    let mut text = format!("{BATCH_HEADER}\n");
    for (thunk, record) in entries {
        // An entry without inputs is never reused: there is no point keeping it.
        let Some(inputs) = record.inputs else { continue };
        text.push_str(&format!("thunk {thunk} {} {}\n", hex::encode(inputs), hex_or_dash(record.producer)));
        for (name, id) in &record.outputs {
            text.push_str(&format!("{id} {name}\n"));
        }
    }
    text
}

/// Parses a batch of reduction records (v1 entries have neither inputs nor producer); the
/// error is the first bad line, 1-based.
fn parse_batch(bytes: &[u8]) -> Result<Reductions, usize> {
    let text = std::str::from_utf8(bytes).map_err(|_| 1usize)?;
    let mut lines = text.lines();
    let v2 = match lines.next() {
        Some(BATCH_HEADER) => true,
        Some(BATCH_HEADER_V1) => false,
        _ => return Err(1),
    };
    let mut all = Reductions::new();
    let mut current: Option<Id> = None;
    for (i, line) in lines.enumerate() {
        if let Some(rest) = line.strip_prefix("thunk ") {
            let (thunk, record) = entry_line(rest, v2).ok_or(i + 2)?;
            all.insert(thunk, record);
            current = Some(thunk);
            continue;
        }
        let output = output_line(line).ok_or(i + 2)?;
        current.and_then(|t| all.get_mut(&t)).ok_or(i + 2)?.outputs.push(output);
    }
    Ok(all)
}

/// What follows `thunk ` on an entry's first line.
fn entry_line(rest: &str, v2: bool) -> Option<(Id, MemoRecord)> {
    let thirty_two = |hex: &str| <[u8; 32]>::try_from(hex::decode(hex).ok()?).ok();
    let mut fields = rest.split(' ');
    let thunk: Id = fields.next()?.parse().ok()?;
    let (inputs, producer) = match v2 {
        true => {
            let inputs = thirty_two(fields.next()?)?;
            let producer = match fields.next()? {
                "-" => None,
                hex => Some(thirty_two(hex)?),
            };
            (Some(inputs), producer)
        }
        false => (None, None),
    };
    fields.next().is_none().then_some((thunk, MemoRecord { outputs: Vec::new(), inputs, producer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_round_trip_through_a_folder_and_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Store::folder_url(dir.path()).expect("url")).expect("open");
        let bytes = Bytes::from_static(b"hello storage");
        let id = Id::of_blob(&bytes);
        assert!(!store.has_blob(id).await.expect("head"));
        store.put_blob(id, bytes.clone()).await.expect("put");
        assert!(store.has_blob(id).await.expect("head"));
        let dest = dir.path().join("copy");
        assert!(store.get_blob_to_file(id, &dest).await.expect("get"));
        assert_eq!(std::fs::read(&dest).expect("read"), bytes);
        let s = store.stats();
        assert_eq!((s.storage_gets, s.storage_puts, s.storage_bytes_read, s.storage_bytes_written), (3, 1, 13, 13));
    }

    #[tokio::test]
    async fn a_corrupt_blob_is_refused_and_not_left_behind() {
        let store = Store::open("memory://").expect("open");
        let id = Id::of_blob(b"expected");
        store.put_blob(id, Bytes::from_static(b"tampered")).await.expect("put");
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("x");
        let err = store.get_blob_to_file(id, &dest).await.expect_err("corrupt");
        assert!(err.to_string().contains("is corrupt"), "{err}");
        assert!(!dest.exists());
        // Issue 12, finding 10: the corrupt copy leaves storage, so an upload can repair it.
        assert!(!store.has_blob(id).await.expect("head"), "the corrupt object was removed");
        store.put_blob(id, Bytes::from_static(b"expected")).await.expect("put");
        assert!(store.get_blob_to_file(id, &dest).await.expect("repaired"));
    }

    #[tokio::test]
    async fn batches_of_reductions_round_trip_and_are_merged_past_the_limit() {
        let store = Store::open("memory://").expect("open");
        for n in 0..=COMPACT_AFTER as u8 {
            store.put_reductions(&[entry(2 * n), entry(2 * n + 1)]).await.expect("put");
        }
        let before = store.stats();
        let all = store.batched_reductions().await.expect("read");
        assert_eq!(all.len(), 2 * (COMPACT_AFTER + 1));
        assert_eq!(all.get(&entry(5).0), Some(&entry(5).1));
        let read = store.stats();
        // One listing, one GET per batch; then the merged batch and a delete per old one.
        assert_eq!(read.storage_gets - before.storage_gets, 1 + COMPACT_AFTER as u64 + 1);
        assert_eq!(read.storage_puts - before.storage_puts, 1 + COMPACT_AFTER as u64 + 1);
        assert_eq!(store.batched_reductions().await.expect("again"), all, "the merged batch holds them all");
        assert_eq!(store.stats().storage_gets - read.storage_gets, 2, "a listing and one batch");
        assert_eq!(parse_batch(b"thunkmesh-reductions v1\nBnot-an-id out\n"), Err(2));
        assert_eq!(parse_batch(b"thunkmesh-reductions v1\nthunk T1\n"), Err(2));
        assert_eq!(parse_batch(format!("{BATCH_HEADER}\nthunk {} 00 -\n", entry(1).0).as_bytes()), Err(2));
    }

    /// A memo entry of thunk `n`, with inputs, by node `n % 2`.
    fn entry(n: u8) -> (Id, MemoRecord) {
        let thunk = Id::new(thunkmesh_protocol::Kind::Thunk, &[n]);
        let outputs = vec![("out dir/a b".to_owned(), Id::of_blob(&[n])), ("log".to_owned(), Id::of_blob(b""))];
        (thunk, MemoRecord { outputs, inputs: Some([n; 32]), producer: Some([n % 2; 32]) })
    }

    /// Issue 28, finding 2: what one node produced can be purged from the memo cache; the rest
    /// stays, v1 entries are read without inputs or producer, and an entry without inputs is
    /// not written.
    #[tokio::test]
    async fn a_nodes_entries_are_forgotten_and_the_rest_kept() {
        let store = Store::open("memory://").expect("open");
        store.put_reductions(&[entry(1), entry(2)]).await.expect("put");
        store.put_reductions(&[entry(3), entry(4)]).await.expect("put");
        let forgotten = store.forget_reductions(|r| r.producer == Some([1; 32])).await.expect("forget");
        assert_eq!(forgotten, 2);
        let left = store.batched_reductions().await.expect("read");
        assert_eq!(left.keys().copied().collect::<std::collections::BTreeSet<_>>(), [entry(2).0, entry(4).0].into());
        assert_eq!(store.forget_reductions(|r| r.producer == Some([1; 32])).await.expect("again"), 0);
        let v1 = format!("{BATCH_HEADER_V1}\nthunk {}\n{} o\n", entry(7).0, Id::of_blob(b"o"));
        let old = parse_batch(v1.as_bytes()).expect("a v1 batch");
        assert_eq!(
            old[&entry(7).0],
            MemoRecord { outputs: vec![("o".into(), Id::of_blob(b"o"))], inputs: None, producer: None }
        );
        let unusable = MemoRecord { inputs: None, ..entry(8).1 };
        assert!(
            !format_batch(&[(entry(8).0, unusable)]).contains("\nthunk "),
            "an entry without inputs is not written"
        );
    }

    #[tokio::test]
    async fn blobs_large_and_small_round_trip_through_a_real_s3_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = thunkmesh_s3_fixture::S3Server::start(&dir.path().join("s3"), &["jobs"]).expect("s3 server");
        let options = [
            ("aws_access_key_id", thunkmesh_s3_fixture::ACCESS_KEY),
            ("aws_secret_access_key", thunkmesh_s3_fixture::SECRET_KEY),
            ("aws_region", "us-east-1"),
        ];
        let url = format!("s3://jobs/run-1?endpoint={}", server.endpoint());
        let store = Store::open_with(&url, &options).expect("open");
        let small = Bytes::from_static(b"small object");
        let small_id = Id::of_blob(&small);
        store.put_blob(small_id, small.clone()).await.expect("put small");
        // Larger than the multipart threshold: streamed in parts from its file.
        let big: Vec<u8> = (0..(MULTIPART_THRESHOLD + 12345)).map(|i| (i % 251) as u8).collect();
        let big_id = Id::of_blob(&big);
        let big_path = dir.path().join("big");
        std::fs::write(&big_path, &big).expect("write big");
        store.put_file(big_id, &big_path).await.expect("put big");
        for (id, bytes) in [(small_id, &small[..]), (big_id, &big[..])] {
            assert!(store.has_blob(id).await.expect("head"));
            let dest = dir.path().join(format!("got-{}", id.size));
            assert!(store.get_blob_to_file(id, &dest).await.expect("get"));
            assert_eq!(std::fs::read(&dest).expect("read"), bytes);
        }
        let (thunk, record) = entry(3);
        store.put_reductions(&[(thunk, record.clone())]).await.expect("put reductions");
        assert_eq!(store.batched_reductions().await.expect("read").get(&thunk), Some(&record));
        assert!(dir.path().join("s3/jobs/run-1/blobs").join(big_id.to_string()).exists(), "keys live under the prefix");
    }

    #[test]
    fn unknown_url_parameters_and_profiles_are_refused() {
        let err = Store::open("memory://?latency=s3-glacier").expect_err("profile");
        assert!(err.to_string().contains("no latency profile `s3-glacier`"), "{err}");
        let err = Store::open("memory://?colour=blue").expect_err("parameter");
        assert!(err.to_string().contains("unknown parameter `colour`"), "{err}");
    }

    #[test]
    fn unsupported_urls_are_refused_with_the_url() {
        let err = Store::open("ftp://x/y").expect_err("unsupported");
        assert!(err.to_string().starts_with("store URL `ftp://x/y` is not supported"));
    }
}
