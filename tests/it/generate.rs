//! `berth k3s-registries` and `berth containerd-hosts`: golden files for the main variants,
//! round-trips through the key names K3s and containerd parse, and the CLI contract
//! (idempotent writes, dry-run, one-line refusals).
//!
//! Accept changed output with `BERTH_UPDATE_GOLDEN=1 cargo test --test it generate::`, then
//! review the diff under tests/golden/.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth::config::Config;
use berth::generate::containerd::{self, HostsFile, HostsOptions, HostsToml};
use berth::generate::k3s::{self, AuthConfig, K3sOptions, Registries, Rewrite};
use berth::generate::targets::select;
use berth::generate::{MirrorTls, MirrorUrl, Routing, Selection, Target};

const MIRROR: &str = "http://10.27.27.10:5000";

// ---------------------------------------------------------------------------------------------
// Golden files

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating_golden() -> bool {
    std::env::var_os("BERTH_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

const UPDATE_HINT: &str =
    "if the change is intended: BERTH_UPDATE_GOLDEN=1 cargo test --test it generate::";

fn assert_golden_file(relative: &str, actual: &str) {
    let path = golden_dir().join(relative);
    if updating_golden() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {UPDATE_HINT}", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs; {UPDATE_HINT}",
        path.display()
    );
}

/// The whole tree must match: same file names, same contents, nothing extra either side.
fn assert_golden_tree(relative: &str, files: &[HostsFile]) {
    let root = golden_dir().join(relative);
    if updating_golden() {
        let _ = fs::remove_dir_all(&root);
        for file in files {
            let path = root.join(&file.path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, &file.content).unwrap();
        }
        return;
    }
    let expected = read_tree(&root);
    let actual: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone()))
        .collect();
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "file names under {}; {UPDATE_HINT}",
        root.display()
    );
    for (path, content) in &actual {
        assert_eq!(
            content,
            &expected[path],
            "{}; {UPDATE_HINT}",
            root.join(path).display()
        );
    }
}

