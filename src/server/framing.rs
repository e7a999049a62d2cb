//! What the raw bytes of a connection say, for the checks hyper does not make.
//!
//! Request smuggling: a request with both `Content-Length` and `Transfer-Encoding` (or two
//! `Content-Length`s) can be framed one way by a proxy in front and another way behind it.
//! hyper frames such a request by `Transfer-Encoding` and drops the `Content-Length` before the
//! handler sees it, so this watcher follows the raw bytes of an HTTP/1 connection — request heads,
//! and just enough of each body's framing to find the next head — and remembers, per request,
//! whether its head was ambiguous. The server refuses those with 400 and closes the connection.
//!
//! Progress: which bytes count against the idle and header timeouts. On HTTP/1 every byte
//! does. On HTTP/2 only request and response heads and body data do ([`FrameScan`]): PINGs,
//! SETTINGS and WINDOW_UPDATEs keep no connection alive.

use std::collections::VecDeque;

/// Follows one HTTP/1 connection's request framing.
#[derive(Debug)]
pub struct FramingWatch {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    verdicts: VecDeque<bool>,
    heads: u64,
    /// HTTP/2 by prior knowledge may start this connection (plain TCP, where hyper detects it).
    http2_allowed: bool,
    /// Blank lines came before the first head (then it cannot be the HTTP/2 preface).
    skipped_blank: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// Skipping `n` more body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// An HTTP/2 connection: its frames are followed for progress only.
    Http2(FrameScan),
    /// Lost: an ambiguous or oversized head, or a body the watch cannot follow. Every request
    /// after this point is refused, so nothing slips through unclassified.
    Broken,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What an HTTP/2 client sends before its first frame (RFC 9113 §3.4).
const H2_CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows one direction of an HTTP/2 connection frame by frame: it reads each 9-byte frame
/// header and skips the payload, and tells which frames are progress — request or response
/// heads (a HEADERS block completed by END_HEADERS) and body data — and which are only
/// upkeep (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameScan {
    /// Bytes to pass over before the first frame (the client preface).
    skip: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// The current frame is DATA.
    data: bool,
    /// A header block was started and not yet ended.
    in_block: bool,
}

/// What went by in one slice of an HTTP/2 connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Heads or data moved.
    pub progress: bool,
    /// Header blocks completed.
    pub heads: u64,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl FrameScan {
    /// A scanner whose first frame starts `skip` bytes in (the server's side starts at 0).
    pub fn after(skip: usize) -> FrameScan {
        FrameScan {
            skip,
            ..FrameScan::default()
        }
    }

    /// Whether a header block is open (HEADERS without END_HEADERS, awaiting CONTINUATION).
    pub fn in_header_block(&self) -> bool {
        self.in_block
    }

    /// Follows `bytes`, the next ones on this direction of the connection.
    pub fn scan(&mut self, mut bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        bytes = &bytes[skipped..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                seen.progress |= self.data;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = &self.header;
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            self.payload_left = len;
            self.data = kind == DATA && len > 0;
            if kind == HEADERS || kind == CONTINUATION {
                self.in_block = flags & END_HEADERS == 0;
                if !self.in_block {
                    seen.heads += 1;
                    seen.progress = true;
                }
            }
        }
        seen
    }
}

impl FramingWatch {
    /// A watcher for a connection whose heads are at most `max_head` bytes.
    pub fn new(max_head: usize) -> FramingWatch {
        FramingWatch {
            state: State::Head,
            head: Vec::new(),
            max_head,
            verdicts: VecDeque::new(),
            heads: 0,
            http2_allowed: true,
            skipped_blank: false,
        }
    }

    /// A watcher for a connection that speaks only HTTP/1 (ALPN `http/1.1`, or none).
    pub fn http1(max_head: usize) -> FramingWatch {
        FramingWatch {
            http2_allowed: false,
            ..FramingWatch::new(max_head)
        }
    }

    /// A watcher for a connection that speaks HTTP/2 from its first byte (ALPN `h2`).
    pub fn http2(max_head: usize) -> FramingWatch {
        FramingWatch {
            state: State::Http2(FrameScan::after(H2_CLIENT_PREFACE.len())),
            ..FramingWatch::new(max_head)
        }
    }

