//! The Ansible role in `ansible/roles/berth`, applied for real with `ansible-playbook -c local`
//! into a temp dir (`berth_root`), without systemd (`berth_manage_service: false`):
//! modes and owners, a berth.toml the installed binary serves with, the unit, idempotence,
//! and a bad config refused by the template's `validate`. Also ansible-lint and --syntax-check.
//!
//! Needs root (CI runs as root): the role creates the real `berth` system user, and berth is
//! started as that user, so the modes are proven sufficient, not just equal to a list.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::ansible::recap;
use crate::support::prereq::{require_root, require_tools};
use crate::support::util::{CmdOutput, free_port, http_get, kill_child, run, wait_until};
use berth::config::{Config, Overrides};

/// One playbook run on a loaded 2-core CI machine: tens of seconds; this bounds a hang.
const ANSIBLE_TIMEOUT: Duration = Duration::from_secs(300);
const BERTH_READY_TIMEOUT: Duration = Duration::from_secs(30);

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

fn id(args: &[&str]) -> String {
    let out = run(Command::new("id").args(args), Duration::from_secs(10));
    out.expect_success();
    out.stdout.trim().to_string()
}

/// The play the test applies: the role with `vars`, on localhost.
fn write_playbook(path: &Path, vars: &serde_json::Value) {
    // JSON is YAML: no quoting surprises in paths or secrets.
    let play = serde_json::json!([{
        "name": "Apply the berth role",
        "hosts": "localhost",
        "gather_facts": false,
        "roles": [{ "role": "berth", "vars": vars }],
    }]);
    std::fs::write(path, serde_json::to_string_pretty(&play).unwrap()).unwrap();
}

fn ansible_playbook(dir: &Path, playbook: &Path) -> CmdOutput {
    ansible_playbook_with(dir, playbook, "localhost,")
}

/// Like [`ansible_playbook`], with an inventory (a file, or `host,` lists).
fn ansible_playbook_with(dir: &Path, playbook: &Path, inventory: &str) -> CmdOutput {
    run(
        Command::new("ansible-playbook")
            // -v prints every task's result: a secret leaking through one would show.
            .args(["-v", "-i", inventory, "-c", "local"])
            .arg(playbook)
            .current_dir(dir)
            .env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false"),
        ANSIBLE_TIMEOUT,
    )
}

struct Owner {
    uid: u32,
    gid: u32,
}

fn assert_file(path: &Path, mode: u32, owner: &Owner) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        mode,
        "mode of {} is {:o}",
        path.display(),
        meta.permissions().mode() & 0o7777
    );
    assert_eq!(
        (meta.uid(), meta.gid()),
        (owner.uid, owner.gid),
        "owner:group of {}",
        path.display()
    );
}

