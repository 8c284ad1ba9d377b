//! Small process and polling helpers: bounded waits, commands with timeouts, free ports.
//!
//! Waiting: [`eventually`] (async) and [`wait_until`] (for synchronous callers) share one
//! polling policy, [`Polling`]: a condition is re-checked every [`POLL_EVERY`], at most
//! `timeout / POLL_EVERY + 1` times and never past `timeout`; running out panics naming what
//! was awaited and what the last check saw. Tests await conditions like these instead of
//! sleeping a fixed time, so a loaded machine only makes them slower, never wrong.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often [`eventually`] and [`wait_until`] re-check their condition.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// What a condition returns: met (with a value) or not yet (with what it saw, for the message).
pub trait Check {
    type Output;
    fn check(self) -> Result<Self::Output, String>;
}

impl Check for bool {
    type Output = ();
    fn check(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Check for Option<T> {
    type Output = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

/// `Err(what was seen)`: the failure message quotes the last one.
impl<T> Check for Result<T, String> {
    type Output = T;
    fn check(self) -> Result<T, String> {
        self
    }
}

/// The polling policy shared by every bounded wait: counts tries and time.
pub struct Polling {
    timeout: Duration,
    started: Instant,
    tries: u32,
    max_tries: u32,
}

/// A wait that ran out: how long, how many tries, the last thing seen.
#[derive(Debug)]
pub struct TimedOut {
    pub after: Duration,
    pub tries: u32,
    pub last: String,
}

impl TimedOut {
    fn message(&self, what: &str) -> String {
        format!(
            "timed out after {:?} ({} tries) waiting for {what}; last check saw: {}",
            self.after, self.tries, self.last
        )
    }
}

impl Polling {
    pub fn new(timeout: Duration) -> Polling {
        let max_tries = (timeout.as_millis() / POLL_EVERY.as_millis()).min(u32::MAX as u128 - 1);
        Polling {
            timeout,
            started: Instant::now(),
            tries: 0,
            max_tries: max_tries as u32 + 1,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }

    /// After a try that missed (having seen `last`): how long to pause before the next one, or
    /// `Err` once the tries or the time are used up.
    pub fn after_miss(&mut self, last: String) -> Result<Duration, TimedOut> {
        self.tries += 1;
        let remaining = self.remaining();
        if self.tries >= self.max_tries || remaining.is_zero() {
            return Err(TimedOut {
                after: self.started.elapsed(),
                tries: self.tries,
                last,
            });
        }
        Ok(POLL_EVERY.min(remaining))
    }
}

/// Checks `condition` until it holds, blocking this thread between tries; `Err` when the
/// tries or `timeout` run out. For callers that must not panic (a child to kill at a deadline).
pub fn poll_blocking<R: Check>(
    timeout: Duration,
    mut condition: impl FnMut() -> R,
) -> Result<R::Output, TimedOut> {
    let mut polling = Polling::new(timeout);
    loop {
        match condition().check() {
            Ok(v) => return Ok(v),
            Err(last) => std::thread::sleep(polling.after_miss(last)?),
        }
    }
}

/// Like [`poll_blocking`], awaiting `condition` (each check is also cut off at the deadline).
pub async fn poll<R: Check, F: Future<Output = R>>(
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> Result<R::Output, TimedOut> {
    let mut polling = Polling::new(timeout);
    loop {
        let last = match tokio::time::timeout(polling.remaining(), condition()).await {
            Ok(outcome) => match outcome.check() {
                Ok(v) => return Ok(v),
                Err(last) => last,
            },
            Err(_) => "the check itself did not finish before the deadline".into(),
        };
        tokio::time::sleep(polling.after_miss(last)?).await;
    }
}

/// Awaits `condition` until it holds (`true`, `Some(v)`, `Ok(v)`) and returns its value; panics
/// after `timeout` (or its share of tries) naming `what` and the last thing the check saw.
/// The async tests' one way to wait.
pub async fn eventually<R: Check, F: Future<Output = R>>(
    what: &str,
    timeout: Duration,
    condition: impl FnMut() -> F,
) -> R::Output {
    poll(timeout, condition)
        .await
        .unwrap_or_else(|t| panic!("{}", t.message(what)))
}

/// [`eventually`] for synchronous callers (a `#[test]` fn, a blocking helper): the same policy,
/// blocking between tries.
pub fn wait_until<R: Check>(
    what: &str,
    timeout: Duration,
    condition: impl FnMut() -> R,
) -> R::Output {
    poll_blocking(timeout, condition).unwrap_or_else(|t| panic!("{}", t.message(what)))
}

/// Moves tokio's clock forward by `by` at once, then lets it run in real time again: whatever
/// berth (in-process) or the fake times with `tokio::time` (breaker cooldown, token and signed
/// URL expiry) sees `by` pass without the test sleeping. Current-thread runtimes only (the
/// default `#[tokio::test]`).
pub async fn advance_clock(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A free 127.0.0.1 port (bound then released; fine for tests on a quiet machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug)]
pub struct CmdOutput {
    pub command: String,
    pub success: bool,
    /// The exit code (`None`: killed, by a signal or at the deadline).
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Panics with the command, its exit and output unless it succeeded.
    pub fn expect_success(&self) -> &Self {
        assert!(
            self.success,
            "command failed{}: {}\n--- stdout\n{}\n--- stderr\n{}",
            if self.timed_out { " (timed out)" } else { "" },
            self.command,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion or until `timeout` (then kills it); output goes through temp files
/// so a chatty child cannot block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let command = format!("{cmd:?}");
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return CmdOutput {
                command,
                success: false,
                code: None,
                timed_out: false,
                stdout: String::new(),
                stderr: e.to_string(),
            };
        }
    };
    let (code, timed_out) = wait_child(&mut child, timeout);
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        let _ = f.read_to_string(&mut s);
        s
    };
    CmdOutput {
        command,
        success: code == Some(0),
        code,
        timed_out,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// (exit code, timed out).
fn wait_child(child: &mut Child, timeout: Duration) -> (Option<i32>, bool) {
    match poll_blocking(timeout, || child.try_wait().unwrap()) {
        Ok(status) => (status.code(), false),
        Err(_) => {
            kill_child(child);
            (None, true)
        }
    }
}

/// Kills and reaps a child we started (by its own handle, never by name).
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Minimal blocking HTTP/1.0 GET on 127.0.0.1 (no client crate, works outside a runtime):
/// returns (status, body), or `None` if the connection failed.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// One IPv4 TCP socket of this network namespace, as `/proc/net/tcp` lists it.
#[derive(Debug)]
pub struct TcpSocket {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The kernel's state number (`0x0A` = LISTEN, `0x01` = ESTABLISHED).
    pub state: u8,
    /// For a listener: connections waiting to be accepted. Otherwise: bytes received and not
    /// yet read by the socket's owner.
    pub rx_queue: u64,
}

/// The IPv4 TCP sockets of this network namespace (`/proc/net/tcp`).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    fn addr(text: &str) -> Option<std::net::SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        // The address is the raw network-order word printed as a host integer.
        let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
        let port = u16::from_str_radix(port, 16).ok()?;
        Some((std::net::Ipv4Addr::from(ip), port).into())
    }
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, rx) = fields.get(4)?.split_once(':')?;
            Some(TcpSocket {
                local: addr(fields.get(1)?)?,
                remote: addr(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Connections waiting in `listener`'s accept queue (`None`: no such listener).
pub fn accept_backlog(listener: std::net::SocketAddr) -> Option<u64> {
    tcp_sockets()
        .into_iter()
        .find(|s| s.state == 0x0A && s.local == listener)
        .map(|s| s.rx_queue)
}

/// The server side of the connection from `client` to `server`, accepted and with everything
/// the client sent read: what a test awaits before acting on a connection it opened (rather
/// than sleeping). `Err` says what is still pending.
pub fn accepted_and_read(
    server: std::net::SocketAddr,
    client: std::net::SocketAddr,
) -> Result<(), String> {
    match accept_backlog(server) {
        Some(0) => {}
        Some(n) => return Err(format!("{n} connections not yet accepted")),
        None => return Err(format!("no listener on {server}")),
    }
    let sockets = tcp_sockets();
    let side = sockets
        .iter()
        .find(|s| s.local == server && s.remote == client)
        .ok_or_else(|| "no server side of the connection".to_string())?;
    match side.rx_queue {
        0 => Ok(()),
        n => Err(format!("{n} bytes not yet read by the server")),
    }
}
