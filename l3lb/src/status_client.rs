//! `l3lb status`: reads the running daemon's `/status` and renders it for a terminal.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::status::NodeReport;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the l3lb daemon at {addr} (is it running with --metrics-addr {addr}?): {source}"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the l3lb daemon at {addr} answered: {status}")]
    Status { addr: SocketAddr, status: String },
}

/// `GET path` on the daemon's HTTP endpoint: the status code and the body. HTTP/1.0 (the server
/// closes the connection after the body) keeps this a dozen lines without a client library.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let connect = |source| Error::Connect { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(connect)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(connect)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::Status {
            addr,
            status: format!("unreadable status line {status_line:?}"),
        })?;
    Ok((code, body.to_owned()))
}

/// The JSON body of `GET /status`.
pub fn fetch_report(addr: SocketAddr) -> Result<String, Error> {
    match get(addr, "/status")? {
        (200, body) => Ok(body),
        (code, body) => Err(Error::Status {
            addr,
            status: format!("{code}: {}", body.trim()),
        }),
    }
}

/// A table: one row per Service and IP, announced ones marked.
pub fn render(report: &NodeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} · interface {} · prefixes {} · {}",
        report.node,
        report.interface,
        report.prefixes.join(", "),
        if report.synced {
            "synced"
        } else {
            "NOT SYNCED (nothing is withdrawn until it is)"
        }
    );
    if let Some(why) = &report.maintenance {
        let _ = writeln!(out, "IN MAINTENANCE, nothing announced: {why}");
    }
    let _ = writeln!(
        out,
        "{} address(es) announced, {} Service(s) seen\n",
        report.announced.len(),
        report.services_seen
    );
    // WEIGHT: the address's metric with `--weights endpoints` (what routers weigh this node
    // by); `-` without weights or where the address is not announced.
    let _ = writeln!(
        out,
        "{:<32} {:<24} {:<6} {:<6} {:<22} WHY",
        "SERVICE", "IP", "HERE", "WEIGHT", "LOCAL READY"
    );
    for service in &report.services {
        let local = if service.local_ready.is_empty() {
            "-".to_owned()
        } else {
            service.local_ready.join(",")
        };
        for ip in &service.ips {
            let weight = report
                .weights
                .get(ip)
                .filter(|_| service.announced)
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            let _ = writeln!(
                out,
                "{:<32} {:<24} {:<6} {:<6} {:<22} {}",
                service.service,
                ip.to_string(),
                if service.announced { "yes" } else { "no" },
                weight,
                local,
                service.reason
            );
        }
        for problem in &service.problems {
            let _ = writeln!(
                out,
                "{:<32} {:<24} {:<6} {:<6} {:<22} {problem}",
                service.service, "!", "no", "-", "-"
            );
        }
    }
    if !report.pools.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:<40} ALLOCATIONS / PROBLEMS",
            "POOL", "USAGE"
        );
        for pool in &report.pools {
            let _ = writeln!(
                out,
                "{:<24} {:<40} {}",
                pool.pool,
                pool.usage,
                pool.allocations.join("; ")
            );
            for problem in &pool.problems {
                let _ = writeln!(out, "{:<24} {:<40} ! {problem}", pool.pool, "");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ServiceReport;

    #[test]
    fn renders_each_ip_and_problem() {
        let report = NodeReport {
            node: "node-a".into(),
            interface: "lo".into(),
            prefixes: vec!["10.0.100.0/24".into()],
            synced: true,
            services_seen: 3,
            announced: vec!["10.0.100.7".parse().unwrap()],
            weights: [("10.0.100.7".parse().unwrap(), 3)].into(),
            maintenance: None,
            services: vec![ServiceReport {
                service: "default/web".into(),
                ips: vec!["10.0.100.7".parse().unwrap()],
                announced: true,
                reason: "1 ready endpoint(s) on this node".into(),
                local_ready: vec!["10.244.1.5".into()],
                problems: vec!["192.0.2.1 is outside the managed prefixes".into()],
            }],
            pools: vec![crate::status::PoolReport {
                pool: "small".into(),
                usage: "IPv4 1 used, 1 free of 2".into(),
                problems: vec!["blocks overlap pool other".into()],
                allocations: vec!["default/api 10.0.100.33".into()],
            }],
        };
        let table = render(&report);
        assert!(table.contains("synced"), "{table}");
        let row = table
            .lines()
            .find(|l| l.contains("10.0.100.7"))
            .expect("a row for the IP");
        assert!(
            row.contains("default/web") && row.contains("yes") && row.contains("10.244.1.5"),
            "{row}"
        );
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[3], "3", "the weight column: {row}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("outside the managed prefixes")),
            "{table}"
        );
        assert!(
            table.lines().any(|l| l.starts_with("small")
                && l.contains("1 free of 2")
                && l.contains("default/api 10.0.100.33")),
            "{table}"
        );
        assert!(table.contains("! blocks overlap pool other"), "{table}");
    }
}
