//! `votegate status [--url URL]`: asks a running daemon's HTTP API for its status and today's
//! tallies and prints them for a terminal window, health reasons first. The documents are read
//! into the daemon's own types ([`StatusSnapshot`], [`TalliesSnapshot`]), so a renamed field is
//! an error here, not a silent zero. Exit 1 when the daemon is unreachable or unhealthy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::{UsageError, EXIT_FAILED};
use crate::health::SourceState;
use crate::status::StatusSnapshot;
use crate::tallies::{Counts, TalliesSnapshot};
use crate::uplink::Connection;

/// Where the daemon listens by default (config key `listen`).
pub use super::args::DEFAULT_URL;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What `status --json` prints: one object with the daemon's own documents.
#[derive(Debug, serde::Serialize)]
pub struct StatusReport<'a> {
    /// `ok` when the daemon is healthy, `fail` otherwise (as the exit code).
    pub result: &'static str,
    /// `GET /api/v1/status`: health and its reasons, journal, uplink, terminals.
    pub status: &'a StatusSnapshot,
    /// `GET /api/v1/tallies`: today's counts and scores.
    pub tallies: &'a TalliesSnapshot,
}

/// Prints the status of the daemon at `url`, for a terminal window or (`json`) as one JSON
/// object.
pub fn status(url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let host = parse_url(url)?;
    let status: StatusSnapshot = serde_json::from_str(&get(&host, "/api/v1/status")?.1)
        .context("the daemon's status does not read as this version's status document")?;
    let tallies: TalliesSnapshot = serde_json::from_str(&get(&host, "/api/v1/tallies")?.1)
        .context("the daemon's tallies do not read as this version's tallies document")?;
    if json {
        let report = StatusReport {
            result: if status.healthy { "ok" } else { "fail" },
            status: &status,
            tallies: &tallies,
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&status, &tallies));
    }
    Ok(if status.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// The version of the votegate answering on `addr` (`listen`), if one does: `check` uses it to
/// tell the running daemon from another program holding the address.
pub fn daemon_version(addr: std::net::SocketAddr) -> Option<String> {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (_, body) = get(&addr.to_string(), "/api/v1/status").ok()?;
    let status: StatusSnapshot = serde_json::from_str(&body).ok()?;
    Some(status.version)
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
    if code != 200 {
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

fn counts_line(name: &str, counts: &Counts) -> String {
    let score = |value: Option<f64>, unit: &str| match value {
        Some(value) => format!("{value:.0}{unit}"),
        None => "–".to_string(),
    };
    format!(
        "  {name:<14} {:>5} votes   1:{:<4} 2:{:<4} 3:{:<4} 4:{:<4} positive {:>5}   happy index {:>3}\n",
        counts.total(),
        counts.0[0],
        counts.0[1],
        counts.0[2],
        counts.0[3],
        score(counts.positive_pct(), " %"),
        score(counts.happy_index(), "")
    )
}

/// The text report.
pub fn render(status: &StatusSnapshot, tallies: &TalliesSnapshot) -> String {
    let mut out = String::new();
    let uptime = status.uptime_s;
    out.push_str(&format!(
        "votegate {} on {} (site {}), up {}h {:02}m, {}\n",
        status.version,
        status.gateway_id,
        status.site,
        uptime / 3600,
        uptime % 3600 / 60,
        if status.healthy {
            "healthy"
        } else {
            "UNHEALTHY:"
        }
    ));
    for reason in &status.health {
        out.push_str(&format!("  - {reason}\n"));
    }
    out.push_str(&format!(
        "clock      {}\n",
        if status.clock_synced {
            "NTP-synchronised"
        } else {
            "NOT synchronised"
        }
    ));
    let journal = &status.journal;
    let oldest = journal
        .oldest_unsent_age_s
        .map(|s| format!(", oldest {} old", ago(s).trim_end_matches(" ago")))
        .unwrap_or_default();
    out.push_str(&format!(
        "journal    {} votes waiting for upload{oldest}; {} dropped ever; {} accepted since start{}\n",
        journal.depth,
        journal.dropped,
        journal.accepted,
        if journal.available { "" } else { "; STORAGE FAILING" }
    ));
    let uplink = &status.uplink;
    let state = match uplink.state {
        Connection::NotConfigured => "not configured",
        Connection::Connecting => "connecting",
        Connection::Connected => "connected",
        Connection::Disconnected => "disconnected",
    };
    out.push_str(&format!(
        "uplink     {state}{}{}\n",
        uplink
            .last_upload
            .as_ref()
            .map(|t| format!(", last upload {t}"))
            .unwrap_or_default(),
        match (&uplink.last_error, uplink.undelivered_for_s) {
            (Some(error), Some(_)) => format!(", last error: {error}"),
            _ => String::new(),
        }
    ));
    out.push_str(&format!(
        "terminals  {} of {} online\n",
        status.terminals_online,
        status.terminals.len()
    ));
    let now_ms = status
        .now
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(0);
    for (id, terminal) in &status.terminals {
        let seen = terminal
            .last_seen_ms
            .map(|ms| {
                let ms = i64::try_from(ms).unwrap_or(i64::MAX);
                format!(
                    "last seen {}",
                    ago(u64::try_from(now_ms - ms).unwrap_or(0) / 1000)
                )
            })
            .unwrap_or_else(|| "never seen".to_string());
        let battery = terminal
            .battery_mv
            .map(|mv| format!("   battery {mv} mV"))
            .unwrap_or_default();
        let flags = Some(terminal.flags)
            .filter(|f| *f != 0)
            .map(|f| format!("   flags {f:#04x}"))
            .unwrap_or_default();
        let source = match &terminal.source {
            SourceState::Running => String::new(),
            SourceState::Retrying { error } => format!("   retrying: {error}"),
            SourceState::Failed { error } => format!("   FAILED: {error}"),
        };
        out.push_str(&format!(
            "  {:<14} {:<8} {:<9} {seen}{battery}{flags}{source}\n",
            id.as_str(),
            if terminal.online { "online" } else { "OFFLINE" },
            terminal.kind.to_string()
        ));
    }
    out.push_str(&format!(
        "today ({}, since {})\n",
        tallies.time_zone, tallies.day_start
    ));
    out.push_str(&counts_line("site", &tallies.site.today));
    for (id, windows) in &tallies.terminals {
        out.push_str(&counts_line(id.as_str(), &windows.today));
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
