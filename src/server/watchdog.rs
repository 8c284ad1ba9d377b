//! Per-connection deadlines: what hyper's own timer cannot tell apart.
//!
//! - a new connection must deliver its first request head within `header_timeout` (the TLS
//!   handshake included): a connection flood or a silent client is closed then;
//! - once a client starts sending a request head on an idle HTTP/1 connection, the head must be
//!   complete within `header_timeout` (slowloris: one byte a second keeps the socket busy, but
//!   never finishes a head);
//! - a connection that moves no bytes for `idle_timeout` is closed when it has no request in
//!   progress (idle keep-alive, an HTTP/2 connection with nothing to do) or when berth's writes
//!   to it are blocked (a client that stopped reading). A request waiting for an upstream is not
//!   idle: the upstream's own timeouts bound it;
//! - on HTTP/2 a client that stops reading blocks no socket write: it grants a stream no
//!   flow-control window, and hyper simply stops asking that response body for data while
//!   pings and other streams keep bytes moving. So each response body has a clock: it runs from
//!   when the body handed hyper a frame (or the response was ready) until hyper asks for the
//!   next one, and a body hyper has not asked for more for `idle_timeout` closes the
//!   connection. A body waiting for its own source (an upstream fill) stops its clock.
//!
//! [`Activity`] is shared by the IO wrapper ([`Watched`]), which records bytes, and the request
//! wrapper ([`RequestGuard`]), which records requests between head and end of response and
//! keeps its body's clock.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// No-head marker in `head_started_ms`; a stopped body clock.
const NONE: u64 = u64::MAX;

/// What a connection has been doing, in milliseconds since it was accepted.
pub struct Activity {
    accepted: Instant,
    last_io_ms: AtomicU64,
    /// When the first byte of a request head arrived with no request in progress.
    head_started_ms: AtomicU64,
    /// Requests whose response has not been fully sent.
    active: AtomicUsize,
    /// At least one request head was complete.
    served_any: AtomicBool,
    /// HTTP/2 multiplexes control frames between requests: no per-head deadline there.
    http2: AtomicBool,
    /// The last write could not go out (the client's receive window is full).
    write_blocked: AtomicBool,
    /// The body clock of every request in progress (see the module doc), by request number.
    /// At most one per stream: hyper caps streams per connection.
    bodies: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_request: AtomicU64,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head (or TLS handshake) within `header_timeout` of connecting.
    NoRequest,
    /// A request head started but was not complete within `header_timeout`.
    SlowHead,
    /// No bytes either way for `idle_timeout`.
    Idle,
    /// An HTTP/2 response body hyper has not asked for more for `idle_timeout` (the client
    /// grants its stream no window).
    Stalled,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::NoRequest => "no request within header_timeout",
            Expired::SlowHead => "request head not complete within header_timeout",
            Expired::Idle => "idle for idle_timeout",
            Expired::Stalled => {
                "a response body the client took nothing of for idle_timeout (HTTP/2 flow control)"
            }
        }
    }
}

