//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, which
//! scripts/test installs). Only what the display test needs: open a page, run a script, take a
//! screenshot.

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
