//! A small real HTTP CONNECT proxy on 127.0.0.1 for the proxy tests: parses `CONNECT
//! host:port`, optionally demands `Proxy-Authorization: Basic`, resolves names itself from a
//! table (a proxy whose DNS berth does not share), counts tunnels and pipes bytes. Dropping it
//! stops accepting and ends its tunnels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The most bytes of a CONNECT request the proxy reads.
const MAX_REQUEST: usize = 8 * 1024;

#[derive(Default)]
struct Seen {
    /// `host:port` of every CONNECT that opened a tunnel, in order.
    tunnels: Vec<String>,
    /// Every `Proxy-Authorization` value received (to show what berth sent).
    authorizations: Vec<String>,
    /// CONNECTs refused with 407.
    refused: usize,
}

pub struct ConnectProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// A proxy that wants `credentials` (user, password) when given, and resolves the names
    /// in `hosts` itself (anything else must be an IP address).
    pub async fn start(
        credentials: Option<(&str, &str)>,
        hosts: &[(&str, std::net::IpAddr)],
    ) -> ConnectProxy {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = credentials.map(|(u, p)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {encoded}")
        });
        let hosts: HashMap<String, std::net::IpAddr> =
            hosts.iter().map(|(h, ip)| (h.to_string(), *ip)).collect();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            // Tunnels end with the proxy: the set aborts them when the accept task is dropped.
            let mut tunnels = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (expected, hosts, seen) = (expected.clone(), hosts.clone(), shared.clone());
                tunnels.spawn(async move {
                    let _ = serve(client, expected, hosts, seen).await;
                });
            }
        });
        ConnectProxy { addr, seen, task }
    }

    /// `http://127.0.0.1:<port>`, with `user:password@` when given.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// Targets (`host:port`) of the tunnels opened so far.
    pub fn tunnels(&self) -> Vec<String> {
        self.seen.lock().unwrap().tunnels.clone()
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.seen.lock().unwrap().authorizations.clone()
    }

    pub fn refused(&self) -> usize {
        self.seen.lock().unwrap().refused
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    expected: Option<String>,
    hosts: HashMap<String, std::net::IpAddr>,
    seen: Arc<Mutex<Seen>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return Ok(());
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_string());
    if let Some(a) = &authorization {
        seen.lock().unwrap().authorizations.push(a.clone());
    }
    if expected.is_some() && authorization != expected {
        seen.lock().unwrap().refused += 1;
        client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await?;
        return Ok(());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match hosts.get(host) {
        Some(ip) => *ip,
        None => match host.parse() {
            Ok(ip) => ip,
            Err(_) => {
                client
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                    .await?;
                return Ok(());
            }
        },
    };
    let port: u16 = port.parse().unwrap_or(0);
    let Ok(mut upstream) = TcpStream::connect((ip, port)).await else {
        client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    seen.lock().unwrap().tunnels.push(target.to_string());
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
