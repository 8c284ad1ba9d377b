//! Blob bodies on plain HTTP/1.1 go from the page cache to the socket with `sendfile(2)`, never
//! through berth's memory (nginx's `sendfile on`).
//!
//! hyper still writes every response, head and body. The body hands it *stand-ins*: frames of
//! the right length whose bytes are one static buffer, each queued with the file span it stands
//! for. The connection's socket, asked to write from that buffer, sends the front span of the
//! queue instead. This holds because hyper queues body frames without copying them (its
//! `writev` strategy, which `server` turns on) and writes them in order, and it polls a body
//! only when it is about to write it (never for HEAD), one response at a time.
//!
//! While a file body goes out the socket is corked (nginx's `tcp_nopush`): the kernel sends
//! only full segments instead of pushing at the end of every `sendfile`, which costs it more
//! CPU per byte. The body's end is queued too; hyper's flush after it uncorks, so the last
//! segment leaves at once.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::{Stream, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::store::{FileSpan, SpanStream, file_span};

/// The longest stand-in, so the longest span one `sendfile` call is asked for.
const STAND_IN_LEN: usize = 4 << 20;
/// Zeroed pages from the allocator, never written or read: no memory is spent on them (a
/// `static` array would put 4 MiB of zeros into the binary).
static STAND_IN: LazyLock<Box<[u8]>> = LazyLock::new(|| vec![0u8; STAND_IN_LEN].into());

/// What a connection's bodies queued for its socket, in the order hyper writes it.
enum Queued {
    /// The bytes of the next stand-in.
    Span(FileSpan),
    /// A file body ended: nothing more to cork for.
    End,
}

type Queue = Arc<Mutex<VecDeque<Queued>>>;

fn lock(queue: &Queue) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_stand_in(buf: &[u8]) -> bool {
    !buf.is_empty() && STAND_IN.as_ptr_range().contains(&buf.as_ptr())
}

/// A request's way to its connection's [`SendfileSocket`]: in the extensions of requests on
/// plain HTTP/1.x connections only.
#[derive(Clone)]
pub struct FileSender {
    queue: Queue,
}

impl FileSender {
    /// The body frames for `spans`: stand-ins, each queued with its span as hyper takes it.
    pub fn frames(
        &self,
        spans: SpanStream,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + use<> {
        // hyper drops a body once it has taken its last byte (before writing it): then the
        // end follows the last span in the queue.
        let ended = EndOnDrop(self.queue.clone());
        file_span::pieces(spans, STAND_IN_LEN as u64).and_then(move |span| {
            let queue = ended.0.clone();
            async move {
                // Never wait for the disk inside the socket's write, on a runtime thread.
                span.make_resident().await?;
                let len = span.len as usize;
                lock(&queue).push_back(Queued::Span(span));
                Ok(Bytes::from_static(&STAND_IN[..len]))
            }
        })
    }
}

/// Queues a body's end when the body goes.
struct EndOnDrop(Queue);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        lock(&self.0).push_back(Queued::End);
    }
}

/// A plain-HTTP connection's socket: a write from the stand-in buffer becomes a `sendfile` of
/// the span queued for it; every other write goes to the socket as it is.
pub struct SendfileSocket {
    tcp: TcpStream,
    queue: Queue,
    corked: bool,
}

impl SendfileSocket {
    pub fn new(tcp: TcpStream) -> (SendfileSocket, FileSender) {
        let queue = Queue::default();
        let sender = FileSender {
            queue: queue.clone(),
        };
        (
            SendfileSocket {
                tcp,
                queue,
                corked: false,
            },
            sender,
        )
    }

