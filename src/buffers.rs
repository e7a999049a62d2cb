//! Reused 16 KiB buffers: for copies out of memory files (TLS, HTTP/2) and for HTTP/2 answers
//! held to leave together. Fresh ones would each cost page faults: glibc's allocator hands freed
//! memory back to the kernel when many buffers are freed at once, and takes it back page by
//! page on the next use.

use std::sync::Mutex;

use bytes::Bytes;

/// A buffer's capacity: one TLS record, one HTTP/2 frame.
pub const SIZE: usize = 16 * 1024;

/// At most this many buffers wait for reuse (8 MiB).
const IDLE_MOST: usize = 512;

/// Buffers waiting for reuse.
static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer of [`SIZE`] bytes' capacity.
pub fn take() -> Vec<u8> {
    let reused = IDLE.lock().expect("lock").pop();
    reused.unwrap_or_else(|| Vec::with_capacity(SIZE))
}

/// Keeps `buf` for reuse (when it is one of these and there is room).
pub fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() != SIZE {
        return;
    }
    buf.clear();
    let mut idle = IDLE.lock().expect("lock");
    if idle.len() < IDLE_MOST {
        idle.push(buf);
    }
}

/// How many buffers wait for reuse.
#[cfg(test)]
pub fn idle() -> usize {
    IDLE.lock().expect("lock").len()
}

/// `buf` as `Bytes`; it goes back for reuse when the last `Bytes` is dropped.
pub fn into_bytes(buf: Vec<u8>) -> Bytes {
    Bytes::from_owner(Pooled(buf))
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}
