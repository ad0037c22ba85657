//! The UDP lane: ready-made frames written to the client's `eth0` through a packet socket, and
//! the node's conntrack entries they leave.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    BATCH, CLIENT, PAYLOAD, UDP_FLOWS, set_int,
    topology::{Topology, mac_of},
};
use crate::{bench::sys, netns::NetNs};

pub(super) struct UdpResult {
    pub(super) sent: u64,
    pub(super) elapsed: Duration,
}

/// Sends UDP datagrams to `service:80` from `UDP_FLOWS` source ports until `duration` or
/// `max_packets`: complete Ethernet frames written to the client's `eth0` through an
/// `AF_PACKET` socket (qdisc bypassed, `sendmmsg` in batches), so the client spends as little
/// as it can per packet and the node's share of the cost shows.
pub(super) fn udp_blast(
    topo: &Topology,
    target: SocketAddrV4,
    duration: Duration,
    max_packets: u64,
) -> Result<UdpResult> {
    let (node_mac, client_mac) = (mac_of(&topo.node, "uplink")?, mac_of(&topo.client, "eth0")?);
    let client_ip: Ipv4Addr = CLIENT.parse()?;
    let mut frames: Vec<Vec<u8>> = (0..UDP_FLOWS)
        .map(|i| {
            let mut frame = crate::frames::ipv4(
                17,
                client_ip,
                *target.ip(),
                41000 + i,
                target.port(),
                &PAYLOAD,
            );
            frame[..6].copy_from_slice(&node_mac);
            frame[6..12].copy_from_slice(&client_mac);
            frame
        })
        .collect();
    sys::in_netns(topo.client.name(), move || -> Result<UdpResult> {
        // SAFETY: plain socket(2); protocol 0: the socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, owned from here on.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        // SAFETY: zeroed sockaddr_ll is valid; family and interface set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid socket and address of the size given.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("binding to eth0: {}", std::io::Error::last_os_error());
        }
        set_int(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1,
        );
        let mut iovecs: Vec<libc::iovec> = (0..BATCH)
            .map(|i| {
                let count = frames.len();
                let frame = &mut frames[i % count];
                libc::iovec {
                    iov_base: frame.as_mut_ptr() as *mut libc::c_void,
                    iov_len: frame.len(),
                }
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid (bound socket: no name; no control).
        let mut messages: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
            message.msg_hdr.msg_iov = iov;
            message.msg_hdr.msg_iovlen = 1;
        }
        let started = Instant::now();
        let mut sent = 0u64;
        let mut errors = 0u64;
        while sent < max_packets && started.elapsed() < duration {
            // SAFETY: BATCH headers, each pointing at a live frame.
            let n = unsafe {
                libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0)
            };
            if n > 0 {
                sent += n as u64;
            } else {
                errors += 1;
                if errors > 1000 && sent == 0 {
                    bail!("sending on eth0: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(UdpResult {
            sent,
            elapsed: started.elapsed(),
        })
    })?
}

/// Entries in `node`'s conntrack table for UDP flows from the client; `None` when `conntrack`
/// cannot be run.
pub(super) fn conntrack_udp_entries(node: &NetNs) -> Option<u64> {
    let out = node
        .command("conntrack")
        .args(["-L", "-p", "udp", "--orig-src", CLIENT])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count() as u64,
    )
}
