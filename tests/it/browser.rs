//! The display page in a real headless Chromium: it shows the counts, updates live as votes are
//! pressed, pulses, filters by terminal, says "stale" when the daemon goes away, fits landscape,
//! tablet and portrait screens in each of its three views, speaks the configured language and
//! draws today's hours. Screenshots are saved under target/screenshots/.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::display::{start_gateway, Site};
use crate::harness::browser::Browser;
use crate::harness::http::{self, EventStream};
use crate::harness::{write_file, RunningChild};

/// The screens the board is laid out for: width, height, and the least font size (CSS px) any
/// text may have there (24 px: readable from 3 m on a 43" 1080p panel; a small tablet is read
/// from closer).
const SCREENS: [(u32, u32, f64); 3] = [(1920, 1080, 24.0), (1024, 600, 14.0), (1080, 1920, 24.0)];

/// The three views: name and query.
const VIEWS: [(&str, &str); 3] = [
    ("site", ""),
    ("terminal", "?terminal=entrance"),
    ("terminals", "?view=terminals"),
];

/// Twelve terminals, as a big store might have.
const TERMINALS: [&str; 12] = [
    "entrance",
    "exit",
    "checkout-1",
    "checkout-2",
    "checkout-3",
    "checkout-4",
    "cafe",
    "toilets-ground-floor",
    "toilets-first-floor",
    "service-desk",
    "pharmacy",
    "garden-centre",
];

/// A gateway whose simulated terminals press away (no serial line needed).
struct Board {
    _dir: tempfile::TempDir,
    _gateway: RunningChild,
    addr: SocketAddr,
}

impl Board {
    /// `terminals` simulated terminals, the `[display]` table's extra lines and, if given, the
    /// same opening hours every day (`"closed"` for a closed day).
    fn start(terminals: &[&str], display: &str, hours: Option<&str>) -> Board {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = format!(
            "gateway-id = \"gw-board\"\nsite = \"test-store\"\ndata-dir = \"{}\"\ntime-zone = \"Europe/Berlin\"\nlisten = \"127.0.0.1:0\"\n\n[display]\n{display}\n\n[filter]\nmin-interval = \"1s\"\n\n",
            dir.path().join("journal").display()
        );
        if let Some(hours) = hours {
            config.push_str("[opening-hours]\n");
            for day in [
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
            ] {
                config.push_str(&format!("{day} = \"{hours}\"\n"));
            }
            config.push('\n');
        }
        // A rule that never holds, in place of the default one (simulated terminals press
        // unhappy runs now and then): the alerts of the layout test are its own.
        config.push_str("[[alert]]\nkind = \"index-above\"\nthreshold = 100\n\n");
        for id in terminals {
            config.push_str(&format!(
                "[[terminal]]\nid = \"{id}\"\nkind = \"simulated\"\npresses-per-minute = 90\n\n"
            ));
        }
        let path = write_file(dir.path(), "votegate.toml", &config);
        let (gateway, addr) = start_gateway(&path);
        Board {
            _dir: dir,
            _gateway: gateway,
            addr,
        }
    }

