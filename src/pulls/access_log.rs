//! The optional access log (`access_log` in berth.toml): one JSON object per client request,
//! written by its own task so a slow disk never delays a response. Lines that do not fit the
//! queue, bounded in lines and in bytes, are dropped and counted, never buffered without limit.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Pull;

/// Lines waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 8_192;
/// Bytes waiting for the writer at most (each line's fields are clipped, so a line is small).
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

pub struct AccessLog {
    lines: mpsc::Sender<(String, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Appends to `path` (`-` = standard output). Call inside the runtime: spawns the writer.
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (lines, mut rx) = mpsc::channel::<(String, OwnedSemaphorePermit)>(QUEUE);
        tokio::task::spawn_blocking(move || {
            while let Some((line, _permit)) = rx.blocking_recv() {
                let mut batch = line;
                // Whatever queued meanwhile goes out in the same write (at most the budget).
                while let Ok((more, _permit)) = rx.try_recv() {
                    batch.push_str(&more);
                }
                if let Err(e) = out.write_all(batch.as_bytes()).and_then(|()| out.flush()) {
                    tracing::warn!(error = %e, "cannot write the access log");
                }
            }
        });
        Ok(AccessLog {
            lines,
            budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn write(&self, pull: &Pull) {
        let mut line = line(pull);
        line.push('\n');
        let queued = u32::try_from(line.len())
            .ok()
            .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
            .map(|permit| self.lines.try_send((line, permit)));
        if !matches!(queued, Some(Ok(()))) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "access log lines dropped: the writer cannot keep up"
                );
            }
        }
    }
}

fn line(pull: &Pull) -> String {
    let time = pull
        .at
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    serde_json::json!({
        "time": time,
        "client": pull.client.map(|c| c.to_string()),
        "node": pull.node,
        "registry": pull.registry,
        "repository": pull.repository,
        "reference": pull.reference,
        "kind": pull.kind,
        "status": pull.status,
        "bytes": pull.bytes,
        "duration_ms": pull.duration.as_secs_f64() * 1000.0,
        "cache": pull.cache,
        "upstream_attempts": pull.upstream_attempts,
        "error_class": pull.error_class,
        "error": pull.error,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn each_request_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let log = AccessLog::open(&path).unwrap();
        for status in [200, 502] {
            log.write(&Pull {
                at: SystemTime::now(),
                client: Some("10.27.27.21".parse().unwrap()),
                node: Some("cp1".into()),
                registry: "ghcr.io".into(),
                repository: "fluxcd/flux-cli".into(),
                reference: "v2.3.0".into(),
                kind: "manifest",
                status,
                error_class: (status == 502).then_some(crate::failure::ErrorClass::Stall),
                error: None,
                bytes: 1234,
                duration: Duration::from_millis(12),
                cache: Some(crate::trace::CacheResult::Miss),
                upstream_attempts: 3,
            });
        }
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["client"], "10.27.27.21");
        assert_eq!(lines[0]["node"], "cp1");
        assert_eq!(lines[0]["reference"], "v2.3.0");
        assert_eq!(lines[0]["error_class"], serde_json::Value::Null);
        assert_eq!(lines[1]["status"], 502);
        assert_eq!(lines[1]["error_class"], "stall");
        assert_eq!(lines[1]["cache"], "miss");
        assert_eq!(lines[1]["upstream_attempts"], 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_cannot_keep_up_holds_at_most_the_byte_budget() {
        // A FIFO with a reader that never reads: the writer blocks once the pipe is full.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let _idle_reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let log = AccessLog::open(&path).unwrap();
        // 2 KiB lines: the byte budget (4 MiB) is reached near 2,000 queued lines, long before
        // the line bound (8,192).
        let pull = Pull {
            at: SystemTime::now(),
            client: None,
            node: None,
            registry: "ghcr.io".into(),
            repository: "org/app".into(),
            reference: "1".into(),
            kind: "manifest",
            status: 502,
            error_class: None,
            error: Some("e".repeat(2048)),
            bytes: 0,
            duration: Duration::ZERO,
            cache: None,
            upstream_attempts: 1,
        };
        for _ in 0..4_000 {
            log.write(&pull);
        }
        let queued_bytes = QUEUE_BYTES - log.budget.available_permits();
        assert!(queued_bytes <= QUEUE_BYTES);
        assert!(
            log.dropped.load(Ordering::Relaxed) > 1_000,
            "4,000 lines of 2 KiB cannot all wait: {} dropped",
            log.dropped.load(Ordering::Relaxed)
        );
        // Let the writer finish: drain the FIFO until it closes its end.
        drop(log);
        let mut rest = Vec::new();
        use std::io::Read as _;
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut rest)
            .unwrap();
        assert!(
            rest.len() <= QUEUE_BYTES + (1 << 20),
            "{} bytes",
            rest.len()
        );
    }
}
