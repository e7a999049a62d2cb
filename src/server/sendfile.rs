//! Zero-copy answers for large cached objects. Their bodies live in sealed memory files
//! (`memfd`) instead of the heap, and on a plain-TCP HTTP/1 connection the kernel copies them
//! straight from those pages to the socket (`sendfile`), as nginx does for files on disk — at
//! 64 KiB and above, copying the body through user space is most of a hit's cost.
//!
//! hyper owns the connection and writes `Bytes`, so the body hands hyper a *placeholder* of the
//! right length and tells the connection's [`Sink`] which file range it stands for; the
//! connection's stream recognizes placeholder slices by address and sends the file range
//! instead. Every placeholder slice must match the segment at the head of the queue (its window
//! and how far it has been written), or the write fails and the connection closes: a mix-up can
//! cost a connection, never send the wrong bytes. Placeholders are never read: they are pages
//! of a zeroed allocation that are never touched.
//!
//! **What this rests on.** hyper must hand the stream the very `Bytes` a body frame gave it,
//! uncopied (HTTP/1 writes queued body buffers with `writev`), so their addresses still point
//! into the placeholder allocation. If a hyper upgrade started copying body frames, the copies
//! would not be recognized and their zeros would go out. The integration tests
//! `cache::pipelined_answers_from_memory_files_keep_their_order` (five pipelined keep-alive
//! answers from memory files, every byte compared with the source) and
//! `cache::large_objects_go_out_with_sendfile_whole_and_in_ranges` fail then. Only
//! plain-TCP HTTP/1 connections get a [`Sink`]; TLS and HTTP/2 bodies are real copies.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};

use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::memfile::StoredFile;

/// The most a body frame covers, and so the size of a placeholder window.
const FRAME: usize = 1 << 20;

/// The most a copied frame (TLS, HTTP/2) holds. hyper takes the next frame of a body before it
/// knows whether the client can take it: a client that opens streams and never reads (HTTP/2
/// flow control, a TLS reader that stalls) holds one frame per response in server memory, so
/// frames are one TLS record long, not a megabyte.
const COPY_FRAME: usize = crate::buffers::SIZE;

/// On HTTP/2, body frames are one record less the DATA frame's head (9 bytes): frame and head
/// then fill one TLS record, where a full record's worth of payload would spill its last 9
/// bytes into a record of their own (twice the records to encrypt and decrypt).
pub(super) const HTTP2_FRAME: usize = COPY_FRAME - 9;

/// Marks an HTTP/2 request (in its `extensions`): its body frames are [`HTTP2_FRAME`] long.
#[derive(Clone, Copy)]
pub struct Http2;

/// Placeholder windows; consecutive frames use different ones, so a stale segment cannot match.
const WINDOWS: usize = 16;

/// Zeroed, never written, never read: the pages are never touched and cost no memory.
static PLACEHOLDER: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(vec![0u8; FRAME * WINDOWS]));

/// One body frame's file range, waiting to be sent.
struct Segment {
    file: Arc<StoredFile>,
    offset: u64,
    len: usize,
    window: usize,
    sent: usize,
}

/// A connection's queue of file ranges that placeholders stand for. Only plain-TCP HTTP/1
/// connections have one.
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    segments: VecDeque<Segment>,
    frames: usize,
}

/// A placeholder slice that does not match the queue.
fn mismatch() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "body placeholder does not match its file range",
    )
}

impl Sink {
    /// Queues `len` (at most one frame) bytes of `file` from `offset`; returns the placeholder
    /// to hand to hyper.
    fn push(&self, file: Arc<StoredFile>, offset: u64, len: usize) -> Bytes {
        debug_assert!(len <= FRAME);
        let mut queue = self.0.lock().expect("lock");
        let window = queue.frames % WINDOWS;
        queue.frames = queue.frames.wrapping_add(1);
        queue.segments.push_back(Segment {
            file,
            offset,
            len,
            window,
            sent: 0,
        });
        let start = window * FRAME;
        PLACEHOLDER.slice(start..start + len)
    }

    /// The file and offset a placeholder slice stands for, when it matches the head of the
    /// queue exactly.
    pub fn locate(&self, slice: &[u8]) -> io::Result<(Arc<StoredFile>, u64)> {
        let at = (slice.as_ptr() as usize)
            .checked_sub(PLACEHOLDER.as_ptr() as usize)
            .ok_or_else(mismatch)?;
        let (window, pos) = (at / FRAME, at % FRAME);
        let queue = self.0.lock().expect("lock");
        match queue.segments.front() {
            Some(s) if s.window == window && s.sent == pos && pos + slice.len() <= s.len => {
                Ok((s.file.clone(), s.offset + pos as u64))
            }
            _ => Err(mismatch()),
        }
    }

