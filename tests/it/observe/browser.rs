//! The status page rendered by a real browser (headless Chromium).

use super::*;

/// Runs headless Chromium (Debian's `chromium`) with a fresh profile and no network but ours.
fn chromium(profile: &std::path::Path, args: &[String]) -> crate::support::util::CmdOutput {
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    crate::support::util::run(&mut cmd, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: run by scripts/test"]
async fn the_status_page_renders_in_headless_chromium() {
    if !crate::support::prereq::require_tool("chromium") {
        return;
    }
    let (berth, _fake) = faulty_mirror().await;
    let url = berth.url("/_berth/status");
    let profile = tempfile::tempdir().unwrap();
    // The README's picture is refreshed on request only, so a test run leaves the tree clean:
    // BERTH_UPDATE_SCREENSHOT=1 writes docs/status-page.png, otherwise target/.
    let target = if std::env::var_os("BERTH_UPDATE_SCREENSHOT").is_some() {
        "docs/status-page.png"
    } else {
        "target/status-page.png"
    };
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(target);
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let (dom, shot) = tokio::task::spawn_blocking({
        let (url, screenshot, profile) =
            (url.clone(), screenshot.clone(), profile.path().to_owned());
        move || {
            let dom = chromium(&profile, &["--dump-dom".into(), url.clone()]);
            let shot = chromium(
                &profile,
                &[
                    format!("--screenshot={}", screenshot.display()),
                    "--window-size=1000,1300".into(),
                    url,
                ],
            );
            (dom, shot)
        }
    })
    .await
    .unwrap();
    dom.expect_success();
    let dom = &dom.stdout;
    assert!(dom.contains("<title>berth status</title>"), "{dom}");
    for image in ["docker.io/library/stall", "docker.io/library/corrupt"] {
        assert!(
            dom.contains(&format!("data-image=\"{image}\"")),
            "{image} missing from the rendered page"
        );
    }
    for node in [NODE_A, NODE_B] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "{node} missing"
        );
    }
    assert!(
        dom.contains(">stall<") && dom.contains(">verify<"),
        "classes shown"
    );
    shot.expect_success();
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a real page, not a blank one");
}
