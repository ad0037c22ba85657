//! The oracle's judgement of a changed frame: exactly the fields a translation may change
//! (and the TTL and MACs its verdict allows) differ from the input, and every checksum verifies
//! after exactly when it did before.
use std::net::IpAddr;

use l3lb::fastpath::plan::Delivery;
use l3lb_common::PROTO_UDP;

use super::{Back, Forward, Oracle, Outcome, Program};
use crate::{
    frames::{ETH_LEN, ones_complement_sum},
    fuzz::{
        parse::{self, Ip, Quote, be16, l4_check_at},
        world::{self, Service},
    },
    programs::{FibNode, TC_ACT_OK, TC_ACT_PIPE, TC_ACT_REDIRECT, XDP_PASS},
};

fn addr_at(family: u8, l3: usize, destination: bool) -> usize {
    match (family, destination) {
        (4, false) => l3 + 12,
        (4, true) => l3 + 16,
        (_, false) => l3 + 8,
        (_, true) => l3 + 24,
    }
}

fn write_addr(frame: &mut [u8], at: usize, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => frame[at..at + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => frame[at..at + 16].copy_from_slice(&v6.octets()),
    }
}

fn read_addr(frame: &[u8], at: usize, family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&frame[at..at + 4]).expect("4 bytes"))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).expect("16 bytes"))
    }
}

/// `expected` and `out` equal but for the 2-byte checksum fields at `masks`.
fn compare(mut expected: Vec<u8>, out: &[u8], masks: &[usize]) -> Result<(), String> {
    let mut out = out.to_vec();
    if out.len() != expected.len() {
        return Err(format!("length {} became {}", expected.len(), out.len()));
    }
    for &at in masks {
        for frame in [&mut expected, &mut out] {
            if at + 2 <= frame.len() {
                frame[at..at + 2].fill(0);
            }
        }
    }
    match expected.iter().zip(&out).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "byte {at} is {:#04x}, expected {:#04x} (only the rewritten fields, TTL, MACs and \
             checksums may change)",
            out[at], expected[at]
        )),
    }
}

fn same(what: &str, before: Option<bool>, after: Option<bool>) -> Result<(), String> {
    match (before, after) {
        (Some(b), Some(a)) if a != b => Err(format!(
            "{what} checksum {} by the rewrite",
            if b { "broken" } else { "repaired" }
        )),
        _ => Ok(()),
    }
}

/// Whether an ICMP(v6) message's checksum verifies (`None` when the IP length says it reaches
/// beyond the frame).
fn icmp_checksum_ok(frame: &[u8], ip: &Ip, icmp: usize) -> Option<bool> {
    if ip.end > frame.len() || ip.end < icmp + 8 {
        return None;
    }
    let message = &frame[icmp..ip.end];
    let initial = if ip.family == 4 {
        0
    } else {
        parse::pseudo_sum(ip.src, ip.dst, parse::PROTO_ICMPV6, message.len())
    };
    Some(ones_complement_sum(initial, message) == 0xffff)
}

