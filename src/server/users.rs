//! Clients that must log in: an htpasswd file of bcrypt hashes (`htpasswd -B`), checked for
//! HTTP Basic credentials.
//!
//! bcrypt is slow on purpose (tens of ms), and containerd sends its credentials on every
//! request, so a credential that verified once is remembered (by its SHA-256, for a while);
//! wrong ones are never remembered. At most [`MAX_VERIFYING`] bcrypt checks run at once, so a
//! stream of wrong passwords costs bounded CPU. The file is re-read when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// bcrypt checks running at once.
const MAX_VERIFYING: usize = 2;
/// Users in one file, and its size.
const MAX_USERS: usize = 10_000;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Verified credentials remembered, and for how long.
const VERIFIED_CAPACITY: u64 = 4096;
const VERIFIED_FOR: Duration = Duration::from_secs(600);
/// How often the file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Checked against when the user is unknown, so an unknown name costs what a wrong password does.
const DUMMY_HASH: &str = "$2b$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z3ZwQD8JIH1bCRmwQH5W6mKe";

pub struct Users {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    verifying: Semaphore,
}

struct Table {
    /// user → bcrypt hash
    hashes: HashMap<String, String>,
    text: Vec<u8>,
}

impl Users {
    /// Reads and checks the file; the error names the line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let table = read_table(path)?;
        Ok(Users {
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_FOR)
                .build(),
            verifying: Semaphore::new(MAX_VERIFYING),
        })
    }

    pub fn len(&self) -> usize {
        self.table().hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The user named by valid `Authorization: Basic …` credentials, or `None`.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Option<String> {
        let (user, password) = basic_credentials(authorization?)?;
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if self.verified.contains_key(&key) {
            return Some(user);
        }
        let hash = self.table().hashes.get(&user).cloned();
        let _turn = self.verifying.acquire().await.ok()?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()?
            .unwrap_or(false);
        if ok && known {
            self.verified.insert(key, ());
            return Some(user);
        }
        None
    }

    /// Re-reads the file every few seconds until `stop`; a changed, valid file replaces the
    /// users (and forgets remembered credentials, so a removed user is out at once).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let users = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let path = users.path.clone();
                let Ok(text) = tokio::task::spawn_blocking(move || read_bounded(&path)).await
                else {
                    continue;
                };
                let text = match text {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read server.users_file; keeping the users loaded before");
                        continue;
                    }
                };
                if text == users.table().text {
                    continue;
                }
                match parse(&text) {
                    Ok(hashes) => {
                        let count = hashes.len();
                        *users.table.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(Table { hashes, text });
                        users.verified.invalidate_all();
                        tracing::info!(users = count, "server.users_file reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "server.users_file changed but does not parse; keeping the users loaded before");
                        // Remember the bad text so the warning is not repeated every tick.
                        let hashes = users.table().hashes.clone();
                        *users.table.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(Table { hashes, text });
                    }
                }
            }
        })
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("server.users_file {}: {e}", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "server.users_file {}: {size} bytes, more than an htpasswd file should be",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("server.users_file {}: {e}", path.display()))
}

fn read_table(path: &Path) -> Result<Table, String> {
    let text = read_bounded(path)?;
    let hashes = parse(&text).map_err(|e| format!("server.users_file {}: {e}", path.display()))?;
    Ok(Table { hashes, text })
}

/// `user:$2y$…` lines; blank lines and `#` comments are skipped. Only bcrypt hashes are taken:
/// the other htpasswd formats (MD5-crypt, SHA-1, plain) are too weak to guard upstream credentials.
fn parse(text: &[u8]) -> Result<HashMap<String, String>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let mut hashes = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not `user:hash`", n + 1))?;
        if user.is_empty() {
            return Err(format!("line {}: empty user name", n + 1));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "line {}: the hash of `{user}` is not bcrypt; create it with `htpasswd -B`",
                n + 1
            ));
        }
        if hashes.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(format!("line {}: `{user}` is listed twice", n + 1));
        }
        if hashes.len() > MAX_USERS {
            return Err(format!("more than {MAX_USERS} users"));
        }
    }
    if hashes.is_empty() {
        return Err("no users (lines `user:bcrypt-hash`, made with `htpasswd -B`)".into());
    }
    Ok(hashes)
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let raw = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn users_file(dir: &Path, lines: &str) -> PathBuf {
        let path = dir.join("users");
        std::fs::write(&path, lines).unwrap();
        path
    }

    #[tokio::test]
    async fn right_password_in_wrong_ones_out() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = users_file(dir.path(), &format!("# nodes\nnode:{hash}\n"));
        let users = Users::load(&path).unwrap();
        assert_eq!(
            users.authenticate(Some(&basic("node", "s3cret"))).await,
            Some("node".into())
        );
        // Remembered: the second check answers the same without bcrypt.
        assert!(
            users
                .authenticate(Some(&basic("node", "s3cret")))
                .await
                .is_some()
        );
        assert_eq!(
            users.authenticate(Some(&basic("node", "wrong"))).await,
            None
        );
        assert_eq!(
            users.authenticate(Some(&basic("nobody", "s3cret"))).await,
            None
        );
        assert_eq!(users.authenticate(Some("Bearer abc")).await, None);
        assert_eq!(users.authenticate(Some("Basic !!!")).await, None);
        assert_eq!(users.authenticate(None).await, None);
        // The stand-in hash for unknown users is a real one (else unknown names answer faster).
        assert_eq!(bcrypt::verify("x", DUMMY_HASH).ok(), Some(false));
    }

    #[test]
    fn weak_or_broken_files_are_refused_with_the_line() {
        for (text, needle) in [
            (
                "node:{SHA}abc\n",
                "line 1: the hash of `node` is not bcrypt",
            ),
            ("\nnode\n", "line 2: not `user:hash`"),
            ("# only a comment\n", "no users"),
            ("a:$2y$05$x\na:$2y$05$y\n", "line 2: `a` is listed twice"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