#[test]
#[ignore = "needs root, ansible: run by scripts/test"]
fn role_installs_a_servable_berth_and_reruns_unchanged() {
    if !require_tools(&["ansible-playbook"])
        || !require_root("the role creates the berth user and chowns files")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // As root, berth runs as the berth user below, which must reach into the temp dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    let playbook = tmp.path().join("play.yml");

    let ca_src = tmp.path().join("upstream-ca.pem");
    let pem = rcgen::generate_simple_self_signed(vec!["registry.example".into()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(&ca_src, &pem).unwrap();
    // Unique per run, so finding it in an output means it leaked.
    let secret = format!(
        "tok-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );

    let admin_token = format!("admin-{secret}");
    // The K3s nodes of the inventory become [nodes]; berth_nodes adds one by hand.
    let inventory = tmp.path().join("hosts.ini");
    std::fs::write(
        &inventory,
        "localhost ansible_connection=local\n\n[k3s_servers]\ncp1 ansible_host=10.27.27.11\n\n\
         [agent]\nworker1 ansible_host=10.27.27.21\nworker-by-dns ansible_host=worker.example\n",
    )
    .unwrap();
    let inventory = inventory.to_str().unwrap().to_string();
    let (user, group) = ("berth", "berth");
    let mut vars = serde_json::json!({
        "berth_root": root,
        "berth_manage_service": false,
        "berth_create_user": true,
        "berth_user": user,
        "berth_group": group,
        "berth_binary_src": env!("CARGO_BIN_EXE_berth"),
        "berth_mirror_url": "http://10.27.27.10:5000",
        "berth_upstream_defaults": { "stall_timeout": "15s", "tag_ttl": "2m" },
        "berth_tcp_mss": 1360,
        "berth_probe_interval": "5m",
        "berth_store_pin_history": "30d",
        "berth_admin_token": admin_token,
        "berth_nodes": { "10.27.27.31": "spare" },
        "berth_upstream_patterns": ["*.pkg.dev", "public.ecr.aws"],
        "berth_upstreams": {
            "docker.io": {
                "url": "https://registry-1.docker.io",
                "username": "mirror-bot",
                "password": secret,
            },
            "registry.example:5000": {
                "url": "https://registry.example:5000",
                "ca_src": ca_src,
                "tag_ttl": "1m",
                "http1_only": true,
            },
        },
    });
    write_playbook(&playbook, &vars);

    // First run: installs everything.
    let first = ansible_playbook_with(tmp.path(), &playbook, &inventory);
    first.expect_success();
    let counts = recap(&first);
    assert_eq!(counts["failed"], 0);
    assert!(
        counts["changed"] >= 8,
        "first run changed too little: {counts:?}"
    );

    let account = Owner {
        uid: id(&["-u", user]).parse().unwrap(),
        gid: id(&["-g", user]).parse().unwrap(),
    };
    let root_owned = Owner { uid: 0, gid: 0 };
    let root_group = Owner {
        uid: 0,
        gid: account.gid,
    };
    let bin = root.join("usr/local/bin/berth");
    let config_dir = root.join("etc/berth");
    let config = config_dir.join("berth.toml");
    let password_file = config_dir.join("docker.io.password");
    let ca_file = config_dir.join("registry.example:5000.ca.pem");
    let data_dir = root.join("var/lib/berth");
    let unit = root.join("etc/systemd/system/berth.service");
    let token_file = config_dir.join("admin-token");
    let log_dir = root.join("var/log/berth");
    assert_file(&bin, 0o755, &root_owned);
    assert_file(&token_file, 0o600, &account);
    assert_file(&log_dir, 0o750, &account);
    assert_eq!(
        std::fs::metadata(&bin).unwrap().len(),
        std::fs::metadata(env!("CARGO_BIN_EXE_berth"))
            .unwrap()
            .len()
    );
    assert_file(&config_dir, 0o750, &root_group);
    assert_file(&config, 0o640, &root_group);
    assert_file(&password_file, 0o600, &account);
    assert_file(&ca_file, 0o644, &root_owned);
    assert_file(&data_dir, 0o750, &account);
    assert_file(&unit, 0o644, &root_owned);
    assert_file(&root.join("var/lib"), 0o755, &root_owned);
    assert_eq!(
        std::fs::read_to_string(&password_file).unwrap(),
        format!("{secret}\n")
    );
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), pem);

    // The secret lives only in its file: not in berth.toml, not in Ansible's output (no_log).
    let rendered = std::fs::read_to_string(&config).unwrap();
    assert!(
        !rendered.contains(&secret),
        "secret in berth.toml:\n{rendered}"
    );
    // The admin token contains the secret: this also proves it never shows in the output.
    assert!(!first.stdout.contains(&secret) && !first.stderr.contains(&secret));
    // no_log shows a loop item as `item=None` (its label would show otherwise).
    let secret_task = first
        .stdout
        .split("TASK [")
        .find(|t| t.starts_with("berth : Write upstream password files"))
        .expect("password file task output");
    assert!(
        secret_task.contains("item=None"),
        "not no_log:\n{secret_task}"
    );

    // berth itself reads the rendered file as the role meant it.
    let loaded = Config::load(Some(&config), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    assert_eq!(loaded.data_dir, data_dir);
    assert_eq!(loaded.listen, "0.0.0.0:5000".parse::<SocketAddr>().unwrap());
    assert_eq!(loaded.default_upstream, "docker.io");
    assert_eq!(
        loaded.mirror_url.as_ref().map(|u| u.as_str()),
        Some("http://10.27.27.10:5000/")
    );
    assert_eq!(
        loaded.upstreams.keys().collect::<Vec<_>>(),
        ["docker.io", "registry.example:5000"]
    );
    assert_eq!(
        loaded
            .upstream_patterns
            .patterns()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["*.pkg.dev", "public.ecr.aws"]
    );
    let hub = &loaded.upstreams["docker.io"];
    let creds = hub.credentials.as_ref().expect("docker.io credentials");
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("mirror-bot", secret.as_str())
    );
    assert_eq!(hub.tag_ttl, Duration::from_secs(120));
    assert_eq!(hub.transport.stall_timeout, Duration::from_secs(15));
    assert_eq!(hub.transport.tcp_mss, Some(1360));
    assert!(!hub.transport.http1_only);
    // What a production mirror needs: a bounded store (the role's default), the history pinned,
    // the admin token, the access log, the probe, and the inventory's nodes by name.
    assert_eq!(loaded.store.max_size, Some(50 << 30), "{rendered}");
    assert_eq!(
        loaded.store.pin_history,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert!(
        loaded
            .admin_token
            .as_ref()
            .is_some_and(|t| t.matches(&admin_token)),
        "{rendered}"
    );
    assert_eq!(
        loaded.access_log.as_deref(),
        Some(log_dir.join("access.jsonl").as_path())
    );
    assert_eq!(loaded.probe.interval, Some(Duration::from_secs(300)));
    let names = |ip: &str| loaded.nodes.name(ip.parse().unwrap()).map(String::from);
    assert_eq!(names("10.27.27.11").as_deref(), Some("cp1"));
    assert_eq!(names("10.27.27.21").as_deref(), Some("worker1"));
    assert_eq!(names("10.27.27.31").as_deref(), Some("spare"));
    assert!(
        !rendered.contains("worker-by-dns"),
        "[nodes] keys are addresses:\n{rendered}"
    );
    let private = &loaded.upstreams["registry.example:5000"];
    assert_eq!(private.ca_file.as_deref(), Some(ca_file.as_path()));
    assert_eq!(private.tag_ttl, Duration::from_secs(60));
    assert!(private.transport.http1_only);
    assert!(private.credentials.is_none());

    // The unit runs the installed binary on the rendered config, hardened like deploy/berth.service.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let directives = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(str::to_string)
            .collect()
    };
    let rendered_directives = directives(&unit_text);
    assert!(
        rendered_directives.contains(&format!(
            "ExecStart={} serve --config {}",
            bin.display(),
            config.display()
        )),
        "{unit_text}"
    );
    // Relocated, the log directory is not /var/log/berth: the unit lets berth write it.
    assert!(
        rendered_directives.contains(&format!(
            "ReadWritePaths={} {}",
            data_dir.display(),
            log_dir.display()
        )),
        "{unit_text}"
    );
    assert!(rendered_directives.contains(&format!("User={user}")));
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/berth.service"))
            .unwrap();
    // Only the paths differ (this install is relocated; StateDirectory is for /var/lib/berth).
    let path_keys = [
        "ExecStart=",
        "ReadWritePaths=",
        "StateDirectory=",
        "LogsDirectory=",
        "WorkingDirectory=",
    ];
    for line in directives(&reference) {
        if !path_keys.iter().any(|k| line.starts_with(k)) {
            assert!(
                rendered_directives.contains(&line),
                "unit lacks `{line}`:\n{unit_text}"
            );
        }
    }

    // systemd's own parser: no ignored directive, ExecStart executable.
    crate::support::prereq::assert_unit_verifies(&unit);

    // The installed binary serves with the rendered config, started as the service user would.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stderr_path = tmp.path().join("berth.stderr");
    // As the service account, with berth itself as our child (not under `runuser`), so
    // killing the child stops berth and nothing is left running after the test.
    let mut child = Command::new(&bin)
        .uid(account.uid)
        .gid(account.gid)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn the installed berth");
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "installed berth to answer GET /v2/",
            BERTH_READY_TIMEOUT,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "berth exited ({status}): {}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                matches!(http_get(addr, "/v2/"), Some((200, _))).then_some(())
            },
        );
        // The service user writes the access log where the role made room for it. A pull of
        // a registry berth does not serve: logged, and nothing leaves this host.
        let refused = http_get(addr, "/v2/role-test/app/manifests/1?ns=unknown.example");
        assert!(matches!(refused, Some((404, _))), "{refused:?}");
        wait_until("the access log line", BERTH_READY_TIMEOUT, || {
            std::fs::read_to_string(log_dir.join("access.jsonl"))
                .ok()
                .filter(|log| log.contains("role-test/app"))
        });
    }));
    kill_child(&mut child);
    if let Err(panic) = ready {
        std::panic::resume_unwind(panic);
    }
    // It wrote its cache where the config says, as the service user.
    assert!(
        std::fs::read_dir(&data_dir).unwrap().next().is_some(),
        "berth left {} empty",
        data_dir.display()
    );

    // Second run: nothing to do.
    let second = ansible_playbook_with(tmp.path(), &playbook, &inventory);
    second.expect_success();
    let counts = recap(&second);
    assert_eq!(
        (counts["changed"], counts["failed"]),
        (0, 0),
        "second run not idempotent:\n{}",
        second.stdout
    );
    assert!(!second.stdout.contains(&secret));

    // A bad upstream URL is refused by validate; the live config stays as it was.
    vars["berth_upstreams"]["registry.example:5000"]["url"] = "registry.example:5000".into();
    write_playbook(&playbook, &vars);
    let bad = ansible_playbook_with(tmp.path(), &playbook, &inventory);
    assert!(
        !bad.success && !bad.timed_out,
        "bad config accepted:\n{}",
        bad.stdout
    );
    assert!(
        bad.stdout.contains("config error") && bad.stdout.contains("url"),
        "validate failure does not show berth's error:\n{}",
        bad.stdout
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), rendered);
}