impl Oracle {
    pub(super) fn check_forward(
        &mut self,
        program: Program,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<Outcome, String> {
        let tc = program == Program::TcIngress;
        match self.forward(input) {
            Forward::Service(service, ip) => {
                let target = steered_to(service, &ip, out, ip.l4 + 2)?;
                let mut expected = input.to_vec();
                write_addr(&mut expected, addr_at(ip.family, ETH_LEN, true), target.0);
                expected[ip.l4 + 2..ip.l4 + 4].copy_from_slice(&target.1.to_be_bytes());
                let delivery = delivery_of(service, target.0);
                ttl_rule(program, verdict, input, &ip, &mut expected, delivery)?;
                compare(expected, out, &[ETH_LEN + 10, l4_check_at(ip.l4, ip.proto)])?;
                checksums_kept(input, out, &ip)?;
                Ok(Outcome::Steered)
            }
            Forward::FirstFragment(service, ip, well_formed) if tc => {
                if !well_formed {
                    return Err(
                        "a malformed first fragment of a service datagram was rewritten".into(),
                    );
                }
                let target = steered_to(service, &ip, out, ip.l4 + 2)?;
                let mut expected = input.to_vec();
                write_addr(&mut expected, addr_at(ip.family, ETH_LEN, true), target.0);
                expected[ip.l4 + 2..ip.l4 + 4].copy_from_slice(&target.1.to_be_bytes());
                ttl_rule(
                    program,
                    verdict,
                    input,
                    &ip,
                    &mut expected,
                    delivery_of(service, target.0),
                )?;
                compare(expected, out, &checksum_fields(&ip, true))?;
                header_kept(input, out)?;
                self.datagrams
                    .insert((ip.src, ip.dst, ip.proto, ip.id), target.0);
                Ok(Outcome::FragmentSteered)
            }
            Forward::LaterFragment(ip) if tc => {
                if !ip.header_ok || ip.end > input.len() || ip.end < ip.l4 {
                    return Err("a malformed later fragment was rewritten".into());
                }
                let Some(&backend) = self.datagrams.get(&(ip.src, ip.dst, ip.proto, ip.id)) else {
                    return Err("a later fragment of no steered datagram was rewritten".into());
                };
                let mut expected = input.to_vec();
                write_addr(&mut expected, addr_at(ip.family, ETH_LEN, true), backend);
                let (service, _) = self
                    .world
                    .services
                    .iter()
                    .find_map(|s| s.targets.iter().find(|t| t.ip == backend).map(|t| (s, t)))
                    .expect("a recorded backend is installed");
                ttl_rule(
                    program,
                    verdict,
                    input,
                    &ip,
                    &mut expected,
                    delivery_of(service, backend),
                )?;
                compare(expected, out, &checksum_fields(&ip, false))?;
                header_kept(input, out)?;
                Ok(Outcome::FragmentSteered)
            }
            Forward::IcmpToPod(service, ip, quote) if tc => {
                if !ip.header_ok || ip.end > input.len() || ip.end < ip.l4 {
                    return Err("a malformed ICMP error was translated into a pod".into());
                }
                let inner = quote.inner;
                let target = steered_to(service, &ip, out, inner.l4)?;
                let inner_src = addr_at(inner.family, quote.icmp + 8, false);
                if read_addr(out, inner_src, inner.family) != target.0 {
                    return Err("the quoted source is not the pod the error went to".into());
                }
                let mut expected = input.to_vec();
                write_addr(&mut expected, addr_at(ip.family, ETH_LEN, true), target.0);
                write_addr(&mut expected, inner_src, target.0);
                expected[inner.l4..inner.l4 + 2].copy_from_slice(&target.1.to_be_bytes());
                ttl_rule(
                    program,
                    verdict,
                    input,
                    &ip,
                    &mut expected,
                    delivery_of(service, target.0),
                )?;
                self.icmp_kept(input, out, expected, &ip, &quote)?;
                Ok(Outcome::IcmpToPod)
            }
            Forward::Malformed(_) => Err("a malformed packet to a service was rewritten".into()),
            _ => Err("a frame that is no service packet was changed".into()),
        }
    }

    pub(super) fn check_back(
        &mut self,
        program: Program,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<Outcome, String> {
        let (vip_ip, ip, outcome) = match self.back(input) {
            Back::Reply(service, ip) => (service.vip.ip, ip, Outcome::Translated),
            Back::IcmpFromPod(service, ip, _) => (service.vip.ip, ip, Outcome::IcmpFromPod),
            Back::ReplyFragment(service, ip) => (service.vip.ip, ip, Outcome::Translated),
            Back::LaterReplyFragment(vip_ip, ip) => (vip_ip, ip, Outcome::Translated),
            Back::Other => return Err("a frame that is no reply of a pod was changed".into()),
        };
        let mut expected = input.to_vec();
        write_addr(&mut expected, addr_at(ip.family, ETH_LEN, false), vip_ip);
        if program == Program::TcEgress {
            if verdict != TC_ACT_PIPE {
                return Err(format!("TC egress verdict {verdict}"));
            }
        } else {
            let routed = world::route_of(ip.dst);
            let ttl = input[ip.ttl_at];
            // The FIB checks a resolved route's MTU against the frame (`is_skb_forwardable`:
            // MTU + Ethernet header + a VLAN tag); an unresolved one goes to the neighbour
            // code unchecked. Too big: the kernel's routing answers "fragmentation needed".
            let fits = routed == Some(false) || input.len() <= FibNode::UPLINK_MTU + ETH_LEN + 4;
            let redirect = routed.is_some() && ttl > 1 && fits;
            match verdict {
                TC_ACT_REDIRECT if redirect => {
                    expected[ip.ttl_at] = ttl - 1;
                    if routed == Some(true) {
                        expected[..6].copy_from_slice(&self.macs.0);
                        expected[6..12].copy_from_slice(&self.macs.1);
                    }
                }
                TC_ACT_OK if !redirect => {}
                _ => {
                    return Err(format!(
                        "verdict {verdict} for a translation to {} (routed: {routed:?}, TTL {ttl})",
                        ip.dst
                    ));
                }
            }
        }
        match self.back(input) {
            Back::Reply(service, _) => {
                expected[ip.l4..ip.l4 + 2].copy_from_slice(&service.vip.port.to_be_bytes());
                compare(expected, out, &[ETH_LEN + 10, l4_check_at(ip.l4, ip.proto)])?;
                checksums_kept(input, out, &ip)?;
            }
            Back::ReplyFragment(service, _) => {
                // The TCP/UDP checksum covers the whole datagram: not verifiable here.
                expected[ip.l4..ip.l4 + 2].copy_from_slice(&service.vip.port.to_be_bytes());
                compare(expected, out, &checksum_fields(&ip, true))?;
                header_kept(input, out)?;
                self.reply_datagrams
                    .insert((ip.src, ip.dst, ip.proto, ip.id), vip_ip);
            }
            Back::LaterReplyFragment(..) => {
                compare(expected, out, &checksum_fields(&ip, false))?;
                header_kept(input, out)?;
            }
            Back::IcmpFromPod(service, _, quote) => {
                let vip = service.vip;
                let inner = quote.inner;
                write_addr(
                    &mut expected,
                    addr_at(inner.family, quote.icmp + 8, true),
                    vip.ip,
                );
                expected[inner.l4 + 2..inner.l4 + 4].copy_from_slice(&vip.port.to_be_bytes());
                self.icmp_kept(input, out, expected, &ip, &quote)?;
            }
            Back::Other => unreachable!("classified above"),
        }
        Ok(outcome)
    }

    /// An ICMP error's bytes as expected but for the checksums, and each checksum (outer IPv4
    /// header, ICMP, quoted IPv4 header, quoted TCP/UDP where the message holds it) verifying
    /// after exactly when it did before.
    fn icmp_kept(
        &self,
        input: &[u8],
        out: &[u8],
        expected: Vec<u8>,
        ip: &Ip,
        quote: &Quote,
    ) -> Result<(), String> {
        let inner = quote.inner;
        let inner_l3 = quote.icmp + 8;
        let inner_check = l4_check_at(inner.l4, inner.proto);
        compare(
            expected,
            out,
            &[ETH_LEN + 10, quote.icmp + 2, inner_l3 + 10, inner_check],
        )?;
        header_kept(input, out)?;
        let out_ip = parse::ip(out).ok_or("the rewrite broke the IP header")?;
        same(
            "ICMP",
            icmp_checksum_ok(input, ip, quote.icmp),
            icmp_checksum_ok(out, &out_ip, quote.icmp),
        )?;
        if inner.family == 4 {
            let before = parse::ip_at(input, inner_l3, 4).map(|i| i.header_ok);
            let after = parse::ip_at(out, inner_l3, 4).map(|i| i.header_ok);
            same("quoted IPv4 header", before, after)?;
        }
        if inner_check + 2 <= ip.end.min(input.len()) {
            let zero = inner.proto == PROTO_UDP && be16(input, inner_check) == 0;
            if zero && inner.family == 4 {
                if be16(out, inner_check) != 0 {
                    return Err("a quoted IPv4 UDP checksum of 0 (none) was changed".into());
                }
            } else if !zero {
                let out_inner = parse::ip_at(out, inner_l3, inner.family).ok_or("quote broken")?;
                same(
                    "quoted TCP/UDP",
                    parse::l4_checksum_ok(input, &inner),
                    parse::l4_checksum_ok(out, &out_inner),
                )?;
            }
        }
        Ok(())
    }
}

/// The backend (address, port) a forward rewrite chose: the output's destination address and
/// the port at `port_at`, which must be one of the service's (and not a terminating one).
fn steered_to(
    service: &Service,
    ip: &Ip,
    out: &[u8],
    port_at: usize,
) -> Result<(IpAddr, u16), String> {
    let at = addr_at(ip.family, ETH_LEN, true);
    let len = if ip.family == 4 { 4 } else { 16 };
    if out.len() < port_at + 2 || out.len() < at + len {
        return Err("output too short".into());
    }
    let to = (read_addr(out, at, ip.family), be16(out, port_at));
    // A terminating backend takes no new flows, and none was ever steered to it here.
    if service
        .targets
        .iter()
        .any(|t| (t.ip, t.port) == to && !t.terminating)
    {
        Ok(to)
    } else {
        Err(format!(
            "rewritten to {}:{}, which is no backend of {}",
            to.0, to.1, service.vip
        ))
    }
}

fn delivery_of(service: &Service, backend: IpAddr) -> Delivery {
    service
        .targets
        .iter()
        .find(|t| t.ip == backend)
        .map_or(Delivery::Stack, |t| t.delivery)
}

/// The forward programs' verdict and TTL: XDP passes and leaves the TTL; TC ingress redirects
/// (TTL decremented, into `expected`) exactly when the pod is reached directly and the TTL
/// does not run out here.
fn ttl_rule(
    program: Program,
    verdict: u32,
    input: &[u8],
    ip: &Ip,
    expected: &mut [u8],
    delivery: Delivery,
) -> Result<(), String> {
    let ttl = input[ip.ttl_at];
    let direct = delivery != Delivery::Stack && ttl > 1;
    match (program, verdict) {
        (Program::Xdp, XDP_PASS) => Ok(()),
        (Program::TcIngress, TC_ACT_REDIRECT) if direct => {
            expected[ip.ttl_at] = ttl - 1;
            Ok(())
        }
        (Program::TcIngress, TC_ACT_OK) if !direct => Ok(()),
        _ => Err(format!(
            "verdict {verdict} with delivery {delivery:?} and TTL {ttl}"
        )),
    }
}

/// The checksum fields a translation of a fragment may change: IPv4's header checksum, and
/// in a first fragment the TCP/UDP checksum.
fn checksum_fields(ip: &Ip, first: bool) -> Vec<usize> {
    let mut fields = Vec::new();
    if ip.family == 4 {
        fields.push(ETH_LEN + 10);
    }
    if first {
        fields.push(l4_check_at(ip.l4, ip.proto));
    }
    fields
}

/// The IPv4 header checksum verifies after exactly when it did before.
fn header_kept(input: &[u8], out: &[u8]) -> Result<(), String> {
    same(
        "IPv4 header",
        parse::ip(input).map(|ip| ip.header_ok),
        parse::ip(out).map(|ip| ip.header_ok),
    )
}

/// The IPv4 header and TCP/UDP checksums verify after exactly when they did before; a UDP
/// checksum of 0 stays 0.
fn checksums_kept(input: &[u8], out: &[u8], ip: &Ip) -> Result<(), String> {
    header_kept(input, out)?;
    let check = l4_check_at(ip.l4, ip.proto);
    if ip.proto == PROTO_UDP && be16(input, check) == 0 {
        return if be16(out, check) == 0 {
            Ok(())
        } else {
            Err("a UDP checksum of 0 was changed".into())
        };
    }
    let out_ip = parse::ip(out).ok_or("the rewrite broke the IP header")?;
    same(
        "TCP/UDP",
        parse::l4_checksum_ok(input, ip),
        parse::l4_checksum_ok(out, &out_ip),
    )
}
