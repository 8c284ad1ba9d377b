//! A real S3-compatible server: `s3s-fs` (crates.io; objects are files under a temp dir, written
//! by temp file + rename) on 127.0.0.1:<free port>, with SigV4 credentials and one bucket.
//! Killed on drop. `scripts/test` installs it (`cargo install s3s-fs --features binary`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::super::util::{free_port, kill_child, wait_until};

pub const ACCESS_KEY: &str = "berth-test-access";
pub const SECRET_KEY: &str = "berth-test-secret-key";
pub const TOOL: &str = "s3s-fs";

pub struct S3Server {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub bucket: String,
    child: Option<Child>,
}

impl S3Server {
    /// Starts the server with bucket `bucket` and waits (≤ 20 s) until it accepts connections.
    pub fn start(bucket: &str) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // s3s-fs keeps bucket `b` in directory `<root>/b`.
        std::fs::create_dir_all(dir.path().join("root").join(bucket)).unwrap();
        let mut server = S3Server {
            addr,
            dir,
            bucket: bucket.into(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(TOOL)
            .arg("--host")
            .arg(self.addr.ip().to_string())
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(self.dir.path().join("root"))
            .env("RUST_LOG", "s3s_fs=info,s3s=warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(self.dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        wait_until("s3s-fs to listen", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("s3s-fs exited ({status}):\n{}", self.log());
            }
            std::net::TcpStream::connect(self.addr).ok().map(|_| ())
        });
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[store]` table for a berth using this server.
    pub fn store_toml(&self, prefix: Option<&str>) -> String {
        let mut s = format!(
            "[store]\nkind = \"s3\"\nbucket = {:?}\nendpoint = {:?}\nallow_http = true\n\
             access_key_id = {ACCESS_KEY:?}\nsecret_access_key = {SECRET_KEY:?}\n",
            self.bucket,
            self.endpoint()
        );
        if let Some(p) = prefix {
            s += &format!("prefix = {p:?}\n");
        }
        s
    }

    /// Where the server keeps object `key` of the bucket (for checking what is really stored).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.dir.path().join("root").join(&self.bucket).join(key)
    }

    /// Kills the server (an S3 outage); the data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel and then hang,
    /// like an S3 endpoint that stopped answering. [`S3Server::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("s3s-fs is running").id();
        crate::support::util::run(
            Command::new("kill").args([signal, &pid.to_string()]),
            Duration::from_secs(5),
        )
        .expect_success();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- s3s-fs log (last 100 lines) ---\n{}",
                lines[lines.len().saturating_sub(100)..].join("\n")
            );
        }
    }
}
