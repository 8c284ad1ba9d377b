//! `berth k3s-registries` and `berth containerd-hosts`: load the config, call
//! [`crate::generate`], write the result. The only file I/O of the generators is here.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{Config, Overrides};
use crate::generate::containerd::{self, HostsOptions};
use crate::generate::k3s::{self, AuthConfig, K3sOptions, Rewrite};
use crate::generate::targets::select;
use crate::generate::{GenerateError, MirrorTls, MirrorUrl, Routing, Selection, Target};

const K3S_HELP: &str = "\
Examples:
  berth k3s-registries --mirror-url http://10.27.27.10:5000 --output /etc/rancher/k3s/registries.yaml
  berth k3s-registries --mirror-url http://10.27.27.10:5000 --registry docker.io --registry ghcr.io --catch-all
  berth k3s-registries --mirror-url http://10.27.27.10:5000 --rewrite 'docker.io=^library/(.*)$=mirror/$1'
  berth k3s-registries --mirror-url https://mirror.example --ca-file /etc/berth/ca.pem --username node

Restart k3s (servers) or k3s-agent (agents) after changing the file. K3s keeps each registry's
own endpoint as the last fallback; start it with --disable-default-registry-endpoint to pull
only through the mirror.";

const HOSTS_HELP: &str = "\
Examples:
  berth containerd-hosts --mirror-url http://10.27.27.10:5000 --output /etc/containerd/certs.d
  berth containerd-hosts --mirror-url http://10.27.27.10:5000 --output /etc/containerd/certs.d --dry-run
  berth containerd-hosts --mirror-url http://10.27.27.10:5000 --output /etc/containerd/certs.d --json

containerd reads the tree only when its CRI registry `config_path` names the directory:
  containerd 2.x: [plugins.\"io.containerd.cri.v1.images\".registry] config_path = \"/etc/containerd/certs.d\"
  containerd 1.x: [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"/etc/containerd/certs.d\"
Files whose content is already right are left untouched.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = K3S_HELP)]
pub struct K3sArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// Rewrite repository names on the mirror endpoint, as REGISTRY=REGEX=REPLACEMENT
    /// (Go regexp; `$1` refers to a group). Split at the first two `=`: write `\x3d` for a
    /// literal `=` in the regex. Repeatable.
    #[arg(long = "rewrite", value_name = "REGISTRY=REGEX=REPLACEMENT")]
    rewrites: Vec<Rewrite>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Write to FILE (only if its content changes) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = HOSTS_HELP)]
pub struct HostsArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// containerd's `config_path` directory, e.g. /etc/containerd/certs.d.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Print each file under its path instead of writing.
    #[arg(long)]
    dry_run: bool,
    /// Print the files as one JSON array of `{"path", "content"}` instead of writing (for
    /// automation, e.g. the Ansible node role, which copies them to the nodes).
    #[arg(long, conflicts_with = "dry_run")]
    json: bool,
}

// Flags both generators share: where the mirror is, which registries, how to reach it.
// (A `///` comment here would replace the subcommand's description in --help.)
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The mirror as nodes reach it, with its scheme, e.g. http://10.27.27.10:5000
    /// [default: `mirror_url` from --config].
    #[arg(long, env = "BERTH_MIRROR_URL", value_name = "URL")]
    mirror_url: Option<String>,
    /// berth's config file; its upstreams are the registries written [default: built-in
    /// docker.io, ghcr.io, quay.io, registry.k8s.io].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write only this configured upstream (repeatable) [default: all of them].
    #[arg(long = "registry", value_name = "NAME")]
    registries: Vec<String>,
    /// Also send every other registry ("*", containerd `_default`) to the mirror.
    #[arg(long)]
    catch_all: bool,
    /// Name the registry in the endpoint path (<mirror>/v2/<registry>, override_path)
    /// instead of relying on containerd's `?ns=` query parameter.
    #[arg(long)]
    path_prefix: bool,
    /// CA certificate (path on the node) that signed the mirror's certificate.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<String>,
    /// Client certificate (path on the node) presented to the mirror; needs --key-file.
    #[arg(long, value_name = "PATH")]
    cert_file: Option<String>,
    /// Key of --cert-file (path on the node).
    #[arg(long, value_name = "PATH")]
    key_file: Option<String>,
    /// Do not verify the mirror's certificate.
    #[arg(long)]
    insecure_skip_verify: bool,
}

