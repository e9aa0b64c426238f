//! The display page in a real headless Chromium: it shows the counts, updates live as votes are
//! pressed, pulses, filters by terminal, and says "stale" when the daemon goes away. A screenshot
//! is saved to target/display.png.

use std::time::Duration;

use crate::display::Site;
use crate::harness::browser::Browser;
use crate::harness::repo_root;

#[test]
fn the_display_page_updates_live_and_shows_stale_when_the_daemon_is_gone() {
    let mut site = Site::start(8);
    let browser = Browser::start();
    let url = format!("http://{}/", site.addr);
    browser.open(&url);
    browser.wait_until("the page to connect", Duration::from_secs(15), |b| {
        b.text("live") == "Live"
    });
    assert_eq!(browser.text("total"), "0");
    assert_eq!(browser.text("happy-index"), "–");

    site.press(&[4, 4, 3], 3);
    browser.wait_until("three votes on the page", Duration::from_secs(10), |b| {
        b.text("total") == "3"
    });
    assert_eq!(browser.text("count-4"), "2");
    assert_eq!(browser.text("count-3"), "1");
    assert_eq!(browser.text("count-1"), "0");
    assert_eq!(browser.text("positive"), "100 %");
    // (3 + 3 + 2) / 9 × 100 = 88.9
    assert_eq!(browser.text("happy-index"), "89");
    assert_eq!(browser.text("pct-4"), "67 %");
    assert!(
        browser
            .eval("return document.getElementById('face-3').classList.contains('pulse')")
            .as_bool()
            .unwrap_or(false),
        "the last vote's smiley pulses"
    );
    browser.wait_until(
        "the footer to follow the votes",
        Duration::from_secs(5),
        |b| b.text("pending") == "Votes waiting for upload: 3",
    );
    assert_eq!(browser.text("upload"), "Upload: not configured");

    let screenshot = browser.screenshot();
    assert!(
        screenshot.starts_with(b"\x89PNG\r\n\x1a\n") && screenshot.len() > 10_000,
        "not a screenshot"
    );
    let path = repo_root().join("target").join("display.png");
    std::fs::write(&path, &screenshot).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());

    browser.open(&format!("{url}?terminal=entrance"));
    browser.wait_until("the per-terminal view", Duration::from_secs(10), |b| {
        b.text("total") == "3"
    });
    assert_eq!(browser.text("scope"), "Terminal entrance · today");
    browser.open(&format!("{url}?terminal=nowhere"));
    browser.wait_until("an unknown terminal named", Duration::from_secs(10), |b| {
        b.text("scope").contains("Unknown terminal")
    });

    browser.open(&url);
    browser.wait_until("the page to reconnect", Duration::from_secs(15), |b| {
        b.text("live") == "Live"
    });
    site.stop_gateway();
    browser.wait_until("the page to say stale", Duration::from_secs(15), |b| {
        b.text("live").starts_with("Stale")
    });
    assert!(browser
        .eval("return document.body.classList.contains('stale')")
        .as_bool()
        .unwrap_or(false));
}
