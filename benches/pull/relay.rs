//! A counting TCP relay between a mirror and the upstream registry.
//!
//! Every byte the upstream sends towards the mirror is counted, so "upstream bytes" means the
//! same thing for berth and for distribution. One fault is available: reset the first
//! connection that carries more than N bytes, once, right after its N-th byte (SO_LINGER 0,
//! so the mirror sees `ECONNRESET`, as on a broken path).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    None,
    /// Reset the first connection whose upstream→mirror bytes pass this many, once.
    ResetOnceAfter(u64),
}

#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes upstream → mirror (response heads and bodies), all connections.
    pub upstream_bytes: AtomicU64,
    pub connections: AtomicU64,
    pub resets: AtomicU64,
}

pub struct Relay {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free 127.0.0.1 port and forwards each connection to `target`.
    /// Must be called inside a tokio runtime; connections keep running on its workers.
    pub async fn start(target: SocketAddr, fault: Fault) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let stats = Arc::new(RelayStats::default());
        let shared = Arc::new(Shared {
            target,
            fault,
            fired: AtomicBool::new(false),
            stats: stats.clone(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared));
        Relay {
            addr,
            stats,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.stats.upstream_bytes.load(Ordering::Relaxed)
    }

    pub fn resets(&self) -> u64 {
        self.stats.resets.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Open connections end when their mirror process is killed.
        self.accept.abort();
    }
}

struct Shared {
    target: SocketAddr,
    fault: Fault,
    fired: AtomicBool,
    stats: Arc<RelayStats>,
}

impl Shared {
    /// How many more bytes this connection may pass before it must be reset, if it is the one.
    fn reset_budget(&self, sent: u64) -> Option<u64> {
        match self.fault {
            Fault::ResetOnceAfter(limit) if !self.fired.load(Ordering::Relaxed) => {
                Some(limit.saturating_sub(sent))
            }
            _ => None,
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((mirror, _)) = listener.accept().await {
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay_connection(mirror, shared.clone()));
    }
}

async fn relay_connection(mirror: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = mirror.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mirror_read, mirror_write) = mirror.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let requests = tokio::spawn(async move {
        let mut mirror_read = mirror_read;
        let _ = tokio::io::copy(&mut mirror_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    });
    let reset = copy_counted(&mut upstream_read, mirror_write, &shared).await;
    if reset {
        requests.abort();
    } else {
        let _ = requests.await;
    }
}

/// Copies upstream → mirror, counting bytes; returns true if it reset the connection.
async fn copy_counted(from: &mut OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let budget = shared.reset_budget(sent);
        let pass = budget.map_or(n, |b| n.min(b as usize));
        if to.write_all(&buf[..pass]).await.is_err() {
            break;
        }
        sent += pass as u64;
        shared
            .stats
            .upstream_bytes
            .fetch_add(pass as u64, Ordering::Relaxed);
        if pass < n || budget == Some(pass as u64) {
            if !shared.fired.swap(true, Ordering::Relaxed) {
                reset(to).await;
                shared.stats.resets.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Another connection fired first: this one carries on.
            if to.write_all(&buf[pass..n]).await.is_err() {
                break;
            }
            sent += (n - pass) as u64;
            shared
                .stats
                .upstream_bytes
                .fetch_add((n - pass) as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
    false
}

/// Lets the passed bytes leave the socket buffer, then sets SO_LINGER 0: when the caller drops
/// the read half too, the kernel sends a RST instead of a FIN.
async fn reset(to: OwnedWriteHalf) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
    drop(to);
}