    /// Whether the next request handed to the service must be refused: its head was
    /// ambiguous, or the watch could not classify it (it lost track of the framing before that
    /// head). Fails closed: an HTTP/1 request with no verdict is refused.
    pub fn next_is_ambiguous(&mut self) -> bool {
        self.verdicts.pop_front().unwrap_or(!self.is_http2())
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.state, State::Http2(_))
    }

    /// Whether the connection waits for a request head: an HTTP/1 connection between requests
    /// or inside a head; an HTTP/2 connection before its first request, or inside a header
    /// block.
    pub fn awaiting_head(&self) -> bool {
        match &self.state {
            State::Head => true,
            State::Http2(scan) => self.heads == 0 || scan.in_header_block(),
            _ => false,
        }
    }

    /// Request heads completed so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Follows bytes read from the client; true when they are progress: every HTTP/1 byte, and
    /// on HTTP/2 a completed request head. (Request body data is not: a handler reading a body
    /// keeps the connection busy anyway, and DATA for no one, on closed streams or all padding,
    /// must not keep a connection open.)
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        if let State::Http2(scan) = &mut self.state {
            let seen = scan.scan(bytes);
            self.heads += seen.heads;
            return seen.heads > 0;
        }
        // (The preface may end mid-read: the frames after it are scanned there.)
        self.feed_http1(bytes);
        !bytes.is_empty()
    }

    fn feed_http1(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Http2(scan) => {
                    let seen = scan.scan(bytes);
                    self.heads += seen.heads;
                    return;
                }
                State::Broken => return,
                State::Head => self.feed_head(bytes),
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                    &bytes[n as usize..]
                }
                State::ChunkSize(line) => match take_line(line, bytes, self.max_head) {
                    Line::More => return,
                    Line::TooLong => {
                        self.state = State::Broken;
                        return;
                    }
                    Line::Done(rest) => {
                        let text = String::from_utf8_lossy(line);
                        let size = text.split(';').next().unwrap_or("").trim();
                        self.state = match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            // Data, then its CRLF: skipped together (a bare LF is a framing
                            // error hyper refuses anyway).
                            Ok(n) => State::ChunkData(n.saturating_add(2)),
                            Err(_) => State::Broken,
                        };
                        rest
                    }
                },
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    &bytes[n as usize..]
                }
                State::Trailers(line) => match take_line(line, bytes, self.max_head) {
                    Line::More => return,
                    Line::TooLong => {
                        self.state = State::Broken;
                        return;
                    }
                    Line::Done(rest) => {
                        // hyper ends trailer lines only at CRLF; a bare LF would make the two
                        // disagree on where the request ends.
                        let (ended, empty) = (line.last() == Some(&b'\r'), line == b"\r");
                        line.clear();
                        if !ended {
                            self.state = State::Broken;
                            return;
                        }
                        if empty {
                            self.state = State::Head;
                        }
                        rest
                    }
                },
            };
        }
    }

    fn feed_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let mut bytes = bytes;
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        if self.head.is_empty() {
            while let [b'\r' | b'\n', rest @ ..] = bytes {
                bytes = rest;
                self.skipped_blank = true;
            }
            if bytes.is_empty() {
                return bytes;
            }
        }
        // The usual case: a whole head in one read, looked at where it lies.
        if self.head.is_empty()
            && let Some(end) = find_head_end(bytes, 0)
        {
            self.finish_head(&bytes[..end]);
            return &bytes[end..];
        }
        let before = self.head.len();
        self.head.extend_from_slice(bytes);
        let Some(end) = find_head_end(&self.head, before.saturating_sub(3)) else {
            if self.head.len() > self.max_head {
                self.state = State::Broken;
            }
            return &[];
        };
        let head = std::mem::take(&mut self.head);
        self.finish_head(&head[..end]);
        &bytes[end - before..]
    }

    fn finish_head(&mut self, head: &[u8]) {
        if head.len() > self.max_head {
            // hyper answers 431 to such a head; whatever follows is not followed.
            self.state = State::Broken;
            return;
        }
        if head.starts_with(H2_PREFACE) {
            // HTTP/2 by prior knowledge starts a connection with exactly the preface (whose
            // `SM` line follows this head); anywhere else hyper refuses it, and so does this.
            let first = self.heads == 0 && !self.skipped_blank;
            let exact = H2_CLIENT_PREFACE.starts_with(head);
            self.state = if self.http2_allowed && first && exact {
                State::Http2(FrameScan::after(H2_CLIENT_PREFACE.len() - head.len()))
            } else {
                State::Broken
            };
            return;
        }
        self.heads += 1;
        let framing = framing_of(head);
        self.verdicts.push_back(framing == Framing::Ambiguous);
        self.state = match framing {
            Framing::Ambiguous => State::Broken,
            Framing::Chunked => State::ChunkSize(Vec::new()),
            Framing::Length(0) | Framing::None => State::Head,
            Framing::Length(n) => State::Body(n),
        };
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Ambiguous,
}