    /// Sends up to `want` bytes of the front span.
    fn poll_send_span(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut queue = lock(&self.queue);
            // Ends of earlier bodies whose flush this socket did not see: nothing to do.
            while matches!(queue.front(), Some(Queued::End)) {
                queue.pop_front();
            }
            let Some(Queued::Span(span)) = queue.front_mut() else {
                // Bytes that stand for nothing must not reach the client as zeros.
                return Poll::Ready(Err(io::Error::other(
                    "a stand-in body frame has no file span behind it",
                )));
            };
            if !self.corked {
                // Best effort: uncorked, the bytes are the same, only pushed more often.
                self.corked = rustix::net::sockopt::set_tcp_cork(&self.tcp, true).is_ok();
            }
            let count = want.min(usize::try_from(span.len).unwrap_or(usize::MAX));
            let mut offset = span.offset;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*span.file, Some(&mut offset), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the span it was to send",
                    )));
                }
                Ok(n) => {
                    span.offset += n as u64;
                    span.len -= n as u64;
                    if span.len == 0 {
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Uncorks once every file body queued so far has ended and gone out: what the kernel
    /// held back for a full segment leaves now. Ends queued by bodies that never sent a span
    /// go too, so the queue never outgrows the bodies in flight.
    fn uncork_after_bodies(&mut self) -> io::Result<()> {
        let mut queue = lock(&self.queue);
        if queue.iter().any(|q| matches!(q, Queued::Span(_))) {
            return Ok(());
        }
        let ended = !queue.is_empty();
        queue.clear();
        if !(self.corked && ended) {
            return Ok(());
        }
        self.corked = false;
        rustix::net::sockopt::set_tcp_cork(&self.tcp, false).map_err(io::Error::from)
    }
}

impl AsyncRead for SendfileSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_stand_in(buf) {
            return self.poll_send_span(cx, buf.len());
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    /// Writes up to the first stand-in, or sends the span of a stand-in that comes first:
    /// hyper calls again with what is left.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = match bufs.iter().position(|b| !b.is_empty()) {
            Some(first) => &bufs[first..],
            None => return Poll::Ready(Ok(0)),
        };
        if is_stand_in(&bufs[0]) {
            return self.poll_send_span(cx, bufs[0].len());
        }
        let plain = bufs
            .iter()
            .position(|b| is_stand_in(b))
            .unwrap_or(bufs.len());
        Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.uncork_after_bodies()?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures::TryStreamExt as _;
    use http::{Request, Response};
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::{Frame, Incoming};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::sync::CancellationToken;

    use super::*;

    const SMALL: usize = 3 * STAND_IN_LEN + 12_345;
    const LARGE: usize = 64 << 20;

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13 ^ seed) as u8)
            .collect()
    }

    /// `serve` answering `/<file>/<start>-<end>` with that range of file `a` or `b` (the
    /// `large` one for `l`), by `sendfile` when the request came with a [`FileSender`] (said
    /// in `x-sendfile`). A HEAD gets the same body, which hyper must not poll.
    async fn serving(files: [Arc<std::fs::File>; 3]) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = super::super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let files = files.clone();
            async move {
                let sender = request.extensions().get::<FileSender>().cloned();
                let path: Vec<&str> = request.uri().path().split('/').collect();
                let file = files[match path[1] {
                    "a" => 0,
                    "b" => 1,
                    _ => 2,
                }]
                .clone();
                let (start, end) = path[2].split_once('-').unwrap();
                let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
                let spans = file_span::whole(file, start, end);
                let frames = match &sender {
                    Some(sender) => futures::StreamExt::boxed(sender.frames(spans)),
                    None => file_span::into_bytes(spans, 64 * 1024),
                };
                let body: UnsyncBoxBody<Bytes, io::Error> =
                    StreamBody::new(frames.map_ok(Frame::data)).boxed_unsync();
                let mut response = Response::new(body);
                let headers = response.headers_mut();
                headers.insert(http::header::CONTENT_LENGTH, (end - start).into());
                let via = if sender.is_some() { "yes" } else { "no" };
                headers.insert("x-sendfile", http::HeaderValue::from_static(via));
                Ok::<_, Infallible>(response)
            }
        });
        let limits = super::super::Limits {
            allow: vec!["127.0.0.0/8".parse().unwrap()].into(),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 16,
            max_connections_per_client: 16,
            shutdown_deadline: Duration::from_secs(1),
        };
        let stop = CancellationToken::new();
        tokio::spawn(super::super::serve(
            listener,
            service,
            None,
            limits,
            stop.clone(),
        ));
        (addr, stop.drop_guard())
    }

    async fn files() -> (tempfile::TempDir, [Arc<std::fs::File>; 3], [Vec<u8>; 3]) {
        let dir = tempfile::tempdir().unwrap();
        let data = [pattern(SMALL, 1), pattern(SMALL, 2), pattern(LARGE, 3)];
        let files = std::array::from_fn(|i| {
            let path = dir.path().join(i.to_string());
            std::fs::write(&path, &data[i]).unwrap();
            Arc::new(std::fs::File::open(path).unwrap())
        });
        (dir, files, data)
    }

    /// Reads one response (head and `content-length` bytes of body, none for a HEAD) from
    /// what `stream` sends, within 20 s.
    async fn response(
        stream: &mut TcpStream,
        buffered: &mut Vec<u8>,
        head: bool,
    ) -> (String, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buffered[..end]).to_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let body_len = if head { 0 } else { length };
                if buffered.len() >= end + 4 + body_len {
                    let body = buffered[end + 4..end + 4 + body_len].to_vec();
                    buffered.drain(..end + 4 + body_len);
                    return (text, body);
                }
            }
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("a whole response within 20 s")
                .unwrap();
            assert!(n > 0, "the connection closed mid-response");
            buffered.extend_from_slice(&chunk[..n]);
        }
    }

    /// Pipelined on one connection: a HEAD (its body never polled), ranges of two files, a
    /// span longer than a stand-in. Each answer carries exactly its file's bytes — a stand-in
    /// sent as itself would be zeros, a span sent for the wrong response the other file's.
    #[tokio::test]
    async fn pipelined_responses_carry_exactly_their_files_bytes_by_sendfile() {
        let (_dir, files, data) = files().await;
        let (addr, _stop) = serving(files).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let asks = [
            ("HEAD", "a", 0, SMALL),
            ("GET", "b", 5, 70_000),
            ("GET", "a", 0, SMALL),
            ("HEAD", "b", 0, SMALL),
            ("GET", "b", 1, SMALL - 1),
            ("GET", "a", 4_096, 4_097),
        ];
        let mut pipelined = String::new();
        for (method, file, start, end) in asks {
            pipelined += &format!("{method} /{file}/{start}-{end} HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        stream.write_all(pipelined.as_bytes()).await.unwrap();
        let mut buffered = Vec::new();
        for (method, file, start, end) in asks {
            let (head, body) = response(&mut stream, &mut buffered, method == "HEAD").await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("x-sendfile: yes"), "{head}");
            if method == "GET" {
                let want = &data[if file == "a" { 0 } else { 1 }][start..end];
                assert!(body == want, "{method} /{file}/{start}-{end}: wrong bytes");
            }
        }
    }

    /// The socket is corked while a file body goes out and uncorked by the flush after its
    /// end, so a response's last segment never waits for the kernel's 200 ms cork timer.
    #[tokio::test]
    async fn a_file_body_corks_the_socket_until_the_flush_after_its_end() {
        let (_dir, files, data) = files().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut socket, sender) = SendfileSocket::new(tcp);
        let corked = |socket: &SendfileSocket| rustix::net::sockopt::tcp_cork(&socket.tcp).unwrap();
        let frames = sender.frames(file_span::whole(files[0].clone(), 10, 100_010));
        let frames: Vec<Bytes> = frames.try_collect().await.unwrap();
        socket.write_all(b"head").await.unwrap();
        assert!(!corked(&socket), "corked before any file byte");
        for frame in &frames {
            assert!(is_stand_in(frame));
            socket.write_all(frame).await.unwrap();
            assert!(corked(&socket), "a file body goes out corked");
        }
        socket.flush().await.unwrap();
        assert!(
            !corked(&socket),
            "still corked after the body's end and a flush"
        );
        let mut got = vec![0u8; 4 + 100_000];
        client.read_exact(&mut got).await.unwrap();
        assert!(got[..4] == *b"head" && got[4..] == data[0][10..100_010]);
    }

    /// HTTP/2 frames its data: no sender there, and the bytes come through memory.
    #[tokio::test]
    async fn http2_requests_get_no_sender_and_the_same_bytes() {
        let (_dir, files, data) = files().await;
        let (addr, _stop) = serving(files).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) =
            hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}/a/3-{SMALL}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let answer = send.send_request(request).await.unwrap();
        assert_eq!(answer.headers()["x-sendfile"], "no");
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert!(body == data[0][3..], "wrong bytes over HTTP/2");
    }

    /// One thread serves everything here: a client that stops reading a large body leaves
    /// `sendfile` with a full socket (EAGAIN), not a blocked thread, and the next client is
    /// answered; the stalled one, reading again, gets every byte.
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_stops_reading_holds_no_thread() {
        let (_dir, files, data) = files().await;
        let (addr, _stop) = serving(files).await;
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(format!("GET /l/0-{LARGE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 1];
        stalled.read_exact(&mut first).await.unwrap();
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"GET /a/0-100 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = response(&mut other, &mut Vec::new(), false).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body == data[0][..100]);
        let mut buffered = first.to_vec();
        let (_, body) = response(&mut stalled, &mut buffered, false).await;
        assert!(body == data[2], "the stalled client's body is not the file");
    }
}