impl Activity {
    pub fn new(accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            accepted,
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
            active: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            bodies: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    pub fn set_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    fn on_read(&self, first_bytes: &[u8]) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0 && !self.http2.load(Ordering::Relaxed) {
            if first_bytes.starts_with(b"PRI * HTTP/2.0") {
                self.set_http2();
                return;
            }
            let _ = self.head_started_ms.compare_exchange(
                NONE,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        self.write_blocked.store(false, Ordering::Relaxed);
    }

    fn on_write_blocked(&self) {
        self.write_blocked.store(true, Ordering::Relaxed);
    }

    /// A request head is complete and handed to the service.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.served_any.store(true, Ordering::Relaxed);
        self.head_started_ms.store(NONE, Ordering::Relaxed);
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let clock = Arc::new(AtomicU64::new(NONE));
        self.bodies_locked().insert(id, clock.clone());
        RequestGuard {
            activity: self.clone(),
            id,
            clock,
        }
    }

    fn bodies_locked(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some response body has waited `idle_ms` or longer for hyper to ask for more.
    fn body_stalled(&self, now: u64, idle_ms: u64) -> bool {
        self.bodies_locked().values().any(|clock| {
            let since = clock.load(Ordering::Relaxed);
            since != NONE && now.saturating_sub(since) >= idle_ms
        })
    }

    /// `Some` when the connection is past one of its deadlines now.
    pub fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Option<Expired> {
        let now = self.now_ms();
        let header_ms = header_timeout.as_millis() as u64;
        if !self.served_any.load(Ordering::Relaxed) && now >= header_ms {
            return Some(Expired::NoRequest);
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != NONE
            && self.active.load(Ordering::Acquire) == 0
            && now.saturating_sub(head) >= header_ms
        {
            return Some(Expired::SlowHead);
        }
        let last = self.last_io_ms.load(Ordering::Relaxed);
        let idle_ms = idle_timeout.as_millis() as u64;
        let waiting_on_client =
            self.active.load(Ordering::Acquire) == 0 || self.write_blocked.load(Ordering::Relaxed);
        if waiting_on_client && now.saturating_sub(last) >= idle_ms {
            return Some(Expired::Idle);
        }
        // HTTP/1 has the blocked write above; the body clock is for HTTP/2, where a stalled
        // stream blocks nothing.
        if self.http2.load(Ordering::Relaxed) && self.body_stalled(now, idle_ms) {
            return Some(Expired::Stalled);
        }
        None
    }
}

/// Held from a request's head until its response body is finished (or dropped); keeps the
/// body's clock.
pub struct RequestGuard {
    activity: Arc<Activity>,
    id: u64,
    clock: Arc<AtomicU64>,
}

impl RequestGuard {
    /// The response is ready: hyper sends its head and asks the body for data. Its clock runs.
    pub fn response_ready(&self) {
        self.clock.store(self.activity.now_ms(), Ordering::Relaxed);
    }

    /// hyper asked the body for a frame and got `polled`: a frame handed over starts the clock
    /// (until hyper asks again); a body waiting for its source, or done, stops it.
    pub fn body_polled<T>(&self, polled: &Poll<Option<T>>) {
        let now = match polled {
            Poll::Ready(Some(_)) => self.activity.now_ms(),
            Poll::Ready(None) | Poll::Pending => NONE,
        };
        self.clock.store(now, Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.bodies_locked().remove(&self.id);
        // The idle clock starts when the response is done, not when its last byte was queued.
        self.activity.on_write();
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's IO, recording every byte moved into [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Watched<T> {
        Watched { inner, activity }
    }

    fn record_write(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.on_write(),
            Poll::Pending => self.activity.on_write_blocked(),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when `activity` passes a deadline, checking a few times per `header_timeout`.
pub async fn watch(
    activity: &Activity,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> Expired {
    let tick = (header_timeout.min(idle_timeout) / 8)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(expired) = activity.expired(header_timeout, idle_timeout) {
            return expired;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(90);

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_expires_at_header_timeout() {
        let activity = Activity::new(Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.expired(HEADER, IDLE), Some(Expired::NoRequest));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickling_in_expires_although_bytes_keep_coming() {
        let activity = Activity::new(Instant::now());
        drop(activity.request_started());
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            activity.on_read(b"G");
            assert_eq!(activity.expired(HEADER, IDLE), None);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.on_read(b"E");
        assert_eq!(activity.expired(HEADER, IDLE), Some(Expired::SlowHead));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_waits_idle_timeout_and_a_running_request_is_not_a_slow_head() {
        let activity = Activity::new(Instant::now());
        let request = activity.request_started();
        tokio::time::advance(Duration::from_secs(30)).await;
        // Bytes read during a response (pipelining, h1 body) start no head clock.
        activity.on_read(b"x");
        activity.on_write();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        drop(request);
        tokio::time::advance(Duration::from_secs(89)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.expired(HEADER, IDLE), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_upstream_is_not_idle_but_a_client_that_stopped_reading_is() {
        let activity = Activity::new(Instant::now());
        let request = activity.request_started();
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        activity.on_write();
        activity.on_write_blocked();
        tokio::time::advance(Duration::from_secs(89)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.expired(HEADER, IDLE), Some(Expired::Idle));
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_body_the_client_takes_nothing_of_expires_although_pings_move_bytes() {
        let activity = Activity::new(Instant::now());
        activity.set_http2();
        let request = activity.request_started();
        // The handler waits for the upstream: no clock yet.
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
        request.response_ready();
        request.body_polled(&Poll::Ready(Some(())));
        // hyper does not ask for more (no window); PINGs and their ACKs keep bytes moving.
        for _ in 0..8 {
            tokio::time::advance(Duration::from_secs(11)).await;
            activity.on_write();
            activity.on_read(b"\0\0\x08\x06");
            assert_eq!(activity.expired(HEADER, IDLE), None);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.expired(HEADER, IDLE), Some(Expired::Stalled));
        drop(request);
        assert_eq!(activity.expired(HEADER, IDLE), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_its_source_or_asked_again_is_not_stalled() {
        let activity = Activity::new(Instant::now());
        activity.set_http2();
        let request = activity.request_started();
        request.response_ready();
        // hyper asks, the body waits for the fill: the source's own timeouts bound that.
        request.body_polled::<()>(&Poll::Pending);
        tokio::time::advance(Duration::from_secs(300)).await;
        activity.on_read(b"\0\0\x08\x06");
        assert_eq!(activity.expired(HEADER, IDLE), None);
        // Frames taken as fast as they come, for longer than idle_timeout in all.
        for _ in 0..20 {
            request.body_polled(&Poll::Ready(Some(())));
            tokio::time::advance(Duration::from_secs(10)).await;
            activity.on_write();
            assert_eq!(activity.expired(HEADER, IDLE), None);
        }
        request.body_polled::<()>(&Poll::Ready(None));
        tokio::time::advance(Duration::from_secs(300)).await;
        activity.on_write();
        assert_eq!(activity.expired(HEADER, IDLE), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_clock_is_for_http2_http1_has_its_blocked_write() {
        let activity = Activity::new(Instant::now());
        let request = activity.request_started();
        request.response_ready();
        request.body_polled(&Poll::Ready(Some(())));
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(10)).await;
            // A slow reader: the socket takes a little now and then.
            activity.on_write();
            assert_eq!(activity.expired(HEADER, IDLE), None);
        }
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_start_no_head_clock() {
        let activity = Activity::new(Instant::now());
        activity.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        drop(activity.request_started());
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.on_read(b"\0\0\x08\x06"); // a PING frame
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(activity.expired(HEADER, IDLE), None);
    }
}
