//! A black hole at the TCP handshake, on loopback: a listener whose accept queue is kept full,
//! so the kernel drops every further SYN (as a firewall dropping SYNs does); `connect()` hangs
//! until the client gives up. `lift()` starts accepting and relays every connection to
//! `backend`; `close()` brings the black hole back for new connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub struct SynGate {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    changed: Arc<Notify>,
    /// Occupies the accept queue's only place while closed.
    plug: Option<std::net::TcpStream>,
    task: JoinHandle<()>,
}

impl SynGate {
    /// Starts closed.
    pub async fn start(backend: SocketAddr) -> SynGate {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        // Backlog 0: the accept queue holds one connection; with it taken, SYNs are dropped.
        socket.listen(0).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(socket.into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let plug = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            .expect("plug the accept queue");
        let open = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let (o, c) = (open.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                if !o.load(Ordering::SeqCst) {
                    c.notified().await;
                    continue;
                }
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        tokio::spawn(async move {
                            if let Ok(mut upstream) = TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                        });
                    }
                    _ = c.notified() => {}
                }
            }
        });
        SynGate {
            addr,
            open,
            changed,
            plug: Some(plug),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets connections through (the plug is accepted and relayed like any other).
    pub fn lift(&mut self) {
        self.open.store(true, Ordering::SeqCst);
        self.changed.notify_one();
        self.plug.take();
    }

    /// Drops SYNs again: stops accepting and plugs the queue.
    pub async fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        self.changed.notify_one();
        tokio::task::yield_now().await;
        let addr = self.addr;
        let plug = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        })
        .await
        .unwrap()
        .expect("plug the accept queue");
        self.plug = Some(plug);
    }
}

impl Drop for SynGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
