//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, which
//! scripts/test installs). Only what the display tests need: open a page, size the viewport, run
//! a script, measure the layout, take a screenshot.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http;
use super::RunningChild;

/// A browser session.
pub struct Browser {
    driver: Option<RunningChild>,
    addr: SocketAddr,
    session: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1920×1080 window.
    pub fn start() -> Browser {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver (scripts/test does: apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = RunningChild::new(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("chromedriver starts"),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen:\n{}",
                driver.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = std::env::temp_dir().join(format!("votegate-chromium-{port}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1920,1080",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let response = http::request_with_body(
            addr,
            "POST",
            "/session",
            &[],
            Some(&capabilities.to_string()),
        );
        let session = response.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "no WebDriver session: {}\n{}",
                    response.body,
                    driver.stderr_so_far()
                )
            })
            .to_string();
        Browser {
            driver: Some(driver),
            addr,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let response = http::request_with_body(
            self.addr,
            method,
            &path,
            &[],
            body.map(|b| b.to_string()).as_deref(),
        );
        let value = response.json();
        assert!(
            value["value"]["error"].is_null(),
            "WebDriver {method} {path}: {}",
            response.body
        );
        value["value"].clone()
    }

    /// Opens a URL.
    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs a script in the page and returns its result.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs a script with arguments (`arguments[0]`, …) and returns its result.
    pub fn eval_with(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The computed value of a CSS `property` of the first element matching `selector`.
    pub fn style(&self, selector: &str, property: &str) -> String {
        self.eval_with(
            "const e = document.querySelector(arguments[0]); \
             return e ? getComputedStyle(e).getPropertyValue(arguments[1]) : null",
            json!([selector, property]),
        )
        .as_str()
        .unwrap_or_else(|| panic!("no element {selector}"))
        .to_string()
    }

    /// The bounding box (left, top, width, height in CSS px) of the first element matching
    /// `selector`.
    pub fn rect(&self, selector: &str) -> (f64, f64, f64, f64) {
        let r = self.eval_with(
            "const e = document.querySelector(arguments[0]); \
             if (!e) return null; const r = e.getBoundingClientRect(); \
             return [r.left, r.top, r.width, r.height]",
            json!([selector]),
        );
        let n = |i: usize| {
            r[i].as_f64()
                .unwrap_or_else(|| panic!("no element {selector}"))
        };
        (n(0), n(1), n(2), n(3))
    }

    /// Sizes the window so that the page's viewport (`innerWidth` × `innerHeight`) is exactly
    /// `width` × `height` CSS pixels, whatever the browser adds around it. Chromium applies a
    /// new window size asynchronously: the viewport is read until it holds still.
    pub fn set_viewport(&self, width: u32, height: u32) {
        let want = (i64::from(width), i64::from(height));
        let (mut outer_w, mut outer_h) = want;
        let mut seen = (0, 0);
        for _ in 0..6 {
            self.call(
                "POST",
                "/window/rect",
                Some(json!({"width": outer_w, "height": outer_h})),
            );
            let mut previous = (-1, -1);
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(50));
                let inner = self.eval("return [innerWidth, innerHeight]");
                seen = (
                    inner[0].as_i64().unwrap_or(0),
                    inner[1].as_i64().unwrap_or(0),
                );
                if seen == previous {
                    break;
                }
                previous = seen;
            }
            if seen == want {
                return;
            }
            outer_w += want.0 - seen.0;
            outer_h += want.1 - seen.1;
        }
        panic!("cannot size the viewport to {width}×{height}: it stays {seen:?}");
    }

    /// What the layout looks like now: every visible element that reaches outside the viewport,
    /// whether the document scrolls, the smallest computed font size of any visible text and
    /// the element that has it, and the elements whose text is cut (ellipsis).
    pub fn layout(&self) -> Layout {
        let value = self.eval(LAYOUT_SCRIPT);
        Layout {
            viewport: (
                value["width"].as_f64().unwrap_or(0.0),
                value["height"].as_f64().unwrap_or(0.0),
            ),
            outside: strings(&value["outside"]),
            min_font_px: value["minFont"].as_f64().unwrap_or(0.0),
            min_font_element: value["minFontElement"].as_str().unwrap_or("").to_string(),
            clipped: strings(&value["clipped"]),
        }
    }

    /// A PNG screenshot of the window, saved as `target/screenshots/{name}.png`.
    pub fn save_screenshot(&self, name: &str) -> std::path::PathBuf {
        let png = self.screenshot();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let dir = super::repo_root().join("target").join("screenshots");
        std::fs::create_dir_all(&dir).expect("target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("save the screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The text of the element with this id.
    pub fn text(&self, id: &str) -> String {
        self.eval(&format!(
            "return document.getElementById({id:?}).textContent"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until `condition` holds on the element texts, or panics with what was seen.
    pub fn wait_until(&self, what: &str, limit: Duration, condition: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + limit;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page says total={:?} live={:?}",
                self.text("total"),
                self.text("live")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG screenshot of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        base64_decode(encoded.as_str().expect("base64 PNG"))
    }
}

/// The layout of a page as [`Browser::layout`] measured it.
#[derive(Debug)]
pub struct Layout {
    /// `innerWidth` × `innerHeight`.
    pub viewport: (f64, f64),
    /// Visible elements (and the document itself) reaching outside the viewport, cut off by an
    /// ancestor that hides its overflow, or with text wider than their box, described.
    pub outside: Vec<String>,
    /// The smallest computed font size of an element with visible text of its own.
    pub min_font_px: f64,
    /// That element, described.
    pub min_font_element: String,
    /// Elements whose text is cut off by `overflow` (they fit, but say less).
    pub clipped: Vec<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Measures the page: see [`Layout`]. An element is visible when it has a box (not
/// `display: none` anywhere up its tree), is not `visibility: hidden` and not transparent.
const LAYOUT_SCRIPT: &str = r##"
const W = innerWidth, H = innerHeight, slack = 0.5;
const describe = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
  + (typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\s+/).join(".") : "")
  + " " + JSON.stringify((e.textContent || "").trim().slice(0, 40));
const outside = [], clipped = [];
const root = document.documentElement;
if (root.scrollWidth > W || root.scrollHeight > H || document.body.scrollWidth > W || document.body.scrollHeight > H) {
  outside.push("the document scrolls: " + Math.max(root.scrollWidth, document.body.scrollWidth) + "×"
    + Math.max(root.scrollHeight, document.body.scrollHeight) + " in " + W + "×" + H);
}
let minFont = Infinity, minFontElement = "";
for (const e of document.body.querySelectorAll("*")) {
  if (e.tagName === "SCRIPT" || e.tagName === "STYLE") continue;
  const style = getComputedStyle(e);
  const r = e.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  if (style.visibility === "hidden" || Number(style.opacity) === 0) continue;
  if (r.left < -slack || r.top < -slack || r.right > W + slack || r.bottom > H + slack) {
    outside.push(describe(e) + " at " + [r.left, r.top, r.right, r.bottom].map(Math.round).join(","));
  }
  // Inside the viewport but cut off by a box that hides its overflow: just as unreadable.
  for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
    if (getComputedStyle(a).overflow === "visible") continue;
    const b = a.getBoundingClientRect();
    if (r.left < b.left - slack || r.top < b.top - slack || r.right > b.right + slack || r.bottom > b.bottom + slack) {
      outside.push(describe(e) + " cut off by " + describe(a));
    }
    break;
  }
  const text = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim() !== "");
  if (text) {
    const size = parseFloat(style.fontSize);
    if (size < minFont) { minFont = size; minFontElement = describe(e); }
    if (style.overflow !== "visible" && (e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)) {
      clipped.push(describe(e));
    }
    // Text wider than its box runs into its neighbours (an inline box is as wide as its text).
    if (style.overflow === "visible" && style.display !== "inline" && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
      outside.push(describe(e) + " is " + e.scrollWidth + " px wide in a box of " + e.clientWidth);
    }
  }
}
return {width: W, height: H, outside, minFont: minFont === Infinity ? 0 : minFont, minFontElement, clipped};
"##;

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http::request(self.addr, "DELETE", &path, &[]);
        if let Some(driver) = self.driver.take() {
            driver.kill();
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|chunk| {
            let mut n: u32 = 0;
            for (i, s) in chunk.iter().enumerate() {
                n |= u32::from(*s) << (18 - 6 * i);
            }
            let bytes = n.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
