//! HTTP/2 streams run inside their connection's task instead of a task each.
//!
//! hyper hands every HTTP/2 stream to an executor. With tokio's, each stream is a task, and
//! each answer wakes the connection's task, which tokio runs next (its "LIFO slot"): the
//! connection writes after every single answer. A client with ten requests in flight on a
//! connection gets ten writes, ten TLS records and ten wake-ups where one of each would do.
//!
//! Here the connection's task polls its own streams: it reads what the client sent (starting
//! the streams), runs them until they wait, then lets the connection write what they answered,
//! all in one poll. Answers that are ready together leave together, as nginx sends them. A
//! stream still waits on its own (an S3 fetch, flow control) without holding the others up;
//! what it gives up is running on another core than its connection.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, future::BoxFuture};

use super::connection::Cork;

/// How many times one poll of a connection runs its streams and reads what else arrived before
/// it writes what they answered and lets other tasks run.
const ROUNDS: usize = 4;

thread_local! {
    /// The streams hyper starts while a [`WithStreams`] polls its connection on this thread.
    static STARTED: RefCell<Option<Vec<BoxFuture<'static, ()>>>> = const { RefCell::new(None) };
    /// Set when the handler of the stream being polled on this thread has answered.
    static ANSWERED: Cell<bool> = const { Cell::new(false) };
}

/// Tells the stream being polled, if any, that its handler has answered: what is left is
/// sending the answer, which [`Watched`] times.
pub fn answered() {
    ANSWERED.set(true);
}

/// hyper's executor for the public listener: a stream started while its connection is polled
/// by [`WithStreams`] runs in that connection's task; anything else is spawned.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        // A panicking stream ends alone, as a task of its own would.
        let future = AssertUnwindSafe(future).catch_unwind().map(drop).boxed();
        let unclaimed = STARTED.with(|started| match started.borrow_mut().as_mut() {
            Some(started) => {
                started.push(future);
                None
            }
            None => Some(future),
        });
        if let Some(future) = unclaimed {
            tokio::spawn(future);
        }
    }
}

/// A connection future together with the HTTP/2 streams it starts.
pub struct WithStreams<C> {
    connection: C,
    streams: FuturesUnordered<Watched>,
    /// Holds the connection's writes while its streams answer.
    cork: Cork,
    /// How long an answer may go without progress ([`Watched`]).
    send_timeout: Duration,
    /// When the streams are looked at next (armed once there are any).
    next_look: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C> WithStreams<C> {
    pub fn new(connection: C, cork: Cork, send_timeout: Duration) -> WithStreams<C> {
        WithStreams {
            connection,
            streams: FuturesUnordered::new(),
            cork,
            send_timeout,
            next_look: None,
        }
    }
}

impl<C: Future + Unpin> WithStreams<C> {
    /// Polls the connection, collecting the streams it starts.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> (Poll<C::Output>, bool) {
        let outer = STARTED.with(|started| started.borrow_mut().replace(Vec::new()));
        let result = Pin::new(&mut self.connection).poll(cx);
        let started = STARTED
            .with(|started| std::mem::replace(&mut *started.borrow_mut(), outer))
            .unwrap_or_default();
        let any = !started.is_empty();
        self.streams.extend(started.into_iter().map(Watched::new));
        (result, any)
    }
}

impl<C: Future + Unpin> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let polled = self.drive(cx);
        if polled.is_pending() {
            self.sweep(cx);
        }
        polled
    }
}

