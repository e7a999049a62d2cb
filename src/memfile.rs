//! Sealed memory files (`memfd`) for large cached bodies when the public listener is plain:
//! they stay off the heap, cannot change once written, and a plain HTTP/1 connection can
//! `sendfile` them to the socket (the server does that). Each holds a file descriptor, so
//! together they take at most half the limit.

use std::fs::File;
use std::io::{self, Write};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;

use crate::buffers;

/// Objects at least this large are kept in memory files; below it one copy costs less than the
/// extra system call.
pub const MIN_FILE_SIZE: u64 = 32 * 1024;

/// Memory files open now; each holds a file descriptor.
static OPEN_FILES: AtomicUsize = AtomicUsize::new(0);

/// Bytes the finished memory files hold.
static FILE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Memory files open now, and the bytes the finished ones hold (for the metrics).
pub fn in_use() -> (usize, u64) {
    (
        OPEN_FILES.load(Ordering::Relaxed),
        FILE_BYTES.load(Ordering::Relaxed),
    )
}

/// At most this many memory files: half the descriptor limit, so that connections and S3
/// requests always have the other half. Beyond it, large bodies stay on the heap.
fn file_budget() -> usize {
    static BUDGET: LazyLock<usize> = LazyLock::new(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX))
    });
    *BUDGET
}

/// Raises the soft descriptor limit to the hard one (a cache of memory files and many
/// connections both need descriptors; systemd's `LimitNOFILE=` sets both).
pub fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the descriptor limit");
        }
    }
}

/// One memory file's place in the budget (and its bytes, once finished), given back when the
/// file closes.
#[derive(Debug)]
struct Slot {
    bytes: u64,
}

impl Slot {
    fn take() -> io::Result<Slot> {
        if OPEN_FILES.fetch_add(1, Ordering::Relaxed) >= file_budget() {
            OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other(
                "memory files would use half the descriptor limit",
            ));
        }
        Ok(Slot { bytes: 0 })
    }

    fn hold(mut self, bytes: u64) -> Slot {
        FILE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        self.bytes = bytes;
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
        FILE_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// An object body in a sealed memory file.
#[derive(Debug)]
pub struct StoredFile {
    file: File,
    len: u64,
    _slot: Slot,
}

impl StoredFile {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Copies `len` bytes from `offset` into memory (for connections that cannot use
    /// `sendfile`: TLS, HTTP/2). Copies of at most [`buffers::SIZE`] bytes reuse their buffers.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let pooled = len <= buffers::SIZE;
        let mut buf = if pooled {
            buffers::take()
        } else {
            Vec::with_capacity(len)
        };
        // Read into the buffer's spare capacity: zeroing it first would cost as much as the copy.
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let n = rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.truncate(len);
        Ok(if pooled {
            buffers::into_bytes(buf)
        } else {
            Bytes::from(buf)
        })
    }
}

impl std::os::fd::AsFd for StoredFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Writes a body into a new memory file.
pub struct FileWriter {
    file: File,
    len: u64,
    slot: Slot,
}

impl FileWriter {
    /// A new, empty memory file; fails where `memfd_create` is not allowed, or when memory files
    /// already hold half the descriptor limit.
    pub fn new() -> io::Result<FileWriter> {
        use rustix::fs::{MemfdFlags, memfd_create};
        let slot = Slot::take()?;
        let fd = memfd_create(
            "s3warden-object",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        Ok(FileWriter {
            file: File::from(fd),
            len: 0,
            slot,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Seals the file: from now on nobody can change, grow or shrink it.
    pub fn finish(self) -> io::Result<StoredFile> {
        use rustix::fs::{SealFlags, fcntl_add_seals};
        fcntl_add_seals(
            &self.file,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )?;
        Ok(StoredFile {
            file: self.file,
            len: self.len,
            _slot: self.slot.hold(self.len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_cannot_change() {
        let mut writer = FileWriter::new().unwrap();
        writer.write(b"hello").unwrap();
        let file = writer.finish().unwrap();
        assert!((&file.file).write_all(b"x").is_err());
        assert!(file.file.set_len(1).is_err());
        assert_eq!(file.read(1, 3).unwrap(), "ell");
    }

    #[test]
    fn copies_reuse_their_buffers_and_hold_only_their_range() {
        let body: Vec<u8> = (0..3 * buffers::SIZE).map(|i| (i % 251) as u8).collect();
        let mut writer = FileWriter::new().unwrap();
        writer.write(&body).unwrap();
        let file = writer.finish().unwrap();
        let first = file.read(10, buffers::SIZE).unwrap();
        assert_eq!(first, body[10..10 + buffers::SIZE]);
        let at = first.as_ptr();
        drop(first);
        // A short copy in the middle of the file: only its bytes, in a reused buffer (other
        // tests may take one from the shared pool at the same time, so look at a few).
        let again: Vec<Bytes> = (0..4).map(|_| file.read(100, 7).unwrap()).collect();
        assert!(again.iter().all(|b| *b == body[100..107]));
        assert!(again.iter().any(|b| b.as_ptr() == at) || buffers::idle() == 0);
        // Larger copies are not pooled, and still exact.
        let whole = file.read(0, body.len()).unwrap();
        assert_eq!(whole, body);
    }
}
