//! `votegate status [--url URL]`: asks a running daemon's HTTP API for its status and today's
//! tallies and prints them for a terminal window. Exit 1 when the daemon is unreachable or
//! reports itself unhealthy (`/healthz`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use super::{UsageError, EXIT_FAILED};

/// Where the daemon listens by default (config key `listen`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Prints the status of the daemon at `url`.
pub fn status(url: &str) -> anyhow::Result<ExitCode> {
    let host = parse_url(url)?;
    let status: Value =
        serde_json::from_str(&get(&host, "/api/v1/status")?.1).context("the status is not JSON")?;
    let tallies: Value = serde_json::from_str(&get(&host, "/api/v1/tallies")?.1)
        .context("the tallies are not JSON")?;
    let (health_code, health) = get(&host, "/healthz")?;
    print!("{}", render(&status, &tallies, health.trim()));
    Ok(if health_code == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `host:port` of an `http://host:port` URL.
fn parse_url(url: &str) -> Result<String, UsageError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        UsageError(format!(
            "--url {url}: only http://host:port URLs are supported"
        ))
    })?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(UsageError(format!(
            "--url {url}: expected http://host:port"
        )));
    }
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
}

/// A blocking `GET`; returns the status code and the body.
fn get(host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| {
        format!("cannot reach votegate at http://{host} (is it running? `systemctl status votegate`; is `listen` this address?)")
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("http://{host}{path} did not answer HTTP: {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    if code != 200 && path != "/healthz" {
        bail!("http://{host}{path} answered {code}");
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s ago"),
        s if s < 5400 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

fn counts_line(name: &str, counts: &Value) -> String {
    let n = |key: &str| counts[key].as_u64().unwrap_or(0);
    let score = |key: &str, unit: &str| match counts[key].as_f64() {
        Some(value) => format!("{value:.0}{unit}"),
        None => "–".to_string(),
    };
    format!(
        "  {name:<14} {:>5} votes   1:{:<4} 2:{:<4} 3:{:<4} 4:{:<4} positive {:>5}   happy index {:>3}\n",
        n("total"),
        n("very_unhappy"),
        n("unhappy"),
        n("happy"),
        n("very_happy"),
        score("positive_pct", " %"),
        score("happy_index", "")
    )
}

/// The text report.
pub fn render(status: &Value, tallies: &Value, health: &str) -> String {
    let mut out = String::new();
    let uptime = status["uptime_s"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "votegate {} on {} (site {}), up {}h {:02}m, {}\n",
        status["version"].as_str().unwrap_or("?"),
        status["gateway_id"].as_str().unwrap_or("?"),
        status["site"].as_str().unwrap_or("?"),
        uptime / 3600,
        uptime % 3600 / 60,
        if health == "ok" {
            "healthy".to_string()
        } else {
            format!("UNHEALTHY: {health}")
        }
    ));
    let synced = status["clock_synced"].as_bool().unwrap_or(false);
    out.push_str(&format!(
        "clock      {}\n",
        if synced {
            "NTP-synchronised"
        } else {
            "NOT synchronised"
        }
    ));
    let journal = &status["journal"];
    let oldest = journal["oldest_unsent_age_s"]
        .as_u64()
        .map(|s| {
            format!(
                ", oldest {}",
                ago(s).trim_end_matches(" ago").to_string() + " old"
            )
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "journal    {} votes waiting for upload{oldest}; {} dropped ever; {} accepted since start\n",
        journal["depth"].as_u64().unwrap_or(0),
        journal["dropped"].as_u64().unwrap_or(0),
        journal["accepted"].as_u64().unwrap_or(0)
    ));
    let uplink = &status["uplink"];
    out.push_str(&format!(
        "uplink     {}{}\n",
        uplink["state"].as_str().unwrap_or("?"),
        uplink["last_upload"]
            .as_str()
            .map(|t| format!(", last upload {t}"))
            .unwrap_or_default()
    ));
    let terminals = status["terminals"].as_object().cloned().unwrap_or_default();
    out.push_str(&format!(
        "terminals  {} of {} online\n",
        status["terminals_online"].as_u64().unwrap_or(0),
        terminals.len()
    ));
    let now_ms = status["now"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .unwrap_or(0);
    for (id, terminal) in &terminals {
        let seen = terminal["last_seen_ms"]
            .as_i64()
            .map(|ms| {
                format!(
                    "last seen {}",
                    ago(u64::try_from(now_ms - ms).unwrap_or(0) / 1000)
                )
            })
            .unwrap_or_else(|| "never seen".to_string());
        let battery = terminal["battery_mv"]
            .as_u64()
            .map(|mv| format!("   battery {mv} mV"))
            .unwrap_or_default();
        let flags = terminal["flags"]
            .as_u64()
            .filter(|f| *f != 0)
            .map(|f| format!("   flags {f:#04x}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {id:<14} {:<8} {:<7} {seen}{battery}{flags}\n",
            if terminal["online"].as_bool().unwrap_or(false) {
                "online"
            } else {
                "OFFLINE"
            },
            terminal["kind"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "today ({}, since {})\n",
        tallies["time_zone"].as_str().unwrap_or("?"),
        tallies["day_start"].as_str().unwrap_or("?")
    ));
    out.push_str(&counts_line("site", &tallies["site"]["today"]));
    if let Some(terminals) = tallies["terminals"].as_object() {
        for (id, windows) in terminals {
            out.push_str(&counts_line(id, &windows["today"]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_host_port() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080").ok(),
            Some("127.0.0.1:8080".into())
        );
        assert_eq!(
            parse_url("http://gateway.local/").ok(),
            Some("gateway.local:80".into())
        );
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://x:1/api").is_err());
    }
}