// Credentials nodes present to the mirror: K3s `configs."<mirror host>".auth`.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// User nodes log in to the mirror as (when berth requires auth); needs --password.
    #[arg(long, value_name = "NAME")]
    username: Option<String>,
    /// Password for --username; prefer the environment variable, which stays out of the
    /// shell history (the recorded command line shows it redacted either way).
    #[arg(
        long,
        env = "BERTH_MIRROR_PASSWORD",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    password: Option<String>,
    /// base64 of `username:password`, instead of --username/--password.
    #[arg(long, value_name = "BASE64")]
    auth: Option<String>,
    /// Token nodes exchange for registry access tokens at the mirror.
    #[arg(long, value_name = "TOKEN")]
    identity_token: Option<String>,
}

pub fn k3s_registries(args: K3sArgs) -> anyhow::Result<()> {
    let (targets, mirror) = resolve(&args.targets)?;
    let AuthArgs {
        username,
        password,
        auth,
        identity_token,
    } = args.auth;
    let auth = AuthConfig {
        username,
        password,
        auth,
        identity_token,
    };
    let has_secrets = auth != AuthConfig::default();
    let options = K3sOptions {
        mirror,
        routing: args.targets.routing(),
        rewrites: args.rewrites,
        auth: Some(auth),
        tls: args.targets.tls(),
    };
    let text = k3s::render(&k3s::registries(&targets, &options)?, &command_line());
    match &args.output {
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to stdout")?,
        Some(path) => {
            // The file then holds credentials: readable by root only, like K3s's own files.
            let mode = if has_secrets {
                FileMode::Private
            } else {
                FileMode::Public
            };
            let change = write_if_changed(path, &text, mode)?;
            println!("{change} {}", path.display());
        }
    }
    Ok(())
}

pub fn containerd_hosts(args: HostsArgs) -> anyhow::Result<()> {
    let (targets, mirror) = resolve(&args.targets)?;
    let options = HostsOptions {
        mirror,
        routing: args.targets.routing(),
        tls: args.targets.tls(),
    };
    let files = containerd::files(&targets, &options, &command_line())?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let listed: Vec<serde_json::Value> = files
            .iter()
            .map(|file| {
                serde_json::json!({
                    "path": args.output.join(&file.path),
                    "content": file.content,
                })
            })
            .collect();
        writeln!(stdout, "{}", serde_json::to_string_pretty(&listed)?)?;
        return Ok(());
    }
    for file in files {
        let path = args.output.join(&file.path);
        if args.dry_run {
            writeln!(stdout, "# {}\n{}", path.display(), file.content)?;
        } else {
            let change = write_if_changed(&path, &file.content, FileMode::Public)?;
            writeln!(stdout, "{change} {}", path.display())?;
        }
    }
    Ok(())
}

impl TargetArgs {
    fn routing(&self) -> Routing {
        if self.path_prefix {
            Routing::PathPrefix
        } else {
            Routing::Namespace
        }
    }

    fn tls(&self) -> MirrorTls {
        MirrorTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }
}

/// Loads the config and picks the registries and the mirror URL (flag over config file).
fn resolve(args: &TargetArgs) -> anyhow::Result<(Vec<Target>, MirrorUrl)> {
    // The mirror URL flag is checked first: its error is the likeliest and needs no file.
    let flag_url = args
        .mirror_url
        .as_deref()
        .map(MirrorUrl::parse)
        .transpose()?;
    let config = Config::load(args.config.as_deref(), &Overrides::default())?;
    let mirror = match (flag_url, &config.mirror_url) {
        (Some(url), _) => url,
        (None, Some(url)) => MirrorUrl::from_url(url)?,
        (None, None) => return Err(GenerateError::NoMirrorUrl.into()),
    };
    let selection = Selection {
        registries: args.registries.clone(),
        catch_all: args.catch_all,
    };
    let targets = select(&config.upstreams, &selection)?;
    Ok((targets, mirror))
}

