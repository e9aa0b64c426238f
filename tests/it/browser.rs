//! The display page in a real headless Chromium: it shows the counts, updates live as votes are
//! pressed, pulses, filters by terminal, and says "stale" when the daemon goes away. A screenshot
//! is saved to target/display.png.

use std::time::{Duration, Instant};

use crate::display::Site;
use crate::harness::browser::Browser;
use crate::harness::http::EventStream;
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

#[test]
fn a_screen_refused_with_503_shows_live_numbers_again_within_30_s_of_a_slot_freeing() {
    let mut site = Site::start(1);
    // Another screen holds the only slot (display.max-screens = 1).
    let holder = EventStream::open(site.addr, "/api/v1/events", None);
    assert_eq!(holder.status, 200);
    let browser = Browser::start();
    browser.open(&format!("http://{}/", site.addr));
    browser.wait_until("the page to load", Duration::from_secs(15), |b| {
        b.text("total") == "0"
    });
    std::thread::sleep(Duration::from_secs(3));
    let live = browser.text("live");
    assert!(
        live.starts_with("Stale"),
        "refused, yet the page says {live:?}"
    );

    drop(holder);
    let freed = Instant::now();
    browser.wait_until("the page to be live again", Duration::from_secs(30), |b| {
        b.text("live") == "Live"
    });
    site.press(&[4, 3], 2);
    browser.wait_until("live numbers", Duration::from_secs(10), |b| {
        b.text("total") == "2"
    });
    let after = freed.elapsed();
    eprintln!("live again {after:?} after the slot freed");
    assert!(after < Duration::from_secs(30), "{after:?}");
    assert!(browser.text("last-data").starts_with("Last data "));
}
