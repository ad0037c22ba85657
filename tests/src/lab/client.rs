//! The client behind the router: HTTP requests to service IPs with `curl`, answered by a pod.
use std::{net::IpAddr, os::unix::process::CommandExt as _, process::Stdio, time::Duration};

use super::SERVICE_PORT;
use crate::netns::NetNs;

/// What a pod answered to one client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub pod: String,
    pub node: String,
    /// The client address and port the pod saw.
    pub peer: String,
    /// The client's source port.
    pub local_port: u16,
}

/// A download the client made.
#[derive(Clone, Debug, PartialEq)]
pub struct Download {
    pub bytes: u64,
    pub took: Duration,
}

fn url(ip: IpAddr, path: &str) -> String {
    match ip {
        IpAddr::V4(_) => format!("http://{ip}:{SERVICE_PORT}{path}"),
        IpAddr::V6(_) => format!("http://[{ip}]:{SERVICE_PORT}{path}"),
    }
}

/// `curl -sS --max-time <seconds> <args>` in the client's namespace; its stdout.
fn curl(client: &NetNs, seconds: u32, args: &[&str]) -> Result<String, String> {
    let out = client
        .command("curl")
        .args(["-sS", "--max-time", &seconds.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|err| format!("starting curl: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `GET /` from the client (namespace `client`) to `ip` from source port `port`.
pub(super) fn get(client: &NetNs, ip: IpAddr, port: u16) -> Result<Reply, String> {
    let url = url(ip, "/");
    let body = curl(client, 3, &["--local-port", &port.to_string(), &url])?;
    parse(&body, port).ok_or_else(|| format!("curl {url}: unexpected answer {body:?}"))
}

/// `GET /bytes/<bytes>` from the client to `ip`: a response far larger than the path MTU.
pub(super) fn download(client: &NetNs, ip: IpAddr, bytes: u64) -> Result<Download, String> {
    let url = url(ip, &format!("/bytes/{bytes}"));
    let written = curl(
        client,
        20,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &url,
        ],
    )?;
    let mut fields = written.split_whitespace();
    let (Some(Ok(got)), Some(Ok(seconds))) = (
        fields.next().map(str::parse::<u64>),
        fields.next().map(str::parse::<f64>),
    ) else {
        return Err(format!("curl {url}: unexpected -w output {written:?}"));
    };
    if got != bytes {
        return Err(format!("curl {url}: {got} of {bytes} bytes"));
    }
    Ok(Download {
        bytes: got,
        took: Duration::from_secs_f64(seconds),
    })
}

/// `lab-pod`'s answer: `pod=… node=… peer=…`.
fn parse(body: &str, port: u16) -> Option<Reply> {
    let field = |key: &str| {
        body.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(Reply {
        pod: field("pod")?,
        node: field("node")?,
        peer: field("peer")?,
        local_port: port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_answer_names_pod_node_and_peer() {
        let reply = parse("pod=web-a node=node-a peer=192.168.100.2:30001\n", 30001);
        assert_eq!(
            reply,
            Some(Reply {
                pod: "web-a".to_owned(),
                node: "node-a".to_owned(),
                peer: "192.168.100.2:30001".to_owned(),
                local_port: 30001,
            })
        );
        assert_eq!(parse("pod=web-a\n", 1), None);
    }
}