#[derive(Debug, Clone, Copy)]
enum FileMode {
    /// 0644: hosts.toml, registries.yaml without credentials.
    Public,
    /// 0600: a registries.yaml holding credentials.
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Wrote,
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded so the paths line up in the report.
        f.write_str(match self {
            Change::Wrote => "wrote    ",
            Change::Unchanged => "unchanged",
        })
    }
}

/// Writes `text` to `path` unless it already holds exactly that, so re-running touches
/// nothing (no mtime change for watchers, no needless restarts). Writes go to a temporary
/// file renamed over the target, so a reader never sees half a file.
fn write_if_changed(path: &Path, text: &str, mode: FileMode) -> anyhow::Result<Change> {
    match std::fs::read(path) {
        Ok(existing) if existing == text.as_bytes() => return Ok(Change::Unchanged),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .context("the output path names no file")?
        .to_string_lossy();
    let temp = dir.join(format!(".{name}.berth-tmp"));
    write_new(&temp, text, mode).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(Change::Wrote)
}

fn write_new(path: &Path, text: &str, mode: FileMode) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let bits = match mode {
            FileMode::Public => 0o644,
            FileMode::Private => 0o600,
        };
        options.mode(bits);
        let mut file = options.open(path)?;
        // `mode` applies only to a newly created file; a leftover temp keeps its bits.
        file.set_permissions(std::fs::Permissions::from_mode(bits))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }
}

/// Flags whose values never appear in the recorded command line.
const SECRET_FLAGS: [&str; 3] = ["--password", "--auth", "--identity-token"];

/// Flags that change how the output is delivered, not what it says: left out of the recorded
/// command line, so a preview (`--dry-run`, `--json`) holds exactly the bytes a write would.
const DELIVERY_FLAGS: [&str; 2] = ["--dry-run", "--json"];

/// This process's command line, shell-quoted and with secrets redacted, for the header of
/// the generated files: it says how to regenerate them and, unlike a timestamp, stays the
/// same from run to run.
fn command_line() -> String {
    let mut words = vec!["berth".to_string()];
    let mut redact_next = false;
    for arg in std::env::args().skip(1) {
        if redact_next {
            words.push("'<redacted>'".into());
            redact_next = false;
            continue;
        }
        let flag = arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag);
        if DELIVERY_FLAGS.contains(&arg.as_str()) {
            continue;
        }
        if SECRET_FLAGS.contains(&flag) {
            if flag == arg {
                redact_next = true;
            } else {
                words.push(format!("{flag}='<redacted>'"));
                continue;
            }
        }
        words.push(shell_quoted(&arg));
    }
    words.join(" ")
}

fn shell_quoted(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_the_command_copy_pasteable() {
        assert_eq!(
            shell_quoted("http://10.27.27.10:5000"),
            "http://10.27.27.10:5000"
        );
        assert_eq!(
            shell_quoted("docker.io=^(.*)$=m/$1"),
            "'docker.io=^(.*)$=m/$1'"
        );
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
        assert_eq!(shell_quoted(""), "''");
    }

    #[test]
    fn identical_content_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/hosts.toml");
        assert_eq!(
            write_if_changed(&path, "x\n", FileMode::Public).unwrap(),
            Change::Wrote
        );
        assert_eq!(
            write_if_changed(&path, "x\n", FileMode::Public).unwrap(),
            Change::Unchanged
        );
        assert_eq!(
            write_if_changed(&path, "y\n", FileMode::Public).unwrap(),
            Change::Wrote
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y\n");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }
}