/// Every file under `root`, keyed by its path relative to `root`.
fn read_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let text = fs::read_to_string(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_owned(), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// K3s registries.yaml

/// The upstreams of a config file with one extra registry, to show added upstreams and a
/// `host:port` key.
const CONFIG_WITH_LOCAL_REGISTRY: &str = r#"
[upstreams."docker.io"]
url = "https://registry-1.docker.io"
[upstreams."registry.example:5000"]
url = "https://registry.example:5000"
"#;

struct K3sCase {
    name: &'static str,
    command: &'static str,
    config: &'static str,
    selection: Selection,
    options: K3sOptions,
}

fn k3s_options(mirror: &str) -> K3sOptions {
    K3sOptions {
        mirror: MirrorUrl::parse(mirror).unwrap(),
        routing: Routing::Namespace,
        rewrites: Vec::new(),
        auth: None,
        tls: MirrorTls::default(),
    }
}

fn registries(names: &[&str], catch_all: bool) -> Selection {
    Selection {
        registries: names.iter().map(|n| n.to_string()).collect(),
        catch_all,
    }
}

fn k3s_cases() -> Vec<K3sCase> {
    vec![
        K3sCase {
            name: "default",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000",
            config: "",
            selection: Selection::default(),
            options: k3s_options(MIRROR),
        },
        K3sCase {
            name: "subset",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000 --registry docker.io --registry ghcr.io",
            config: "",
            selection: registries(&["docker.io", "ghcr.io"], false),
            options: k3s_options(MIRROR),
        },
        K3sCase {
            name: "catch-all",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000 --catch-all",
            config: "",
            selection: registries(&[], true),
            options: k3s_options(MIRROR),
        },
        K3sCase {
            name: "tls-auth",
            command: "berth k3s-registries --mirror-url https://mirror.example:5443 --ca-file /etc/berth/ca.pem --cert-file /etc/berth/node.pem --key-file /etc/berth/node-key.pem --username node --password '<redacted>'",
            config: "",
            selection: Selection::default(),
            options: K3sOptions {
                auth: Some(AuthConfig {
                    username: Some("node".into()),
                    password: Some("s3cret".into()),
                    ..AuthConfig::default()
                }),
                tls: MirrorTls {
                    ca_file: Some("/etc/berth/ca.pem".into()),
                    cert_file: Some("/etc/berth/node.pem".into()),
                    key_file: Some("/etc/berth/node-key.pem".into()),
                    insecure_skip_verify: false,
                },
                ..k3s_options("https://mirror.example:5443")
            },
        },
        K3sCase {
            name: "rewrite",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000 --registry docker.io --rewrite 'docker.io=^library/(.*)$=mirror/library/$1'",
            config: "",
            selection: registries(&["docker.io"], false),
            options: K3sOptions {
                rewrites: vec![
                    "docker.io=^library/(.*)$=mirror/library/$1"
                        .parse()
                        .unwrap(),
                ],
                ..k3s_options(MIRROR)
            },
        },
        K3sCase {
            name: "path-prefix",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000 --path-prefix --catch-all",
            config: "",
            selection: registries(&[], true),
            options: K3sOptions {
                routing: Routing::PathPrefix,
                ..k3s_options(MIRROR)
            },
        },
        K3sCase {
            name: "config-upstreams",
            command: "berth k3s-registries --mirror-url http://10.27.27.10:5000 --config berth.toml",
            config: CONFIG_WITH_LOCAL_REGISTRY,
            selection: Selection::default(),
            options: k3s_options(MIRROR),
        },
    ]
}

fn build_k3s(case: &K3sCase) -> (Registries, String) {
    let config = Config::from_toml(case.config).unwrap();
    let targets = select(&config.upstreams, &case.selection).unwrap();
    let model = k3s::registries(&targets, &case.options).unwrap();
    let text = k3s::render(&model, case.command);
    (model, text)
}

#[test]
fn k3s_registries_match_golden_files() {
    for case in k3s_cases() {
        let (_, text) = build_k3s(&case);
        assert_golden_file(&format!("k3s/{}.yaml", case.name), &text);
    }
}

#[test]
fn k3s_registries_parse_back_to_the_model() {
    for case in k3s_cases() {
        let (model, text) = build_k3s(&case);
        let parsed: Registries =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", case.name));
        assert_eq!(parsed, model, "{}", case.name);
    }
}

/// Independent of our model types: every structural key is one rancher/wharfie's
/// `registries.Registry` reads (its `yaml:` tags), so a typo in both model and renderer
/// cannot pass.
#[test]
fn k3s_registries_use_only_wharfie_key_names() {
    const WHARFIE_KEYS: [&str; 13] = [
        "mirrors",
        "configs",
        "endpoint",
        "rewrite",
        "auth",
        "tls",
        "username",
        "password",
        "identity_token",
        "ca_file",
        "cert_file",
        "key_file",
        "insecure_skip_verify",
    ];
    for case in k3s_cases() {
        let (_, text) = build_k3s(&case);
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let mut keys = BTreeSet::new();
        collect_structural_keys(&value, 0, &mut keys);
        for key in &keys {
            assert!(
                WHARFIE_KEYS.contains(&key.as_str()),
                "{}: unknown key `{key}`",
                case.name
            );
        }
        let mirrors = value["mirrors"].as_mapping().expect("mirrors is a mapping");
        for (name, mirror) in mirrors {
            let endpoints = mirror["endpoint"]
                .as_sequence()
                .expect("endpoint is a list");
            assert_eq!(endpoints.len(), 1, "{}: {name:?}", case.name);
            let endpoint = endpoints[0].as_str().unwrap();
            assert!(endpoint.starts_with("http://") || endpoint.starts_with("https://"));
        }
    }
}

/// Keys of mappings, skipping the levels whose keys are data: registry names under
/// `mirrors`, hosts under `configs`, and regexes under `rewrite`.
fn collect_structural_keys(
    value: &serde_yaml_ng::Value,
    depth: usize,
    keys: &mut BTreeSet<String>,
) {
    let Some(mapping) = value.as_mapping() else {
        return;
    };
    for (key, child) in mapping {
        let key = key.as_str().expect("string keys").to_string();
        match (depth, key.as_str()) {
            (0, "mirrors" | "configs") => {
                for entry in child.as_mapping().expect("a mapping").values() {
                    collect_structural_keys(entry, 1, keys);
                }
            }
            (_, "rewrite") => {
                let rewrites = child.as_mapping().expect("rewrite is a mapping");
                assert!(
                    rewrites.values().all(|v| v.is_string()),
                    "rewrite values are strings"
                );
            }
            _ => collect_structural_keys(child, depth + 1, keys),
        }
        keys.insert(key);
    }
}

#[test]
fn k3s_default_output_is_the_documented_example() {
    let (model, _) = build_k3s(&k3s_cases().remove(0));
    let names: Vec<_> = model.mirrors.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "docker.io",
            "ghcr.io",
            "oci.external-secrets.io",
            "quay.io",
            "registry.k8s.io"
        ]
    );
    assert!(model.mirrors.values().all(|m| m.endpoints == [MIRROR]));
    assert!(
        model.configs.is_empty(),
        "plain HTTP without auth needs no configs"
    );
}

