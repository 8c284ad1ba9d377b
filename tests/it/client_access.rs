//! `berth prewarm` and `berth status` against a berth behind its own front door: HTTPS with a
//! private CA, client certificates (`client_ca_file`), Basic users (`users_file`) and the admin
//! endpoints on `admin_listen` — every flag of the shared `MirrorAccess`. Without the CA (or the
//! certificate, or the user) the commands fail with one line naming the flag to pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Format};
use crate::support::inprocess::Berth;
use crate::support::real::TestCa;
use crate::support::util::{CmdOutput, free_port, run};

const TOKEN: &str = "client-access-admin-token-0123456789";
const PASSWORD: &str = "pull-s3cret";

/// Runs `berth <args>` (≤ 120 s) off the async runtime; BERTH_* variables of the caller's
/// environment do not leak in.
async fn berth(args: Vec<String>) -> CmdOutput {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(&args)
            .env_remove("BERTH_MIRROR_URL")
            .env_remove("BERTH_ADMIN_TOKEN")
            .env_remove("BERTH_PASSWORD")
            .env_remove("BERTH_CONFIG")
            .env("BERTH_LOG", "warn");
        run(&mut cmd, Duration::from_secs(120))
    })
    .await
    .unwrap()
}

fn describe(out: &CmdOutput) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.code, out.stdout, out.stderr
    )
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Every access flag, minus those named in `without`.
fn access_flags(flags: &[(&str, String)], without: &[&str]) -> Vec<String> {
    flags
        .iter()
        .filter(|(name, _)| !without.contains(name))
        .flat_map(|(name, value)| [name.to_string(), value.clone()])
        .collect()
}

/// Asserts a one-line failure (exit 2) that names `needle`.
fn assert_one_line_naming(out: &CmdOutput, needle: &str) {
    assert_eq!(out.code, Some(2), "{}", describe(out));
    let stderr = out.stderr.trim();
    eprintln!("{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {}", describe(out));
    assert!(stderr.starts_with("berth: "), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` in: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_and_status_reach_a_berth_behind_https_client_certificates_users_and_admin_listen()
{
    let hub = FakeUpstream::start(Options::plain()).await;
    hub.push(
        "library/busybox",
        "1.37",
        &images::multi_arch(60, Format::Oci),
    );
    let ca = TestCa::new();
    let (node_cert, node_key) = ca.issue_client("node-1");
    let work = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let token_file = write("admin-token", &format!("{TOKEN}\n"));
    let password_file = write("password", &format!("{PASSWORD}\n"));
    let users = write(
        "users",
        &format!("node:{}\n", bcrypt::hash(PASSWORD, 5).unwrap()),
    );
    let groups = write(
        "groups.toml",
        "[groups.tools]\nimages = [\"busybox:1.37\"]\n",
    );
    let admin_port = free_port();
    let server = format!(
        "admin_token_file = {:?}\n[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n\
         client_ca_file = {:?}\nusers_file = {:?}\nadmin_listen = \"127.0.0.1:{admin_port}\"\n",
        path(&token_file),
        path(&ca.cert_pem),
        path(&ca.key_pem),
        path(&ca.ca_pem),
        path(&users),
    );
    let builder = Berth::builder()
        .default_upstream("docker.io")
        .top_level(&server)
        .upstream_named("docker.io", &hub.url());
    let mirror = tokio::task::block_in_place(|| builder.spawn_serving());
    let flags = [
        ("--mirror", mirror.https_url()),
        ("--admin-url", format!("https://127.0.0.1:{admin_port}")),
        ("--ca-file", path(&ca.ca_pem)),
        ("--cert-file", path(&node_cert)),
        ("--key-file", path(&node_key)),
        ("--username", "node".to_string()),
        ("--password-file", path(&password_file)),
        ("--admin-token-file", path(&token_file)),
    ];
    let prewarm = |extra: &[&str], without: &[&str]| {
        let mut args = vec!["prewarm".to_string()];
        args.extend(access_flags(&flags, without));
        args.extend(
            [
                "--groups-file",
                groups.to_str().unwrap(),
                "--platform",
                "linux/amd64",
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        berth(args)
    };

    // Warm and pin through every layer of the front door.
    let warm = prewarm(&["--json"], &[]).await;
    assert_eq!(warm.code, Some(0), "{}", describe(&warm));
    let report: Value = serde_json::from_str(&warm.stdout).unwrap();
    assert_eq!(report["images"][0]["result"], "ok", "{report}");
    assert_eq!(report["pins"][0]["group"], "tools", "{report}");
    assert_eq!(report["pins"][0]["recorded"], true, "{report}");

    // Ready from the cache alone.
    let check = prewarm(&["--check"], &[]).await;
    assert_eq!(check.code, Some(0), "{}", describe(&check));
    assert!(
        check.stdout.contains("ready: all 1 images"),
        "{}",
        describe(&check)
    );

    // The status report from the admin listener, pins included.
    let mut args = vec!["status".to_string(), "--json".to_string()];
    args.extend(access_flags(&flags, &[]));
    let status = berth(args).await;
    assert_eq!(status.code, Some(0), "{}", describe(&status));
    let report: Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(
        report["pins"].to_string().contains("tools"),
        "the pin set is listed: {report}"
    );

    // Each piece of access missing: one line naming the flag that supplies it.
    for (without, needle) in [
        ("--ca-file", "--ca-file"),
        ("--cert-file", "--cert-file"),
        ("--username", "--username"),
    ] {
        let without = match without {
            "--cert-file" => vec!["--cert-file", "--key-file"],
            "--username" => vec!["--username", "--password-file"],
            flag => vec![flag],
        };
        let out = prewarm(&[], &without).await;
        assert_one_line_naming(&out, needle);
        if needle != "--username" {
            // Status asks the admin listener only: no Basic user there.
            let mut args = vec!["status".to_string()];
            args.extend(access_flags(&flags, &without));
            assert_one_line_naming(&berth(args).await, needle);
        }
    }
    // Status on the main listener: no admin endpoints there, and the message says where.
    let mut args = vec!["status".to_string()];
    args.extend(access_flags(&flags, &["--admin-url"]));
    assert_one_line_naming(&berth(args).await, "--admin-url");
}
