//! Small process and polling helpers: bounded waits, commands with timeouts, free ports.

use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `ready` every 50 ms until it returns `Some` or `timeout` passes (then panics naming `what`).
pub fn wait_until<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, true);
        }
        std::thread::sleep(Duration::from_millis(20));
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
