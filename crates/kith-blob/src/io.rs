//! Adapters between bao-tree's async io traits (from `iroh-io`) and what kith has: a `futures`
//! byte stream (a libp2p stream) and plain `std::fs::File`s.
//!
//! File reads and writes here are positioned and synchronous: one chunk group (16 KiB) at a time,
//! served from the page cache in the common case, so they do not justify a thread hop each.
//! The store's fsyncs happen once per batch (see `store::FLUSH_EVERY`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use iroh_io::{AsyncSliceReader, AsyncStreamReader, AsyncStreamWriter};

/// Bytes of the data file read at once on the send path: the encoder asks for one 16 KiB chunk
/// group at a time, in order, so one read serves sixteen of them (sliced, not copied).
pub(crate) const DATA_READ_AHEAD: usize = 256 * 1024;
/// Bytes of the outboard read at once: it asks for one 64-byte hash pair at a time; 1 MiB holds
/// every pair of a 256 MB blob.
pub(crate) const OUTBOARD_READ_AHEAD: usize = 1024 * 1024;

/// A file read at offsets, for bao-tree's encoder (data and outboard), through a read-ahead
/// window.
///
/// The length is taken once when opened: a blob's files are created at their full size and never
/// change length, and a `stat` per 16 KiB read was a syscall per chunk group on the send path.
/// Only verified, durable ranges are ever read for sending, and those do not change, so the
/// window cannot go stale.
#[derive(Debug)]
pub(crate) struct FileSlice {
    file: File,
    len: u64,
    /// The blob's "removed" flag: once set, reads fail, so a range being served from a blob that
    /// was just deleted (a cancelled upload) stops instead of finishing from the unlinked file.
    removed: Option<Arc<AtomicBool>>,
    read_ahead: usize,
    window: Bytes,
    window_start: u64,
}

impl FileSlice {
    pub(crate) fn new(
        file: File,
        removed: Option<Arc<AtomicBool>>,
        read_ahead: usize,
    ) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            removed,
            read_ahead,
            window: Bytes::new(),
            window_start: 0,
        })
    }
}

impl AsyncSliceReader for FileSlice {
    async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        if self
            .removed
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire))
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the blob was removed while it was being served",
            ));
        }
        let available = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let len = len.min(available);
        if let Some(start) = offset.checked_sub(self.window_start)
            && let Ok(start) = usize::try_from(start)
            && start.saturating_add(len) <= self.window.len()
        {
            return Ok(self.window.slice(start..start + len));
        }
        let mut buf = vec![0u8; len.max(self.read_ahead).min(available)];
        self.file.read_exact_at(&mut buf, offset)?;
        self.window = buf.into();
        self.window_start = offset;
        Ok(self.window.slice(..len))
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// Reads a `futures` stream for bao-tree's decoder, counting every byte into `counter` (the
/// metrics' `bytes_received`) and `local` (this transfer's own count).
pub(crate) struct StreamReader<'a, R> {
    pub(crate) inner: &'a mut R,
    pub(crate) counter: &'a AtomicU64,
    pub(crate) local: u64,
}

impl<R: AsyncBufRead + Unpin> StreamReader<'_, R> {
    fn count(&mut self, n: usize) {
        self.local += n as u64;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<R: AsyncBufRead + Unpin> AsyncStreamReader for StreamReader<'_, R> {
    async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        // bao-tree asks for one chunk group or one hash pair at a time; cap the allocation anyway.
        // Copied straight out of the stream's read buffer: no zeroing, one copy.
        let want = len.min(1 << 20);
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                break;
            }
            let n = available.len().min(want - buf.len());
            buf.extend_from_slice(&available[..n]);
            self.inner.consume_unpin(n);
        }
        self.count(buf.len());
        Ok(buf.into())
    }

    async fn read<const L: usize>(&mut self) -> io::Result<[u8; L]> {
        let mut buf = [0u8; L];
        self.inner.read_exact(&mut buf).await?;
        self.count(L);
        Ok(buf)
    }
}

/// Writes bao-tree's encoder output to a `futures` stream, counting into `counter` (the metrics'
/// `bytes_sent`).
pub(crate) struct StreamWriter<'a, W> {
    pub(crate) inner: &'a mut W,
    pub(crate) counter: &'a AtomicU64,
    /// Told the bytes written so far (a push's progress bar).
    pub(crate) progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
    /// Bytes written through this writer.
    pub(crate) written: u64,
    /// Also counts here (the served blob's own counter).
    pub(crate) also: Option<&'a AtomicU64>,
}

impl<W: AsyncWrite + Unpin> AsyncStreamWriter for StreamWriter<'_, W> {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data).await?;
        self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(also) = self.also {
            also.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Some(progress) = self.progress.as_mut() {
            self.written += data.len() as u64;
            progress(self.written);
        }
        Ok(())
    }

    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        self.write(&data).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }
}