/// The end (exclusive) of a head ending in an empty line (`\r\n\r\n` or `\n\n`), looking from
/// `from` on.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    memchr::memchr_iter(b'\n', rest).find_map(|offset| {
        let nl = from + offset;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => Some(nl + 2),
            Some([b'\r', b'\n', ..]) => Some(nl + 3),
            _ => None,
        }
    })
}

fn framing_of(head: &[u8]) -> Framing {
    let mut lengths = 0;
    let mut length = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    // Header lines start after each newline; only Content-Length and Transfer-Encoding matter,
    // so a line is looked at only when it starts with their first letter.
    for nl in memchr::memchr_iter(b'\n', head) {
        let line = &head[nl + 1..];
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            continue;
        }
        let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    if lengths > 1 || (lengths == 1 && transfer_encoding) {
        return Framing::Ambiguous;
    }
    if chunked {
        return Framing::Chunked;
    }
    match (lengths, length) {
        (0, _) => Framing::None,
        (_, Some(n)) => Framing::Length(n),
        (_, None) => Framing::Ambiguous,
    }
}

enum Line<'a> {
    Done(&'a [u8]),
    More,
    TooLong,
}

/// Appends bytes to `line` up to and including a `\n`; returns what follows it. A line longer
/// than `max` is too long however the reads cut it.
fn take_line<'a>(line: &mut Vec<u8>, bytes: &'a [u8], max: usize) -> Line<'a> {
    let (taken, rest) = match memchr::memchr(b'\n', bytes) {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    if line.len() + taken.len() > max {
        return Line::TooLong;
    }
    line.extend_from_slice(taken);
    match rest {
        Some(rest) => Line::Done(rest),
        None => Line::More,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(parts: &[&[u8]]) -> Vec<bool> {
        let mut w = FramingWatch::new(64 * 1024);
        for p in parts {
            w.feed(p);
        }
        let mut out = Vec::new();
        while let Some(v) = w.verdicts.pop_front() {
            out.push(v);
        }
        out
    }

    #[test]
    fn plain_requests_are_fine() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(verdicts(&[get, get]), vec![false, false]);
        let put = b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(verdicts(&[put, get]), vec![false, false]);
    }

    #[test]
    fn ambiguous_heads_are_flagged_in_either_order() {
        let a =
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let b =
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
        let c = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd";
        assert_eq!(verdicts(&[a]), vec![true]);
        assert_eq!(verdicts(&[b]), vec![true]);
        assert_eq!(verdicts(&[c]), vec![true]);
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        let fake = b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut put =
            format!("PUT /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", fake.len()).into_bytes();
        put.extend_from_slice(fake);
        let get = b"GET /b HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(&[&put, get]), vec![false, false]);
        // Chunked, split at every byte.
        let mut chunked = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x};ext=1\r\n", fake.len()).as_bytes());
        chunked.extend_from_slice(fake);
        chunked.extend_from_slice(b"\r\n0\r\nTrailer: x\r\n\r\n");
        chunked.extend_from_slice(get);
        let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![false, false]);
    }

    #[test]
    fn heads_split_anywhere_or_ending_in_bare_newlines_are_followed() {
        let ambiguous: &[u8] =
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        for at in 0..=ambiguous.len() {
            let (a, b) = ambiguous.split_at(at);
            assert_eq!(verdicts(&[a, b]), vec![true], "split at {at}");
        }
        let bare: &[u8] =
            b"GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\ncontent-length: 1\ncontent-length: 2\n\n";
        assert_eq!(verdicts(&[bare]), vec![false, true]);
        let bytes: Vec<&[u8]> = bare.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![false, true]);
    }

    /// Requests that try to make a proxy in front and s3warden disagree on where one ends.
    fn corpus() -> Vec<Vec<u8>> {
        let get: &[u8] = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let smuggled: &[u8] =
            b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let chunked = |size_line: &[u8], rest: &[u8]| {
            let mut r = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(size_line);
            r.extend_from_slice(rest);
            r
        };
        let long_ext = format!("5;{}\r\n", "e".repeat(6000)).into_bytes();
        let too_long_ext = format!("5;{}\r\n", "e".repeat(70_000)).into_bytes();
        let mut out = vec![
            smuggled.to_vec(),
            b"POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n".to_vec(),
            b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd".to_vec(),
            b"POST /s HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\nabcd".to_vec(),
            b"POST /s HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd".to_vec(),
            b"POST /s HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\n".to_vec(),
            b"GET /a HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n\n".to_vec(),
            chunked(b"5\r\n", b"hello\r\n0\r\n\r\n"),
            chunked(&long_ext, b"hello\r\n0\r\n\r\n"),
            chunked(&too_long_ext, b"hello\r\n0\r\n\r\n"),
            chunked(b"zz\r\n", b"hello\r\n0\r\n\r\n"),
            chunked(b"fffffffffffffffffffff\r\n", b"x"),
            chunked(b"0\r\n", b"Trailer: a\r\n\r\n"),
            [b"GET /a HTTP/1.1\r\nX: ", "h".repeat(70_000).as_bytes(), b"\r\n\r\n"].concat(),
            // A bare LF in the trailers: hyper keeps reading trailers where a LF-only reader
            // would see the next head.
            chunked(b"0\r\n", b"X: a\n\r\nGET /fake HTTP/1.1\r\n\r\n"),
            chunked(b"0\r\n", b"\nGET /fake HTTP/1.1\r\n\r\n"),
            // The HTTP/2 preface after a request, or after blank lines.
            [get, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"].concat(),
            b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ];
        // Each one followed by a plain request, and by a smuggling attempt.
        for i in 0..out.len() {
            out.push([&out[i][..], get].concat());
            out.push([&out[i][..], smuggled, get].concat());
        }
        out
    }

    /// The verdicts of the first four requests s3warden would be handed.
    fn outcome(parts: &[&[u8]]) -> Vec<bool> {
        let mut w = FramingWatch::new(64 * 1024);
        for p in parts {
            w.feed(p);
        }
        (0..4).map(|_| w.next_is_ambiguous()).collect()
    }

    #[test]
    fn a_request_split_at_any_byte_gets_the_verdict_it_gets_whole() {
        for request in corpus() {
            let whole = outcome(&[&request]);
            // Every boundary for short requests; a spread of them for the long ones.
            let step = (request.len() / 2000).max(1);
            for at in (0..=request.len()).step_by(step) {
                let (a, b) = request.split_at(at);
                assert_eq!(
                    outcome(&[a, b]),
                    whole,
                    "split at {at} of {:?}",
                    String::from_utf8_lossy(&request[..request.len().min(120)])
                );
            }
        }
    }

    proptest::proptest! {
        /// Any number of cuts, anywhere.
        #[test]
        fn any_cuts_give_the_same_verdicts(
            which in 0usize..100,
            cuts in proptest::collection::vec(0usize..80_000, 0..6),
        ) {
            let corpus = corpus();
            let request = &corpus[which % corpus.len()];
            let parts = crate::fuzzing::cut(request, &cuts);
            proptest::prop_assert_eq!(outcome(&parts), outcome(&[request]));
        }
    }

    #[test]
    fn trailers_and_prefaces_hyper_would_read_otherwise_refuse_what_follows() {
        let mut w = FramingWatch::new(8192);
        w.feed(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n\
              GET /fake HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert!(!w.next_is_ambiguous());
        assert!(w.next_is_ambiguous());
        assert!(w.next_is_ambiguous());
        let mut w = FramingWatch::new(8192);
        w.feed(b"GET /a HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!w.is_http2());
        assert!(!w.next_is_ambiguous());
        assert!(w.next_is_ambiguous());
        // Over TLS with ALPN http/1.1, the preface is no HTTP/2 either.
        let mut w = FramingWatch::http1(8192);
        w.feed(H2_CLIENT_PREFACE);
        assert!(!w.is_http2());
        assert!(w.next_is_ambiguous());
    }

    #[test]
    fn what_the_watch_cannot_follow_refuses_every_later_request() {
        let mut w = FramingWatch::new(8192);
        let mut put = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
        put.extend_from_slice(&vec![b'e'; 9000]);
        w.feed(&put[..5000]);
        w.feed(&put[5000..]);
        w.feed(b"\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert!(!w.next_is_ambiguous(), "the PUT was classified");
        assert!(w.next_is_ambiguous(), "what follows is not");
        assert!(w.next_is_ambiguous());
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    /// Scans `bytes` cut at `at`; the sum of what was seen.
    fn scan_split(bytes: &[u8], at: usize) -> (Seen, bool) {
        let mut scan = FrameScan::default();
        let (a, b) = bytes.split_at(at);
        let (x, y) = (scan.scan(a), scan.scan(b));
        let seen = Seen {
            progress: x.progress || y.progress,
            heads: x.heads + y.heads,
        };
        (seen, scan.in_header_block())
    }

    #[test]
    fn upkeep_frames_are_not_progress_heads_and_data_are() {
        let upkeep = [
            frame(0x4, 0, &[0, 3, 0, 0, 0, 100]),
            frame(0x4, 0x1, &[]),
            frame(0x6, 0, &[7; 8]),
            frame(0x6, 0x1, &[7; 8]),
            frame(0x8, 0, &[0, 0, 0, 1]),
            frame(0x2, 0, &[0, 0, 0, 3, 16]),
            frame(0x3, 0, &[0, 0, 0, 8]),
            frame(0x0, 0x1, &[]),
        ]
        .concat();
        let heads = frame(0x1, 0x4 | 0x1, &[0x82, 0x87]);
        let split_heads = [frame(0x1, 0, &[0x82]), frame(0x9, 0x4, &[0x87])].concat();
        let data = frame(0x0, 0, &[1; 100]);
        for at in 0..=upkeep.len() {
            assert_eq!(scan_split(&upkeep, at).0, Seen::default(), "at {at}");
        }
        for at in 0..=heads.len() {
            let (seen, open) = scan_split(&[&upkeep[..], &heads].concat(), upkeep.len() + at);
            assert_eq!((seen.heads, seen.progress, open), (1, true, false));
        }
        let (seen, open) = scan_split(&split_heads[..10], 5);
        assert_eq!(
            (seen.heads, seen.progress, open),
            (0, false, true),
            "a block left open"
        );
        let (seen, open) = scan_split(&split_heads, 5);
        assert_eq!((seen.heads, open), (1, false));
        for at in 0..=data.len() {
            assert!(scan_split(&data, at).0.progress, "at {at}");
        }
    }

    #[test]
    fn on_http2_only_request_heads_are_progress_from_the_client() {
        let mut w = FramingWatch::http2(8192);
        w.feed(H2_CLIENT_PREFACE);
        // Data for no one: padded and empty, or one byte on a closed stream.
        assert!(!w.feed(&frame(0x0, 0x8, &[0])));
        assert!(!w.feed(&frame(0x0, 0, &[1])));
        assert!(w.feed(&frame(0x1, 0x5, &[0x82])));
    }

    #[test]
    fn an_http2_connection_awaits_its_first_head() {
        let settings = frame(0x4, 0, &[]);
        let ping = frame(0x6, 0, &[0; 8]);
        for mut w in [FramingWatch::new(8192), FramingWatch::http2(8192)] {
            assert!(w.awaiting_head());
            w.feed(H2_CLIENT_PREFACE);
            assert!(w.is_http2());
            assert!(!w.feed(&[settings.clone(), ping.clone()].concat()));
            assert!(w.awaiting_head());
            assert!(w.feed(&frame(0x1, 0x5, &[0x82])));
            assert!(!w.awaiting_head());
            assert_eq!(w.heads(), 1);
            assert!(!w.next_is_ambiguous(), "HTTP/2 requests are not refused");
        }
        // The preface and the first frames in one read.
        let mut w = FramingWatch::new(8192);
        w.feed(&[H2_CLIENT_PREFACE, &settings, &frame(0x1, 0x5, &[0x82])].concat());
        assert_eq!(w.heads(), 1);
    }

    #[test]
    fn http2_is_not_followed() {
        assert!(
            verdicts(&[
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                b"Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n"
            ])
            .is_empty()
        );
    }
}
