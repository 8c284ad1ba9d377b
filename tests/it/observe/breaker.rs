//! The breaker gauge `berth_upstream_state`: up, down after the threshold, probing while the
//! probe is out, up again once it answered.

use super::*;
use crate::support::util::advance_clock;

#[tokio::test]
async fn the_breaker_gauge_goes_open_probing_closed() {
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "library/app",
        "1",
        &images::image(&ImageSpec::new(9, Format::Oci)),
    );
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 2\nbreaker_cooldown = \"1s\"")
        .start()
        .await;
    let state = || berth.metric("berth_upstream_state", &[("upstream", "docker.io")]);
    assert_eq!(state().await, 0.0, "up");
    let url = berth.url("/v2/library/app/manifests/1");
    fake.inject(Fault::status(503, None).times(2));
    for _ in 0..2 {
        assert_eq!(pull(&node(NODE_A), &url).await, 502);
    }
    assert_eq!(state().await, 2.0, "down after two failures");

    // After the cooldown (berth's breaker times it with tokio's clock: advanced, not slept)
    // the next request is the probe; hold its answer to see `probing`.
    advance_clock(Duration::from_millis(1100)).await;
    fake.inject(Fault::delay_headers(Duration::from_millis(1500)));
    let probe = tokio::spawn({
        let url = url.clone();
        async move { pull(&node(NODE_A), &url).await }
    });
    eventually(
        "berth_upstream_state 1 (probing) while the probe is out",
        Duration::from_secs(5),
        || async {
            let s = state().await;
            if s == 1.0 {
                Ok(())
            } else {
                Err(format!("berth_upstream_state {s}"))
            }
        },
    )
    .await;
    assert_eq!(probe.await.unwrap(), 200);
    assert_eq!(state().await, 0.0, "closed after the probe answered");
}