#[test]
#[ignore = "needs ansible, ansible-lint: run by scripts/test"]
fn ansible_lint_and_syntax_check_pass() {
    if !require_tools(&["ansible-playbook", "ansible-lint"]) {
        return;
    }
    let syntax = run(
        Command::new("ansible-playbook")
            .args(["--syntax-check", "-i", "inventory.example.ini", "site.yml"])
            .current_dir(ansible_dir())
            .env("ANSIBLE_NOCOLOR", "1"),
        ANSIBLE_TIMEOUT,
    );
    syntax.expect_success();
    assert!(
        syntax.stdout.contains("playbook: site.yml"),
        "{}",
        syntax.stdout
    );

    // From ansible/, so ansible-lint picks up ansible/.ansible-lint (offline, production, strict).
    let lint = run(
        Command::new("ansible-lint")
            .args(["--nocolor", "-c", ".ansible-lint"])
            .current_dir(ansible_dir()),
        ANSIBLE_TIMEOUT,
    );
    lint.expect_success();
    assert!(
        format!("{}{}", lint.stdout, lint.stderr).contains("production"),
        "ansible-lint did not use the production profile:\n{}\n{}",
        lint.stdout,
        lint.stderr
    );
}

/// GET `path` over HTTPS trusting `ca`, with an optional client certificate and Basic login:
/// the status, or the connection error (a refused handshake).
fn https_status(
    addr: SocketAddr,
    path: &str,
    ca: &crate::support::real::TestCa,
    client: Option<(&Path, &Path)>,
    login: Option<(&str, &str)>,
) -> Result<u16, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.ca_pem).unwrap()).unwrap();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .add_root_certificate(root);
        if let Some((cert, key)) = client {
            let mut pem = std::fs::read(cert).unwrap();
            pem.extend(std::fs::read(key).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        let mut request = builder
            .build()
            .unwrap()
            .get(format!("https://{addr}{path}"));
        if let Some((user, password)) = login {
            request = request.basic_auth(user, Some(password));
        }
        request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    })
}