impl<C: Future + Unpin> WithStreams<C> {
    /// Reads, runs the streams, writes: one poll's work.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self;
        // Reads requests, starting streams, and writes what is due, as hyper alone would. On
        // HTTP/1 (no streams) that is all.
        let (result, mut started) = this.poll_connection(cx);
        if let Poll::Ready(output) = result {
            return Poll::Ready(this.finish(output));
        }
        if this.streams.is_empty() {
            return Poll::Pending;
        }
        // Runs the streams (new ones, and ones woken by something else: an S3 fetch, flow
        // control), holding what they write; reads what else has arrived and runs that too.
        this.cork.store(true, Ordering::Relaxed);
        for _ in 0..ROUNDS {
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !started {
                break;
            }
            let result;
            (result, started) = this.poll_connection(cx);
            if let Poll::Ready(output) = result {
                this.cork.store(false, Ordering::Relaxed);
                return Poll::Ready(this.finish(output));
            }
        }
        // Writes it all. Streams this poll starts run on the next one.
        this.cork.store(false, Ordering::Relaxed);
        let (result, started) = this.poll_connection(cx);
        if let Poll::Ready(output) = result {
            return Poll::Ready(this.finish(output));
        }
        if started {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// An HTTP/2 stream, reset when its answer makes no progress for between one and two
/// `timeout`s, as nginx's `send_timeout` resets a stalled answer: a client that gives a stream
/// no window would otherwise keep its answer, and the object the answer reads from, for as long
/// as it liked, however busy it kept the connection with other streams. Progress is any wake-up
/// of the stream once its handler has answered (more window, body data from S3); while the
/// handler runs (an upload, a wait for S3) nothing is timed. Its connection looks once per
/// timeout ([`WithStreams::sweep`]): no timer per stream.
pub struct Watched {
    stream: BoxFuture<'static, ()>,
    answered: bool,
    /// Polled since the connection last looked.
    moved: bool,
    /// Found without progress: ends at its next poll, dropping (and so resetting) the stream.
    expired: bool,
    /// Wakes it once answered, to end it.
    waker: Option<Waker>,
}

impl Watched {
    fn new(stream: BoxFuture<'static, ()>) -> Watched {
        Watched {
            stream,
            answered: false,
            moved: false,
            expired: false,
            waker: None,
        }
    }

    /// The connection looks: an answered stream that has not moved since the last look expires.
    fn look(&mut self) {
        if !self.answered || std::mem::take(&mut self.moved) {
            return;
        }
        self.expired = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Future for Watched {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.expired {
            tracing::debug!("resetting an HTTP/2 stream whose answer made no progress");
            return Poll::Ready(());
        }
        this.moved = true;
        ANSWERED.set(false);
        if this.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.answered |= ANSWERED.replace(false);
        if this.answered {
            match &mut this.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl<C> WithStreams<C> {
    /// Looks at the streams once per send timeout while there are any ([`Watched::look`]).
    fn sweep(&mut self, cx: &mut Context<'_>) {
        if self.streams.is_empty() {
            return;
        }
        let timeout = self.send_timeout;
        let next = (self.next_look).get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        while next.as_mut().poll(cx).is_ready() {
            self.streams.iter_mut().for_each(Watched::look);
            next.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
    }

    /// Streams the ended connection no longer waits for finish on their own, as spawned ones
    /// would.
    fn finish<T>(&mut self, output: T) -> T {
        for stream in std::mem::take(&mut self.streams) {
            tokio::spawn(stream);
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Stands in for hyper's HTTP/2 connection: its first poll starts three streams; every
    /// poll "writes" the answers given so far (the held ones only when not corked).
    struct Connection {
        cork: Cork,
        answers: Arc<Mutex<Vec<String>>>,
        polls: usize,
        written: Vec<Vec<String>>,
    }

    impl Future for Connection {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.polls == 1 {
                for stream in 0..3 {
                    let (answers, cork) = (self.answers.clone(), self.cork.clone());
                    hyper::rt::Executor::execute(&StreamExecutor, async move {
                        let held = cork.load(Ordering::Relaxed);
                        answers
                            .lock()
                            .unwrap()
                            .push(format!("{stream} held={held}"));
                    });
                }
            }
            let answers = std::mem::take(&mut *self.answers.lock().unwrap());
            if !self.cork.load(Ordering::Relaxed) && !answers.is_empty() {
                self.written.push(answers);
            } else {
                self.answers.lock().unwrap().extend(answers);
            }
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn streams_run_in_the_connections_poll_and_their_answers_leave_together() {
        let cork = Cork::default();
        let mut driven = WithStreams::new(
            Connection {
                cork: cork.clone(),
                answers: Arc::default(),
                polls: 0,
                written: Vec::new(),
            },
            cork.clone(),
            Duration::from_secs(60),
        );
        let polled = futures_util::poll!(&mut driven);
        assert!(polled.is_pending());
        // One poll of the connection's task ran every stream, corked, and then wrote all three
        // answers at once.
        assert_eq!(
            driven.connection.written,
            vec![vec!["0 held=true", "1 held=true", "2 held=true"]]
        );
        assert!(!cork.load(Ordering::Relaxed));
        assert!(driven.streams.is_empty());
    }

    #[tokio::test]
    async fn streams_started_elsewhere_are_spawned() {
        let (done, ran) = tokio::sync::oneshot::channel();
        hyper::rt::Executor::execute(&StreamExecutor, async move {
            let _ = done.send(());
        });
        ran.await.unwrap();
    }
}
