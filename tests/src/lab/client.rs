//! The client behind the router: HTTP requests to service IPs with `curl`, answered by a pod.
use std::{net::IpAddr, os::unix::process::CommandExt as _, process::Stdio};

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

/// One `GET /` from the client (namespace `client`) to `ip` from source port `port`.
pub(super) fn get(client: &NetNs, ip: IpAddr, port: u16) -> Result<Reply, String> {
    let url = match ip {
        IpAddr::V4(_) => format!("http://{ip}:{SERVICE_PORT}/"),
        IpAddr::V6(_) => format!("http://[{ip}]:{SERVICE_PORT}/"),
    };
    let out = client
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            "--local-port",
            &port.to_string(),
            &url,
        ])
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|err| format!("starting curl: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url} from port {port}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&String::from_utf8_lossy(&out.stdout), port).ok_or_else(|| {
        format!(
            "curl {url}: unexpected answer {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
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