#[test]
#[ignore = "needs root, ansible: run by scripts/test"]
fn role_installs_tls_client_ca_and_users_and_berth_serves_https_with_them() {
    if !require_tools(&["ansible-playbook"])
        || !require_root("the role creates the berth user and chowns files")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    let playbook = tmp.path().join("play.yml");
    let ca = crate::support::real::TestCa::new();
    let (node_cert, node_key) = ca.issue_client("node-1");
    let key_pem = std::fs::read_to_string(&ca.key_pem).unwrap();
    let users = format!("node:{}", bcrypt::hash("pull-pw", 5).unwrap());
    let (user, group) = ("berth", "berth");
    let vars = serde_json::json!({
        "berth_root": root,
        "berth_manage_service": false,
        "berth_create_user": true,
        "berth_user": user,
        "berth_group": group,
        "berth_binary_src": env!("CARGO_BIN_EXE_berth"),
        "berth_upstreams": {},
        "berth_server": { "allow": ["127.0.0.0/8", "10.27.27.0/24"], "header_timeout": "5s" },
        "berth_tls_cert": std::fs::read_to_string(&ca.cert_pem).unwrap(),
        "berth_tls_key": key_pem,
        "berth_tls_client_ca": std::fs::read_to_string(&ca.ca_pem).unwrap(),
        "berth_users": users,
    });
    write_playbook(&playbook, &vars);
    let first = ansible_playbook(tmp.path(), &playbook);
    first.expect_success();
    assert_eq!(recap(&first)["failed"], 0);

    let account = Owner {
        uid: id(&["-u", user]).parse().unwrap(),
        gid: id(&["-g", user]).parse().unwrap(),
    };
    let root_owned = Owner { uid: 0, gid: 0 };
    let root_group = Owner {
        uid: 0,
        gid: account.gid,
    };
    let config_dir = root.join("etc/berth");
    let tls_dir = config_dir.join("tls");
    assert_file(&tls_dir, 0o750, &root_group);
    assert_file(&tls_dir.join("tls.crt"), 0o644, &root_owned);
    assert_file(&tls_dir.join("clients.crt"), 0o644, &root_owned);
    assert_file(&tls_dir.join("tls.key"), 0o600, &account);
    assert_file(&config_dir.join("users"), 0o600, &account);
    // The key and the users never show in Ansible's output.
    let key_line = key_pem.lines().nth(1).unwrap();
    for out in [&first.stdout, &first.stderr] {
        assert!(!out.contains(key_line), "TLS key in ansible output");
        assert!(!out.contains(&users[..20]), "users file in ansible output");
    }

    let config = config_dir.join("berth.toml");
    let rendered = std::fs::read_to_string(&config).unwrap();
    let loaded = Config::load(Some(&config), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    let tls = loaded
        .server
        .tls
        .as_ref()
        .expect("[server] TLS in berth.toml");
    assert_eq!(tls.cert_file, tls_dir.join("tls.crt"));
    assert_eq!(tls.key_file, tls_dir.join("tls.key"));
    assert_eq!(
        tls.client_ca_file.as_deref(),
        Some(tls_dir.join("clients.crt").as_path())
    );
    assert_eq!(
        loaded.server.users_file.as_deref(),
        Some(config_dir.join("users").as_path())
    );
    assert_eq!(loaded.server.allow.len(), 2);
    assert_eq!(loaded.server.header_timeout, Duration::from_secs(5));

    // Served as the service user: it can read its key and users (0600, owner berth).
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stderr_path = tmp.path().join("berth.stderr");
    // As the service account, with berth itself as our child (under `runuser`, killing the
    // child would leave berth running after the test).
    let mut child = Command::new(root.join("usr/local/bin/berth"))
        .uid(account.uid)
        .gid(account.gid)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn the installed berth");
    let node = Some((node_cert.as_path(), node_key.as_path()));
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "installed berth to serve HTTPS",
            BERTH_READY_TIMEOUT,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "berth exited ({status}): {}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                https_status(addr, "/v2/", &ca, node, Some(("node", "pull-pw"))).ok()
            },
        );
        assert_eq!(
            https_status(addr, "/v2/", &ca, node, Some(("node", "pull-pw"))),
            Ok(200)
        );
        assert_eq!(https_status(addr, "/v2/", &ca, node, None), Ok(401));
        assert!(https_status(addr, "/v2/", &ca, None, Some(("node", "pull-pw"))).is_err());
    }));
    kill_child(&mut child);
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }

    let second = ansible_playbook(tmp.path(), &playbook);
    second.expect_success();
    let counts = recap(&second);
    assert_eq!(
        (counts["changed"], counts["failed"]),
        (0, 0),
        "second run not idempotent:\n{}",
        second.stdout
    );
}
