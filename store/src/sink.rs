//! Writing a verified blob to a file as it arrives from the network (a peer's stream or a
//! storage GET): chunks are gathered into large blocks, and each block is hashed and written on a
//! blocking thread while the next one fills, so the async thread only copies bytes, and a 64 MiB
//! object costs 16 hand-offs between threads rather than one per network chunk. An object that
//! fits in one block is written, hashed and closed in a single hand-off. At most two blocks are
//! held per sink: the one filling and the one being written.

use std::io::Write;
use std::path::{Path, PathBuf};

use thunkmesh_protocol::Id;
use tokio::task::JoinHandle;

/// The size of one write: large enough that the hand-off to a blocking thread is cheap beside
/// the write, small enough that a sink's two blocks stay a few MiB.
pub const BLOCK: usize = 4 << 20;

/// The file being written and the hash of what went into it.
#[derive(Debug)]
struct Written {
    file: Option<std::fs::File>,
    hasher: blake3::Hasher,
    /// The buffer of the block just written, returned for reuse.
    spare: Vec<u8>,
}

/// A blob on its way into a file; see the module.
#[derive(Debug)]
pub struct BlobSink {
    path: PathBuf,
    /// Bytes taken so far.
    taken: u64,
    filling: Vec<u8>,
    /// The state after the block being written, or the state itself when nothing is in flight.
    writing: Option<JoinHandle<std::io::Result<Written>>>,
    idle: Option<Written>,
}

impl BlobSink {
    /// A sink that will create `path` (with its first block).
    pub fn new(path: &Path) -> BlobSink {
        let idle = Written { file: None, hasher: blake3::Hasher::new(), spare: Vec::new() };
        BlobSink { path: path.to_owned(), taken: 0, filling: Vec::new(), writing: None, idle: Some(idle) }
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.taken
    }

    /// Whether nothing has been taken yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `bytes`; when a block is full, starts writing it (after the previous block is done).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.taken += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.filling.capacity() == 0 {
                self.filling.reserve_exact(BLOCK.min(rest.len().max(64 << 10)));
            }
            let room = BLOCK - self.filling.len();
            let (now, later) = rest.split_at(rest.len().min(room));
            self.filling.extend_from_slice(now);
            rest = later;
            if self.filling.len() == BLOCK {
                self.write_block().await?;
            }
        }
        Ok(())
    }

    /// Writes what is left and closes the file; returns the id of everything taken.
    pub async fn finish(mut self) -> std::io::Result<Id> {
        let mut written = self.settle().await?;
        let (path, last) = (self.path.clone(), std::mem::take(&mut self.filling));
        let task = tokio::task::spawn_blocking(move || {
            write_block(&path, &mut written, &last)?;
            if written.file.is_none() {
                // Nothing was taken: the blob is an empty file.
                std::fs::File::create(&path)?;
            }
            Ok::<Id, std::io::Error>(Id::blob(*written.hasher.finalize().as_bytes(), written.hasher.count()))
        });
        task.await.map_err(std::io::Error::other)?
    }

    /// Waits for any block in flight and removes the file: for a transfer that failed.
    pub async fn discard(mut self) {
        let _ = self.settle().await;
        let path = self.path.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }

    /// Waits for the block in flight, if any; the state after it.
    async fn settle(&mut self) -> std::io::Result<Written> {
        match (self.writing.take(), self.idle.take()) {
            (Some(task), _) => task.await.map_err(std::io::Error::other)?,
            (None, Some(idle)) => Ok(idle),
            (None, None) => Err(std::io::Error::other("a sink used after a failed write")),
        }
    }

    async fn write_block(&mut self) -> std::io::Result<()> {
        let mut written = self.settle().await?;
        let mut block = std::mem::take(&mut written.spare);
        block.clear();
        std::mem::swap(&mut block, &mut self.filling);
        let path = self.path.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_block(&path, &mut written, &block)?;
            written.spare = block;
            Ok(written)
        }));
        Ok(())
    }
}

fn write_block(path: &Path, written: &mut Written, block: &[u8]) -> std::io::Result<()> {
    if block.is_empty() {
        return Ok(());
    }
    let file = match &mut written.file {
        Some(file) => file,
        None => written.file.insert(std::fs::File::create(path)?),
    };
    file.write_all(block)?;
    written.hasher.update(block);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_of_any_size_arrive_whole_and_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(2 * BLOCK + 12_345)).map(|i| (i * 31 % 251) as u8).collect();
        for chunk in [1_000, 65_536, BLOCK, 3 * BLOCK] {
            let path = dir.path().join(format!("blob-{chunk}"));
            let mut sink = BlobSink::new(&path);
            for part in data.chunks(chunk) {
                sink.write(part).await.expect("write");
            }
            assert_eq!(sink.len(), data.len() as u64);
            let id = sink.finish().await.expect("finish");
            assert_eq!(id, Id::of_blob(&data), "chunks of {chunk}");
            assert_eq!(std::fs::read(&path).expect("read"), data, "chunks of {chunk}");
        }
    }

    #[tokio::test]
    async fn an_empty_blob_is_an_empty_file_and_a_discarded_one_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        assert_eq!(BlobSink::new(&empty).finish().await.expect("finish"), Id::of_blob(b""));
        assert_eq!(std::fs::read(&empty).expect("read").len(), 0);
        let gone = dir.path().join("gone");
        let mut sink = BlobSink::new(&gone);
        sink.write(&vec![7; BLOCK + 1]).await.expect("write");
        sink.discard().await;
        assert!(!gone.exists());
    }
}