    /// Records that `n` bytes of the head segment went out.
    pub fn advance(&self, n: usize) {
        let mut queue = self.0.lock().expect("lock");
        if let Some(s) = queue.segments.front_mut() {
            s.sent += n;
            if s.sent >= s.len {
                queue.segments.pop_front();
            }
        }
    }
}

/// Whether `slice` lies in the placeholder allocation.
pub fn is_placeholder(slice: &[u8]) -> bool {
    if slice.is_empty() {
        return false;
    }
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    at >= base && at < base + FRAME * WINDOWS
}

/// A range of a memory file as a response body: placeholders through the connection's sink when
/// it has one, copied frames otherwise.
pub struct FileBody {
    file: Arc<StoredFile>,
    offset: u64,
    end: u64,
    sink: Option<Sink>,
    /// The most a copied frame holds (without a sink).
    copy_frame: usize,
    sent: prometheus_client::metrics::counter::Counter,
}

impl FileBody {
    /// The bytes `offset..end` of `file`, for a request with these `extensions` (a [`Sink`] when
    /// its connection has one, [`Http2`]); `sent` counts the bytes handed to `sendfile`.
    pub fn new(
        file: Arc<StoredFile>,
        range: std::ops::Range<u64>,
        extensions: &http::Extensions,
        sent: prometheus_client::metrics::counter::Counter,
    ) -> FileBody {
        FileBody {
            file,
            offset: range.start,
            end: range.end,
            sink: extensions.get::<Sink>().cloned(),
            copy_frame: if extensions.get::<Http2>().is_some() {
                HTTP2_FRAME
            } else {
                COPY_FRAME
            },
            sent,
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> u64 {
        self.end - self.offset
    }

    /// The next frame, or `None` at the end.
    pub fn next_frame(&mut self) -> Option<io::Result<Bytes>> {
        let most = if self.sink.is_some() {
            FRAME
        } else {
            self.copy_frame
        };
        let len = self.remaining().min(most as u64) as usize;
        if len == 0 {
            return None;
        }
        let offset = self.offset;
        self.offset += len as u64;
        Some(match &self.sink {
            Some(sink) => {
                self.sent.inc_by(len as u64);
                Ok(sink.push(self.file.clone(), offset, len))
            }
            None => self.file.read(offset, len),
        })
    }
}

/// Writes the first non-empty slice of `bufs` when a placeholder is among them: bytes before a
/// placeholder go out with `MSG_MORE` (so the head and the body share packets), a placeholder's
/// file range with `sendfile`.
pub(super) fn poll_write_files(
    tcp: &TcpStream,
    sink: &Sink,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    use rustix::net::SendFlags;
    let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
        return Poll::Ready(Ok(0));
    };
    let slice: &[u8] = &bufs[first];
    let file = if is_placeholder(slice) {
        Some(sink.locate(slice)?)
    } else {
        None
    };
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        let written = tcp.try_io(tokio::io::Interest::WRITABLE, || match &file {
            Some((file, offset)) => {
                let mut offset = *offset;
                let n = rustix::fs::sendfile(tcp, &**file, Some(&mut offset), slice.len())?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                Ok(n)
            }
            None => Ok(rustix::net::send(
                tcp,
                slice,
                SendFlags::MORE | SendFlags::NOSIGNAL,
            )?),
        });
        match written {
            Ok(n) => {
                if file.is_some() {
                    sink.advance(n);
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(bytes: &[u8]) -> Arc<StoredFile> {
        use crate::memfile::FileWriter;
        let mut writer = FileWriter::new().unwrap();
        writer.write(bytes).unwrap();
        Arc::new(writer.finish().unwrap())
    }

    #[test]
    fn placeholders_match_only_the_head_of_the_queue_where_it_was_left() {
        let sink = Sink::default();
        let (a, b) = (stored(&[1; 100]), stored(&[2; 100]));
        let first = sink.push(a, 10, 50);
        let second = sink.push(b, 0, 100);
        assert!(is_placeholder(&first) && is_placeholder(&second));
        assert!(!is_placeholder(b"elsewhere"));
        // The second frame cannot go before the first.
        assert!(sink.locate(&second).is_err());
        let (file, offset) = sink.locate(&first).unwrap();
        assert_eq!((file.read(offset, 1).unwrap()[0], offset), (1, 10));
        sink.advance(20);
        // Resuming anywhere but where it was left fails.
        assert!(sink.locate(&first).is_err());
        assert_eq!(sink.locate(&first[20..]).unwrap().1, 30);
        assert!(sink.locate(&second).is_err());
        sink.advance(30);
        assert_eq!(sink.locate(&second).unwrap().1, 0);
        sink.advance(100);
        assert!(
            sink.locate(&second).is_err(),
            "an empty queue matches nothing"
        );
    }
}