    /// Waits until every terminal has pressed at least `presses` times today (hours included,
    /// so that presses outside opening hours count too).
    fn wait_presses(&self, presses: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tallies = http::get(self.addr, "/api/v1/tallies").json();
            let least = tallies["terminals"]
                .as_object()
                .map(|terminals| {
                    terminals
                        .values()
                        .map(|w| {
                            w["hours"]
                                .as_array()
                                .map(|hours| {
                                    hours
                                        .iter()
                                        .flat_map(|h| h.as_array().cloned().unwrap_or_default())
                                        .filter_map(|n| n.as_u64())
                                        .sum::<u64>()
                                })
                                .unwrap_or(0)
                        })
                        .min()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            if least >= presses {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the simulated terminals did not press {presses} times each: {tallies}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Opens `url` and waits until the page is live and has drawn the tallies.
fn open_live(browser: &Browser, url: &str, live: &str) {
    browser.open(url);
    browser.wait_until(
        "the page to be live and drawn",
        Duration::from_secs(15),
        |b| {
            b.text("live") == live
                && b.eval("return document.querySelectorAll('.cols .col').length > 0")
                    .as_bool()
                    .unwrap_or(false)
        },
    );
    // Let the share bars finish their transition.
    std::thread::sleep(Duration::from_millis(700));
}

/// Asserts that nothing reaches outside the viewport and no text is under `min_font` px.
fn assert_fits(browser: &Browser, what: &str, min_font: f64) {
    let layout = browser.layout();
    eprintln!(
        "{what}: viewport {:?}, smallest text {} px ({}); cut: {:?}",
        layout.viewport, layout.min_font_px, layout.min_font_element, layout.clipped
    );
    assert!(
        layout.outside.is_empty(),
        "{what}: outside the {:?} viewport: {:#?}",
        layout.viewport,
        layout.outside
    );
    assert!(
        layout.min_font_px >= min_font - 0.01,
        "{what}: text of {} px ({}), under {min_font} px",
        layout.min_font_px,
        layout.min_font_element
    );
}

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
    assert_eq!(browser.text("positive"), "100%");
    // (3 + 3 + 2) / 9 × 100 = 88.9
    assert_eq!(browser.text("happy-index"), "89");
    assert_eq!(browser.text("pct-4"), "67%");
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

    let path = browser.save_screenshot("display");
    assert!(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 10_000);

    browser.open(&format!("{url}?terminal=entrance"));
    browser.wait_until("the per-terminal view", Duration::from_secs(10), |b| {
        b.text("total") == "3"
    });
    assert_eq!(browser.text("scope"), "Terminal entrance · Today");
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

#[test]
fn the_board_fits_landscape_tablet_and_portrait_screens_in_every_view() {
    let board = Board::start(&TERMINALS, "", None);
    board.wait_presses(3);
    let browser = Browser::start();
    for (view, query) in VIEWS {
        for (width, height, min_font) in SCREENS {
            browser.set_viewport(width, height);
            open_live(&browser, &format!("http://{}/{query}", board.addr), "Live");
            let what = format!("{view} at {width}×{height}");
            assert_fits(&browser, &what, min_font);
            if view == "terminals" {
                // Ranked by happy index, terminals without votes last; what does not fit is counted.
                let shown = browser.eval(
                    "return [...document.querySelectorAll('.tile .t-index')].map(e => e.textContent)",
                );
                let indexes: Vec<f64> = shown
                    .as_array()
                    .expect("tiles")
                    .iter()
                    .map(|t| t.as_str().unwrap_or("").parse().unwrap_or(-1.0))
                    .collect();
                assert!(!indexes.is_empty(), "{what}: no tiles");
                assert!(
                    indexes.windows(2).all(|w| w[0] >= w[1] || w[1] < 0.0),
                    "{what}: not ranked: {indexes:?}"
                );
                let more = browser.eval(
                    "const m = document.getElementById('more'); return m ? m.textContent : ''",
                );
                let more = more.as_str().unwrap_or("");
                if indexes.len() < TERMINALS.len() {
                    assert_eq!(
                        more,
                        format!("+{} more", TERMINALS.len() - indexes.len()),
                        "{what}"
                    );
                } else {
                    assert_eq!(more, "", "{what}");
                }
            }
            browser.save_screenshot(&format!("{view}-{width}x{height}"));

            // Two open alerts, as the SSE events would bring them: the banner must fit too.
            let banner = browser.eval(INJECT_ALERTS);
            assert_eq!(
                banner,
                serde_json::json!([
                    "All terminals: happy index 52, below 60, in the last 15 min",
                    "Terminal entrance: 62% negative in the last 15 min"
                ]),
                "{what}"
            );
            assert_fits(&browser, &format!("{what} with alerts"), min_font);
            browser.save_screenshot(&format!("{view}-{width}x{height}-alerts"));
        }
    }

    // Days of 25 and 23 hours are labelled by their local hours, not by index.
    browser.open(&format!("http://{}/", board.addr));
    let days = browser.eval(DST_DAYS);
    let hours = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let autumn = hours(&days[0]);
    let spring = hours(&days[1]);
    assert_eq!(autumn.len(), 25, "{autumn:?}");
    assert_eq!(&autumn[..5], ["00", "01", "02", "02", "03"]);
    assert_eq!(autumn[24], "23");
    assert_eq!(spring.len(), 23, "{spring:?}");
    assert_eq!(&spring[..3], ["00", "01", "03"]);
}

/// Draws the hours of Berlin's autumn DST day (25 hours, 02:00 twice) and its spring one (23,
/// no 02:00) from made-up tallies, and returns, per day, the hour each column is labelled with.
const DST_DAYS: &str = r##"
const windows = (n) => {
  const w = {very_unhappy: 0, unhappy: 0, happy: 0, very_happy: 0, total: 0, positive_pct: null, happy_index: null};
  return {today: w, today_outside_hours: w, last_60m: w, last_15m: w, filtered_today: 0,
          hours: Array.from({length: n}, () => [0, 0, 1, 1]), hours_last_week: Array.from({length: 24}, () => [1, 0, 0, 0])};
};
const autumn = [];
for (let h = 0; h < 24; h++) {
  const hh = String(h).padStart(2, "0");
  autumn.push("2026-10-25T" + hh + ":00:00" + (h < 3 ? "+02:00" : "+01:00"));
  if (h === 2) autumn.push("2026-10-25T02:00:00+01:00");
}
const spring = [];
for (let h = 0; h < 24; h++) {
  if (h === 2) continue;
  spring.push("2026-03-29T" + String(h).padStart(2, "0") + ":00:00" + (h < 2 ? "+01:00" : "+02:00"));
}
const result = [];
for (const starts of [autumn, spring]) {
  const tallies = {generated_at: new Date().toISOString(), time_zone: "Europe/Berlin", day_start: starts[0],
    hour_axes: {today: {date: starts[0].slice(0, 10), starts, open: starts.map(() => true)},
                last_week: {date: "x", starts: Array.from({length: 24}, (_, h) => "2026-01-01T" + String(h).padStart(2, "0") + ":00:00+01:00"), open: []}},
    site: windows(starts.length), terminals: {}};
  render(tallies);
  result.push([...document.querySelectorAll("#chart .labels span")].map((s) => s.dataset.hour));
}
return result;
"##;

/// Opens two alerts in the page as its `alert-opened` handler would, and returns the banner's
/// lines.
const INJECT_ALERTS: &str = r##"
const opened = new Date().toISOString();
alerts = new Map();
alerts.set(9001, {id: 9001, scope: "site", kind: "index-below", threshold: 60, window: "15m", min_votes: 4,
                  button: null, state: "open", opened_at: opened, closed_at: null, value: 52.4, votes: 9});
alerts.set(9002, {id: 9002, scope: "entrance", kind: "negative-share", threshold: 50, window: "15m", min_votes: 4,
                  button: null, state: "open", opened_at: opened, closed_at: null, value: 62, votes: 8});
renderBanner();
return [...document.querySelectorAll("#banner div")].map((d) => d.textContent);
"##;

/// A weekday's name in German, Monday first.
const WOCHENTAGE: [&str; 7] = [
    "Montag",
    "Dienstag",
    "Mittwoch",
    "Donnerstag",
    "Freitag",
    "Samstag",
    "Sonntag",
];

#[test]
fn in_german_on_a_closed_day_the_board_shows_german_labels_site_time_and_the_presses_outside_hours()
{
    let board = Board::start(&TERMINALS[..3], "language = \"de\"", Some("closed"));
    board.wait_presses(2);
    let browser = Browser::start();
    browser.set_viewport(1920, 1080);
    open_live(&browser, &format!("http://{}/", board.addr), "Live");
    let lang = browser.eval("return document.documentElement.lang");
    assert_eq!(lang, "de");
    assert_eq!(browser.text("title"), "Wie war Ihr Besuch heute?");
    assert_eq!(browser.text("scope"), "Alle Terminals · Heute");
    assert_eq!(browser.text("h-index"), "Zufriedenheits\u{ad}index");
    assert_eq!(browser.text("h-votes"), "Stimmen");
    assert_eq!(browser.text("r-60"), "Letzte 60 Min.");
    assert_eq!(browser.text("legend-ghost"), "Gleicher Tag letzte Woche");
    assert_eq!(browser.text("upload"), "Upload: nicht eingerichtet");
    assert!(browser.text("last-data").starts_with("Letzte Daten "));
    // Closed all day: no votes counted, but the note says what was pressed.
    assert_eq!(browser.text("total"), "0");
    let note = browser.text("note");
    assert!(
        note.ends_with("Tastendrücke außerhalb der Öffnungszeiten")
            || note.contains("Tastendrücke außerhalb der Öffnungszeiten · "),
        "{note:?}"
    );
    // The site's date and 24-hour time (Europe/Berlin), whatever the browser's zone.
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("zone");
    let now = jiff::Timestamp::now().to_zoned(berlin);
    let time = browser.text("time");
    let minutes = [
        now.strftime("%H:%M").to_string(),
        now.checked_sub(jiff::Span::new().minutes(1))
            .expect("a minute ago")
            .strftime("%H:%M")
            .to_string(),
    ];
    assert!(
        minutes.contains(&time),
        "time {time:?}, Berlin says {minutes:?}"
    );
    let date = browser.text("date");
    let weekday = WOCHENTAGE[usize::from(now.weekday().to_monday_zero_offset() as u8)];
    assert!(date.starts_with(weekday), "{date:?} is not {weekday}");
    assert_fits(&browser, "German site view at 1920×1080", 24.0);
    browser.save_screenshot("de-site-1920x1080");

    // German words are long: the tablet must still fit, in each view.
    browser.set_viewport(1024, 600);
    for (view, query) in [("site", ""), ("terminals", "?view=terminals")] {
        open_live(&browser, &format!("http://{}/{query}", board.addr), "Live");
        assert_fits(&browser, &format!("German {view} view at 1024×600"), 14.0);
        browser.save_screenshot(&format!("de-{view}-1024x600"));
    }
    assert!(browser
        .eval("return document.querySelector('.tile .t-sub').textContent")
        .as_str()
        .unwrap_or("")
        .starts_with("Zufriedenheits\u{ad}index"));
}

#[test]
fn the_display_page_draws_todays_presses_in_the_current_hour() {
    const WEEK_MS: i64 = 7 * 86_400_000;
    let mut site = Site::start(8);
    // A week ago (the gateway's clock set back), three presses: the ghost of this hour.
    site.set_clock_offset(-WEEK_MS);
    site.press(&[2, 3, 3], 3);
    site.set_clock_offset(0);
    let browser = Browser::start();
    browser.set_viewport(1920, 1080);
    let url = format!("http://{}/", site.addr);
    open_live(&browser, &url, "Live");
    site.press(&[1, 4, 4, 3], 4);
    browser.wait_until("the current hour to hold 4 presses", Duration::from_secs(10), |b| {
        b.eval("const c = document.querySelector('#chart .col.now'); return c ? c.dataset.count : ''")
            == "4"
    });
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("zone");
    let hour = jiff::Timestamp::now()
        .to_zoned(berlin)
        .strftime("%H")
        .to_string();
    let labelled =
        browser.eval("return document.querySelector('#chart .labels .now').dataset.hour");
    assert_eq!(
        labelled,
        hour.as_str(),
        "the current hour is labelled by its local hour"
    );
    // A segment per button pressed (1, 3, 4) in the stacked bar.
    let segments =
        browser.eval("return document.querySelectorAll('#chart .col.now .stack > div').length");
    assert_eq!(segments, 3);
    browser.wait_until(
        "last week's ghost in this hour",
        Duration::from_secs(10),
        |b| b.eval("return document.querySelectorAll('#chart .col.now .ghost').length") == 1,
    );
    // 4 today against 3 a week ago: the ghost is three quarters of the bar.
    let ratio = browser.eval(
        "const c = document.querySelector('#chart .col.now'); \
         return c.querySelector('.ghost').offsetHeight / c.querySelector('.stack').offsetHeight",
    );
    assert!(
        (ratio.as_f64().unwrap_or(0.0) - 0.75).abs() < 0.05,
        "{ratio}"
    );
    browser.save_screenshot("hours-site-1920x1080");

    // One terminal alone fills the terminals view.
    open_live(&browser, &format!("{url}?view=terminals"), "Live");
    assert_eq!(
        browser.eval("return document.querySelectorAll('.tile').length"),
        1
    );
    assert_fits(&browser, "one terminal side by side at 1920×1080", 24.0);
    browser.save_screenshot("terminals-one-1920x1080");
}

#[test]
fn the_banner_shows_an_alert_opened_by_unhappy_votes() {
    // No [[alert]] in the config: the default rule, a negative share of 50 % or more over 15 min
    // with at least 4 votes, per terminal.
    let mut site = Site::start(8);
    let browser = Browser::start();
    browser.set_viewport(1920, 1080);
    let url = format!("http://{}/", site.addr);
    open_live(&browser, &url, "Live");
    assert_eq!(
        browser.eval("return document.getElementById('banner').hidden"),
        true
    );
    let expected = "Terminal entrance: 100% negative in the last 15 min";
    site.press(&[1, 1, 1, 1], 4);
    // Live, from the alert-opened event.
    browser.wait_until("the banner", Duration::from_secs(10), |b| {
        b.text("banner") == expected
    });
    assert_fits(&browser, "site view with the alert at 1920×1080", 24.0);
    // Red, across the page, between the header and the smileys.
    assert_eq!(
        browser.style("#banner", "background-color"),
        "rgb(229, 72, 77)"
    );
    let (_, top, width, _) = browser.rect("#banner");
    let (_, header_top, _, header_height) = browser.rect("header");
    let (_, faces_top, _, _) = browser.rect("#faces");
    assert!(width > 1700.0, "{width}");
    assert!(
        top >= header_top + header_height && top < faces_top,
        "{top}"
    );
    browser.save_screenshot("alert-site-1920x1080");
    // A page loaded later fetches it from /api/v1/alerts; the terminal's tile is marked.
    open_live(&browser, &format!("{url}?view=terminals"), "Live");
    browser.wait_until("the banner after a reload", Duration::from_secs(10), |b| {
        b.text("banner") == expected
    });
    assert_eq!(
        browser.eval("return document.querySelector('.tile.alerting').dataset.terminal"),
        "entrance"
    );
    browser.save_screenshot("alert-terminals-1920x1080");
}