#[test]
fn k3s_refuses_inconsistent_options() {
    let config = Config::from_toml("").unwrap();
    let docker = select(&config.upstreams, &registries(&["docker.io"], false)).unwrap();
    let cases: Vec<(K3sOptions, &str)> = vec![
        (
            K3sOptions {
                rewrites: vec![Rewrite {
                    registry: "ghcr.io".into(),
                    pattern: "^(.*)$".into(),
                    replacement: "x/$1".into(),
                }],
                ..k3s_options(MIRROR)
            },
            "add --registry ghcr.io",
        ),
        (
            K3sOptions {
                auth: Some(AuthConfig {
                    username: Some("node".into()),
                    ..AuthConfig::default()
                }),
                ..k3s_options(MIRROR)
            },
            "--username and --password go together",
        ),
        (
            K3sOptions {
                tls: MirrorTls {
                    insecure_skip_verify: true,
                    ..MirrorTls::default()
                },
                ..k3s_options(MIRROR)
            },
            "need an https:// mirror URL",
        ),
    ];
    for (options, expected) in cases {
        let err = k3s::registries(&docker, &options).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// containerd hosts.toml tree

struct HostsCase {
    name: &'static str,
    command: &'static str,
    selection: Selection,
    options: HostsOptions,
}

fn hosts_options(mirror: &str) -> HostsOptions {
    HostsOptions {
        mirror: MirrorUrl::parse(mirror).unwrap(),
        routing: Routing::Namespace,
        tls: MirrorTls::default(),
    }
}

fn hosts_cases() -> Vec<HostsCase> {
    vec![
        HostsCase {
            name: "default",
            command: "berth containerd-hosts --mirror-url http://10.27.27.10:5000 --output /etc/containerd/certs.d",
            selection: Selection::default(),
            options: hosts_options(MIRROR),
        },
        HostsCase {
            name: "subset-catch-all",
            command: "berth containerd-hosts --mirror-url http://10.27.27.10:5000 --output /etc/containerd/certs.d --registry quay.io --catch-all",
            selection: registries(&["quay.io"], true),
            options: hosts_options(MIRROR),
        },
        HostsCase {
            name: "tls-path-prefix",
            command: "berth containerd-hosts --mirror-url https://mirror.example:5443 --output /etc/containerd/certs.d --registry docker.io --path-prefix --ca-file /etc/berth/ca.pem --cert-file /etc/berth/node.pem --key-file /etc/berth/node-key.pem",
            selection: registries(&["docker.io"], false),
            options: HostsOptions {
                routing: Routing::PathPrefix,
                tls: MirrorTls {
                    ca_file: Some("/etc/berth/ca.pem".into()),
                    cert_file: Some("/etc/berth/node.pem".into()),
                    key_file: Some("/etc/berth/node-key.pem".into()),
                    insecure_skip_verify: false,
                },
                ..hosts_options("https://mirror.example:5443")
            },
        },
    ]
}

fn build_hosts(case: &HostsCase) -> Vec<HostsFile> {
    let config = Config::from_toml("").unwrap();
    let targets = select(&config.upstreams, &case.selection).unwrap();
    containerd::files(&targets, &case.options, case.command).unwrap()
}

#[test]
fn containerd_hosts_trees_match_golden_trees() {
    for case in hosts_cases() {
        assert_golden_tree(&format!("containerd/{}", case.name), &build_hosts(&case));
    }
}

#[test]
fn containerd_hosts_default_tree_points_each_registry_at_the_mirror() {
    let files = build_hosts(&hosts_cases().remove(0));
    let paths: Vec<_> = files.iter().map(|f| f.path.to_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "docker.io/hosts.toml",
            "ghcr.io/hosts.toml",
            "oci.external-secrets.io/hosts.toml",
            "quay.io/hosts.toml",
            "registry.k8s.io/hosts.toml"
        ]
    );
    let docker: HostsToml = toml::from_str(&files[0].content).unwrap();
    assert_eq!(
        docker.server.as_deref(),
        Some("https://registry-1.docker.io")
    );
    let entry = &docker.host[MIRROR];
    assert_eq!(entry.capabilities, ["pull", "resolve"]);
    assert!(!entry.override_path && !entry.skip_verify && entry.ca.is_none());
}

/// Checked with the `toml` crate's untyped value, against the keys containerd's
/// `config/hosts.go` reads, and again through the typed model.
#[test]
fn containerd_hosts_files_parse_back_with_known_keys() {
    const TOP_KEYS: [&str; 2] = ["server", "host"];
    const HOST_KEYS: [&str; 5] = [
        "capabilities",
        "override_path",
        "ca",
        "client",
        "skip_verify",
    ];
    let config = Config::from_toml("").unwrap();
    for case in hosts_cases() {
        let targets: Vec<Target> = select(&config.upstreams, &case.selection).unwrap();
        let plan = containerd::plan(&targets, &case.options).unwrap();
        let files = build_hosts(&case);
        assert_eq!(plan.len(), files.len());
        for (dir, file) in plan.iter().zip(&files) {
            let value: toml::Table = toml::from_str(&file.content).unwrap();
            for key in value.keys() {
                assert!(
                    TOP_KEYS.contains(&key.as_str()),
                    "{}: `{key}`",
                    file.path.display()
                );
            }
            for (url, entry) in value["host"].as_table().expect("[host] tables") {
                assert!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "{url}"
                );
                for key in entry.as_table().unwrap().keys() {
                    assert!(
                        HOST_KEYS.contains(&key.as_str()),
                        "{}: `{key}`",
                        file.path.display()
                    );
                }
            }
            let typed: HostsToml = toml::from_str(&file.content).unwrap();
            assert_eq!(typed, dir.hosts, "{}", file.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_MIRROR_URL")
        .env_remove("BERTH_MIRROR_PASSWORD")
        .env_remove("BERTH_LOG")
        .output()
        .expect("run berth")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "berth failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A refusal is one `berth: ...` line on stderr and a failing exit status.
fn refusal(output: &Output) -> String {
    assert!(!output.status.success(), "expected a refusal");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("berth: "), "{stderr}");
    stderr
}

#[test]
fn cli_k3s_stdout_is_the_default_golden_file() {
    let text = stdout(&berth(&["k3s-registries", "--mirror-url", MIRROR]));
    let golden = fs::read_to_string(golden_dir().join("k3s/default.yaml")).unwrap();
    assert_eq!(text, golden);
}

#[test]
fn cli_k3s_takes_the_mirror_url_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    fs::write(&config, format!("mirror_url = \"{MIRROR}\"\n")).unwrap();
    let text = stdout(&berth(&[
        "k3s-registries",
        "--config",
        config.to_str().unwrap(),
    ]));
    let parsed: Registries = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(parsed.mirrors["docker.io"].endpoints, [MIRROR]);

    let err = refusal(&berth(&["k3s-registries"]));
    assert!(err.contains("--mirror-url"), "{err}");
}

#[test]
fn cli_k3s_redacts_secrets_in_the_header_and_keeps_the_file_private() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("registries.yaml");
    let args = [
        "k3s-registries",
        "--mirror-url",
        "https://mirror.example",
        "--username",
        "node",
        "--password",
        "s3cret",
        "--output",
        out.to_str().unwrap(),
    ];
    assert!(stdout(&berth(&args)).starts_with("wrote"));
    let text = fs::read_to_string(&out).unwrap();
    let header: String = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(
        header.contains("--password '<redacted>'") && !header.contains("s3cret"),
        "{header}"
    );
    let parsed: Registries = serde_yaml_ng::from_str(&text).unwrap();
    let auth = parsed.configs["mirror.example"].auth.clone().unwrap();
    assert_eq!(auth.password.as_deref(), Some("s3cret"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(stdout(&berth(&args)).starts_with("unchanged"));
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

#[test]
fn cli_containerd_hosts_second_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.d");
    let args = [
        "containerd-hosts",
        "--mirror-url",
        MIRROR,
        "--output",
        out.to_str().unwrap(),
    ];

    let first = stdout(&berth(&args));
    assert_eq!(
        first.lines().filter(|l| l.starts_with("wrote")).count(),
        5,
        "{first}"
    );
    let docker = out.join("docker.io/hosts.toml");
    let ghcr = out.join("ghcr.io/hosts.toml");
    let before = (inode(&docker), inode(&ghcr));

    let second = stdout(&berth(&args));
    assert!(
        second.lines().all(|l| l.starts_with("unchanged")),
        "{second}"
    );
    // Writes replace the file by rename, so an untouched file keeps its inode.
    assert_eq!((inode(&docker), inode(&ghcr)), before);

    fs::write(&ghcr, "edited by hand\n").unwrap();
    let third = stdout(&berth(&args));
    let wrote: Vec<_> = third.lines().filter(|l| l.starts_with("wrote")).collect();
    assert_eq!(wrote.len(), 1, "{third}");
    assert!(wrote[0].ends_with("ghcr.io/hosts.toml"), "{third}");
    assert_eq!(inode(&docker), before.0);

    let written = read_tree(&out);
    let golden = read_tree(&golden_dir().join("containerd/default"));
    let strip_header = |text: &String| -> String {
        text.lines()
            .filter(|l| !l.starts_with("#   berth "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        golden.keys().collect::<Vec<_>>()
    );
    for (path, text) in &written {
        assert_eq!(
            strip_header(text),
            strip_header(&golden[path]),
            "{}",
            path.display()
        );
    }
}

#[test]
fn cli_containerd_hosts_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.d");
    let text = stdout(&berth(&[
        "containerd-hosts",
        "--mirror-url",
        MIRROR,
        "--output",
        out.to_str().unwrap(),
        "--catch-all",
        "--dry-run",
    ]));
    assert!(!out.exists(), "dry run created {}", out.display());
    for dir in [
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.k8s.io",
        "_default",
    ] {
        let heading = format!("# {}\n", out.join(dir).join("hosts.toml").display());
        assert!(text.contains(&heading), "{heading} missing from\n{text}");
    }
}

/// `--json` (what the Ansible node role copies to the nodes) lists exactly the files a write
/// produces, byte for byte: `--json` and `--dry-run` are left out of the recorded command line.
#[test]
fn cli_containerd_hosts_json_holds_the_bytes_a_write_produces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.d");
    let args = [
        "containerd-hosts",
        "--mirror-url",
        MIRROR,
        "--output",
        out.to_str().unwrap(),
        "--catch-all",
    ];
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&berth(&[&args[..], &["--json"]].concat()))).unwrap();
    assert!(!out.exists(), "--json wrote files");
    let dry_run = stdout(&berth(&[&args[..], &["--dry-run"]].concat()));
    stdout(&berth(&args));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 6, "five built-in registries and _default");
    for file in listed {
        let path = Path::new(file["path"].as_str().unwrap());
        let content = file["content"].as_str().unwrap();
        assert!(path.starts_with(&out), "{}", path.display());
        assert_eq!(fs::read_to_string(path).unwrap(), content);
        assert!(dry_run.contains(content), "--dry-run shows other bytes");
        assert!(!content.contains("--json") && !content.contains("--dry-run"));
    }
}

#[test]
fn cli_refuses_a_mirror_url_without_scheme() {
    for command in ["k3s-registries", "containerd-hosts"] {
        let err = refusal(&berth(&[
            command,
            "--mirror-url",
            "10.27.27.10:5000",
            "--output",
            "/nonexistent",
        ]));
        assert!(err.contains("has no scheme"), "{err}");
        assert!(err.contains("write http://10.27.27.10:5000"), "{err}");
    }
}

#[test]
fn cli_refuses_an_unknown_registry_listing_the_configured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.d");
    for command in ["k3s-registries", "containerd-hosts"] {
        let output = berth(&[
            command,
            "--mirror-url",
            MIRROR,
            "--registry",
            "gcr.io",
            "--output",
            out.to_str().unwrap(),
        ]);
        let err = refusal(&output);
        assert!(
            err.contains("`gcr.io` is not a configured upstream"),
            "{err}"
        );
        assert!(
            err.contains("docker.io, ghcr.io, oci.external-secrets.io, quay.io, registry.k8s.io"),
            "{err}"
        );
    }
    assert!(!out.exists());
}
