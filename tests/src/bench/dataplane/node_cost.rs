//! The node-cost lane: the UDP sender into a drop program at TC ingress of the pods' `eth0`, or,
//! for its reference, of the node's uplink.
use std::{net::SocketAddrV4, path::Path, sync::atomic::Ordering, time::Duration};

use anyhow::{Result, bail};

use super::{
    install::timed,
    topology::{Topology, pods_rx, uplink_rx},
    udp::udp_blast,
};
use crate::netns::NetNs;

/// The drop program at TC ingress of `interface` in `ns` (a clsact qdisc and a `cls_bpf`
/// filter in direct-action mode), removed with the qdisc when dropped.
struct TcDrop<'a> {
    ns: &'a NetNs,
    interface: &'static str,
}

impl<'a> TcDrop<'a> {
    fn attach(ns: &'a NetNs, interface: &'static str, pinned: &Path) -> Result<TcDrop<'a>> {
        timed(
            ns.command("tc")
                .args(["qdisc", "add", "dev", interface, "clsact"]),
        )?;
        let guard = TcDrop { ns, interface };
        timed(
            ns.command("tc")
                .args([
                    "filter",
                    "add",
                    "dev",
                    interface,
                    "ingress",
                    "bpf",
                    "object-pinned",
                ])
                .arg(pinned)
                .arg("direct-action"),
        )?;
        Ok(guard)
    }
}

impl Drop for TcDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command("tc")
            .args(["qdisc", "del", "dev", self.interface, "clsact"])
            .output();
    }
}

/// One UDP measurement with the drop program where `drop_at` says (the pods' `eth0`, or the
/// node's uplink): (sender's packets per second, share of the sent packets counted on the
/// interfaces in front of the drop program). Fails when a datagram still reached a socket.
pub(super) fn udp_into_drop(
    topo: &Topology,
    target: SocketAddrV4,
    duration: Duration,
    pinned: &Path,
    at_uplink: bool,
) -> Result<(f64, f64)> {
    let _drops: Vec<TcDrop<'_>> = if at_uplink {
        vec![TcDrop::attach(&topo.node, "uplink", pinned)?]
    } else {
        topo.pods
            .iter()
            .map(|pod| TcDrop::attach(pod, "eth0", pinned))
            .collect::<Result<_>>()?
    };
    let counted = |topo: &Topology| {
        if at_uplink {
            uplink_rx(topo)
        } else {
            pods_rx(topo)
        }
    };
    let before = counted(topo)?;
    let read_before = topo.servers.received.load(Ordering::Relaxed);
    let udp = udp_blast(topo, target, duration, 50_000_000)?;
    crate::bench::sleep(Duration::from_millis(100))?;
    let reached = counted(topo)? - before;
    let read = topo.servers.received.load(Ordering::Relaxed) - read_before;
    if read > 0 {
        bail!("{read} datagrams got past the drop program to the pods' sockets");
    }
    let seconds = udp.elapsed.as_secs_f64();
    Ok((
        udp.sent as f64 / seconds,
        reached as f64 / (udp.sent as f64).max(1.0),
    ))
}
