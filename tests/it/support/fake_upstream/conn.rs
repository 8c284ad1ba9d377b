//! Connections the fake can kill mid-response, and response bodies that misbehave on cue.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::faults::{Action, AfterStall};

/// A TCP listener whose connections can be reset from inside a handler.
pub struct KillableListener(pub TcpListener);

pub struct KillableIo {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

#[derive(Default)]
struct ConnCtl {
    kill: AtomicBool,
    /// Completed flushes: hyper's write buffer fully handed to the socket this many times.
    flushes: AtomicU64,
    /// Woken at each completed flush.
    flushed: tokio::sync::Notify,
}

/// Per-connection handle, reachable from handlers as `ConnectInfo<ConnHandle>`.
#[derive(Clone)]
pub struct ConnHandle {
    ctl: Arc<ConnCtl>,
}

impl ConnHandle {
    /// Marks the connection for reset: the next read/write fails and the close sends RST.
    pub fn kill(&self) {
        self.ctl.kill.store(true, Ordering::SeqCst);
    }

    /// Waits (≤ 2 s) until hyper has flushed what it buffered so far, so a reset after N bytes
    /// really lets N bytes reach the socket first.
    async fn flushed(&self) {
        let seen = self.ctl.flushes.load(Ordering::SeqCst);
        let next_flush = async {
            loop {
                let woken = self.ctl.flushed.notified();
                tokio::pin!(woken);
                // Registered before the check, so a flush in between still wakes us.
                woken.as_mut().enable();
                if self.ctl.flushes.load(Ordering::SeqCst) > seen {
                    return;
                }
                woken.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), next_flush).await;
    }
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        KillableIo {
                            inner,
                            ctl: Arc::default(),
                        },
                        addr,
                    );
                }
                // e.g. EMFILE: back off briefly like axum's own listener does (a backoff, not a
                // wait for a condition).
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnHandle {
            ctl: stream.io().ctl.clone(),
        }
    }
}

impl KillableIo {
    fn killed(&self) -> bool {
        self.ctl.kill.load(Ordering::SeqCst)
    }
}

impl Drop for KillableIo {
    fn drop(&mut self) {
        if self.killed() {
            // Linger 0 turns close() into an RST, like a middlebox dropping the flow.
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "fault: connection reset")
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(reset_error()));
        }
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if r.is_ready() {
            this.ctl.flushes.fetch_add(1, Ordering::SeqCst);
            this.ctl.flushed.notify_waiters();
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const CHUNK: usize = 64 * 1024;

/// A response body streamed in chunks, applying at most one body-stage fault; `on_sent` is
/// called with each chunk's length as it is handed to hyper.
pub fn faulty_body(
    data: Bytes,
    fault: Option<Action>,
    conn: ConnHandle,
    on_sent: impl Fn(u64) + Send + Sync + 'static,
) -> axum::body::Body {
    let data = match fault {
        Some(Action::Corrupt { at }) if (at as usize) < data.len() => {
            let mut v = data.to_vec();
            v[at as usize] ^= 0xff;
            Bytes::from(v)
        }
        _ => data,
    };
    // Where to interrupt the stream: (offset, pause, reset after the pause).
    let cut = match fault {
        Some(Action::ResetAfter(n)) => Some((n, Duration::ZERO, true)),
        Some(Action::Stall { after, pause, then }) => {
            Some((after, pause, then == AfterStall::Reset))
        }
        _ => None,
    };
    struct State {
        data: Bytes,
        sent: usize,
        cut: Option<(u64, Duration, bool)>,
    }
    let state = State { data, sent: 0, cut };
    let stream = futures::stream::unfold(state, move |mut s| {
        let conn = conn.clone();
        async move {
            let due = s.cut.filter(|&(at, _, _)| s.sent as u64 >= at);
            if let Some((_, pause, reset)) = due {
                s.cut = None;
                if !pause.is_zero() {
                    // The injected stall itself: the fake upstream goes silent mid-body.
                    tokio::time::sleep(pause).await;
                }
                if reset {
                    conn.flushed().await;
                    conn.kill();
                    return Some((Err(reset_error()), s));
                }
            }
            if s.sent >= s.data.len() {
                return None;
            }
            let mut end = (s.sent + CHUNK).min(s.data.len());
            if let Some((at, _, _)) = s.cut {
                end = end.min(at as usize).max(s.sent);
            }
            let chunk = s.data.slice(s.sent..end);
            s.sent = end;
            Some((Ok::<_, io::Error>(chunk), s))
        }
    });
    let stream = futures::StreamExt::inspect(stream, move |item| {
        if let Ok(chunk) = item {
            on_sent(chunk.len() as u64);
        }
    });
    axum::body::Body::from_stream(stream)
}
