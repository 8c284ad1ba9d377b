//! The flags of the commands that talk to a running berth (`berth prewarm`, `berth status`):
//! where it is, whom to trust, what to present. One struct, flattened into both; it builds the
//! one [`BerthClient`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use url::Url;

use crate::client::{Access, BerthClient, ClientError};

/// How to reach a running berth.
#[derive(Debug, clap::Args)]
pub struct MirrorAccess {
    /// URL of a running berth, e.g. http://10.27.27.10:5000 (https://… when it has
    /// tls_cert_file).
    #[arg(long, env = "BERTH_MIRROR_URL", value_name = "URL")]
    mirror: Option<String>,
    /// URL of the berth's admin listener, when it serves /_berth/ (status, pins) on
    /// `admin_listen`, e.g. https://10.27.27.10:5001 [default: --mirror].
    #[arg(long, value_name = "URL")]
    admin_url: Option<String>,
    /// CA certificate(s) (PEM) to trust beside the public roots: the issuer of the berth's
    /// tls_cert_file.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a berth with client_ca_file; needs --key-file.
    #[arg(long, value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// User name for a berth with users_file; the password comes from --password-file, else
    /// from the environment variable BERTH_PASSWORD.
    #[arg(long, value_name = "NAME")]
    username: Option<String>,
    /// File holding the password of --username.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// File holding the berth's admin token (its admin_token_file; or set BERTH_ADMIN_TOKEN):
    /// prewarm pins what it warmed with it, status needs it unless run on the berth's host.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

impl MirrorAccess {
    /// The client these flags describe; `Err` is one line naming the flag and the fix.
    pub fn client(&self, user_agent: &'static str) -> anyhow::Result<BerthClient> {
        let mirror = self.mirror.as_deref().context(
            "no mirror given; pass --mirror http://<host>:5000 (the URL of a running `berth serve`) or set BERTH_MIRROR_URL",
        )?;
        let mirror = http_url("--mirror", mirror, "http://10.27.27.10:5000")?;
        let admin = self
            .admin_url
            .as_deref()
            .map(|url| http_url("--admin-url", url, "http://127.0.0.1:5001"))
            .transpose()?;
        let mut builder = BerthClient::builder(mirror)
            .access(self.access()?)
            .user_agent(user_agent);
        if let Some(admin) = admin {
            builder = builder.admin_url(admin);
        }
        builder.build().map_err(|e| anyhow!("{e}"))
    }

    fn access(&self) -> anyhow::Result<Access> {
        let mut access = Access::new();
        if let Some(path) = &self.ca_file {
            access = access
                .with_ca_file(path)
                .map_err(|e| flag("--ca-file", e))?;
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain =
                    crate::client::load_certificates(cert).map_err(|e| flag("--cert-file", e))?;
                let key =
                    crate::client::load_private_key(key).map_err(|e| flag("--key-file", e))?;
                access = access
                    .with_identity(chain, key)
                    .map_err(|e| anyhow!("--key-file does not go with --cert-file: {e}"))?;
            }
            (Some(_), None) => {
                bail!("--cert-file needs --key-file (the certificate's private key)")
            }
            (None, Some(_)) => {
                bail!("--key-file needs --cert-file (the client certificate it goes with)")
            }
            (None, None) => {}
        }
        match (&self.username, &self.password_file) {
            (Some(username), Some(path)) => {
                let password = read_secret("--password-file", path)?;
                access = access.with_basic(username, &password);
            }
            (Some(username), None) => {
                let password = std::env::var("BERTH_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .context(
                        "--username needs a password: pass --password-file FILE or set BERTH_PASSWORD",
                    )?;
                access = access.with_basic(username, &password);
            }
            (None, Some(_)) => bail!("--password-file needs --username (whose password it holds)"),
            (None, None) => {}
        }
        if let Some(token) = self.admin_token()? {
            access = access.with_admin_token(&token);
        }
        Ok(access)
    }

    fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
            return Ok(Some(token.trim().to_string()));
        }
        Ok(std::env::var("BERTH_ADMIN_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }
}

/// The fix for a refused connection, naming the flag (`None`: not about trust or identity).
pub fn explain_refusal(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Untrusted { url, cause } => Some(format!(
            "{url} presented a certificate this client does not trust ({cause}); pass the CA certificate that issued it with --ca-file"
        )),
        ClientError::ClientCertificate { url, cause } => Some(format!(
            "{url} refused the connection for want of a client certificate it trusts ({cause}); pass one issued by its client_ca_file with --cert-file and --key-file"
        )),
        _ => None,
    }
}

fn http_url(flag: &str, text: &str, example: &str) -> anyhow::Result<Url> {
    Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .with_context(|| format!("{flag} `{text}` is not an http(s) URL; write e.g. {example}"))
}

fn flag(name: &str, e: ClientError) -> anyhow::Error {
    anyhow!("{name} {e}")
}

/// A secret kept in a file, without its trailing newline; an empty one is refused.
fn read_secret(flag: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        access: MirrorAccess,
    }

    fn error(args: &[&str]) -> String {
        let cli = Cli::try_parse_from([&["berth"], args].concat()).unwrap();
        let e = cli.access.client("test").err().expect("an error");
        let text = format!("{e:#}");
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    #[test]
    fn bad_flags_name_the_problem_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.to_str().unwrap();
        let m = ["--mirror", "https://10.0.0.1:5000"];
        for (args, needle) in [
            (
                vec!["--mirror", "10.0.0.1:5000"],
                "--mirror `10.0.0.1:5000` is not an http(s) URL",
            ),
            (
                [&m[..], &["--admin-url", "5001"]].concat(),
                "--admin-url `5001` is not an http(s) URL",
            ),
            (
                [&m[..], &["--cert-file", empty]].concat(),
                "--cert-file needs --key-file",
            ),
            (
                [&m[..], &["--key-file", empty]].concat(),
                "--key-file needs --cert-file",
            ),
            (
                [&m[..], &["--password-file", empty]].concat(),
                "--password-file needs --username",
            ),
            ([&m[..], &["--ca-file", empty]].concat(), "--ca-file"),
            (
                [&m[..], &["--ca-file", "/nonexistent/ca.pem"]].concat(),
                "--ca-file /nonexistent/ca.pem",
            ),
            (
                [&m[..], &["--username", "node", "--password-file", empty]].concat(),
                "--password-file",
            ),
        ] {
            let text = error(&args);
            assert!(text.contains(needle), "{args:?}: {text}");
        }
    }
}
