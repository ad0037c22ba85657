//! What each program may make of a frame, decided from the frame and the installed services
//! alone (`world`), never from the programs' code:
//!
//! - The verdict is a pass (`XDP_PASS`; `TC_ACT_OK`; `TC_ACT_PIPE` on the uplink's egress), or
//!   `TC_ACT_REDIRECT` for a frame rewritten towards a pod reached directly (TTL > 1, TTL then
//!   decremented) or a translated reply the node's FIB routes (TTL decremented, next hop's MACs).
//! - A well-formed TCP/UDP packet to a service is steered: destination address and port become
//!   one of the service's backends'. A malformed one (IP length beyond the frame or short of the
//!   transport header, bad IPv4 header checksum, UDP length ≠ IP length, TCP data offset < 5 or
//!   beyond the packet) passes untouched, and the runner checks it left no flow behind.
//! - A pod's reply (source: a backend) may be translated: the source becomes its service's. So
//!   may the ICMP errors of steered flows, both ways, and IPv4 fragments of steered datagrams.
//! - Every other frame comes out byte for byte as it went in.
//! - A rewritten frame differs from the input in the rewritten fields, the TTL and the MACs as
//!   above, and its checksums only; every checksum verifies after exactly when it did before
//!   (the independent routine in `frames`), and a UDP checksum of 0 stays 0.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use l3lb::fastpath::plan::Delivery;
use l3lb_common::{FlowKey, PROTO_UDP, program_names};

use super::{
    parse::{self, Ip, Quote, be16, l4_check_at},
    world::{self, Service, World},
};
use crate::{
    frames::{ETH_LEN, ones_complement_sum},
    programs::{TC_ACT_OK, TC_ACT_PIPE, TC_ACT_REDIRECT, XDP_PASS},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Program {
    Xdp,
    TcIngress,
    TcEgress,
    TcPod,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::Xdp,
        Program::TcIngress,
        Program::TcEgress,
        Program::TcPod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::Xdp => program_names::XDP_INGRESS,
            Program::TcIngress => program_names::TC_INGRESS,
            Program::TcEgress => program_names::TC_EGRESS,
            Program::TcPod => program_names::TC_POD,
        }
    }

    fn pass(self) -> u32 {
        match self {
            Program::Xdp => XDP_PASS,
            Program::TcEgress => TC_ACT_PIPE,
            Program::TcIngress | Program::TcPod => TC_ACT_OK,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Untouched,
    Steered,
    FragmentSteered,
    IcmpToPod,
    Translated,
    IcmpFromPod,
    /// The kernel refused the test run: a frame shorter than an Ethernet header.
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Untouched => "passed untouched",
            Outcome::Steered => "steered to a backend, checksums valid",
            Outcome::FragmentSteered => "fragment steered to a backend",
            Outcome::IcmpToPod => "ICMP error translated to a pod",
            Outcome::Translated => "reply translated to the service",
            Outcome::IcmpFromPod => "pod's ICMP error translated",
            Outcome::Refused => "refused by the kernel (a runt: no whole Ethernet or IP header)",
        }
    }
}

type Datagram = (IpAddr, IpAddr, u8, u16);

/// What the forward programs (XDP, TC ingress) may do with a frame.
enum Forward<'w> {
    Service(&'w Service, Ip),
    Malformed(FlowKey),
    FirstFragment(&'w Service, Ip, bool),
    LaterFragment(Ip),
    IcmpToPod(&'w Service, Ip, Quote),
    Other,
}

/// What the reply programs (TC egress, the pod's TC ingress) may do with a frame.
enum Back<'w> {
    Reply(&'w Service, Ip),
    IcmpFromPod(&'w Service, Ip, Quote),
    Other,
}

pub struct Oracle {
    world: World,
    /// The backend each steered fragmented datagram went to (its later fragments follow).
    datagrams: HashMap<Datagram, IpAddr>,
    macs: ([u8; 6], [u8; 6]),
}

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
    pub fn new(world: World, gateway_mac: [u8; 6], uplink_mac: [u8; 6]) -> Oracle {
        Oracle {
            world,
            datagrams: HashMap::new(),
            macs: (gateway_mac, uplink_mac),
        }
    }

    fn forward<'w>(&'w self, frame: &[u8]) -> Forward<'w> {
        let Some(ip) = parse::ip(frame) else {
            return Forward::Other;
        };
        if let Some(quote) = parse::icmp_error(frame, &ip) {
            let inner = &quote.inner;
            return match self.world.service(inner.src, quote.sport, inner.proto) {
                Some(service) if ip.dst == inner.src => Forward::IcmpToPod(service, ip, quote),
                _ => Forward::Other,
            };
        }
        let Some(min) = ip.l4_min() else {
            return Forward::Other;
        };
        if ip.is_fragment() {
            if ip.offset != 0 {
                return Forward::LaterFragment(ip);
            }
            if frame.len() < ip.l4 + 4 {
                return Forward::Other;
            }
            let dport = be16(frame, ip.l4 + 2);
            return match self.world.service(ip.dst, dport, ip.proto) {
                Some(service) => {
                    let well_formed =
                        ip.header_ok && ip.end <= frame.len() && ip.end >= ip.l4 + min;
                    Forward::FirstFragment(service, ip, well_formed)
                }
                None => Forward::Other,
            };
        }
        if frame.len() < ip.l4 + min {
            return Forward::Other;
        }
        let (sport, dport) = (be16(frame, ip.l4), be16(frame, ip.l4 + 2));
        let Some(service) = self.world.service(ip.dst, dport, ip.proto) else {
            return Forward::Other;
        };
        let length_ok = ip.end <= frame.len() && ip.end >= ip.l4 + min;
        let transport_ok = length_ok
            && if ip.proto == PROTO_UDP {
                usize::from(be16(frame, ip.l4 + 4)) == ip.end - ip.l4
            } else {
                let header = usize::from(frame[ip.l4 + 12] >> 4) * 4;
                header >= 20 && header <= ip.end - ip.l4
            };
        if ip.header_ok && transport_ok {
            Forward::Service(service, ip)
        } else {
            Forward::Malformed(FlowKey::new(
                SocketAddr::new(ip.src, sport),
                SocketAddr::new(ip.dst, dport),
                ip.proto,
            ))
        }
    }

    fn back<'w>(&'w self, frame: &[u8]) -> Back<'w> {
        let Some(ip) = parse::ip(frame) else {
            return Back::Other;
        };
        if let Some(quote) = parse::icmp_error(frame, &ip) {
            let inner = &quote.inner;
            return match self.world.backend(inner.dst, quote.dport, inner.proto) {
                Some((service, _)) if ip.src == inner.dst => Back::IcmpFromPod(service, ip, quote),
                _ => Back::Other,
            };
        }
        let Some(min) = ip.l4_min() else {
            return Back::Other;
        };
        if ip.is_fragment() || frame.len() < ip.l4 + min {
            return Back::Other;
        }
        match self.world.backend(ip.src, be16(frame, ip.l4), ip.proto) {
            Some((service, _)) => Back::Reply(service, ip),
            None => Back::Other,
        }
    }

    /// The flow a frame to a service port would create were it steered, for a malformed one:
    /// the runner checks that the programs left it as it was.
    pub fn malformed_flow(&self, frame: &[u8]) -> Option<FlowKey> {
        match self.forward(frame) {
            Forward::Malformed(key) => Some(key),
            _ => None,
        }
    }

    /// Judges `program`'s `verdict` and `out` for `input`: how it went, or what is wrong.
    pub fn check(
        &mut self,
        program: Program,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<Outcome, String> {
        let forward = matches!(program, Program::Xdp | Program::TcIngress);
        if out == input {
            if verdict != program.pass() {
                return Err(format!("untouched, but verdict {verdict}"));
            }
            return match (forward, self.forward(input)) {
                (true, Forward::Service(..)) => {
                    Err("a well-formed service packet passed unsteered".into())
                }
                (true, Forward::FirstFragment(_, _, true)) if program == Program::TcIngress => Err(
                    "a well-formed first fragment of a service datagram passed unsteered".into(),
                ),
                _ => Ok(Outcome::Untouched),
            };
        }
        if forward {
            self.check_forward(program, input, verdict, out)
        } else {
            self.check_back(program, input, verdict, out)
        }
    }

    fn check_forward(
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
                write_addr(&mut expected, addr_at(4, ETH_LEN, true), target.0);
                expected[ip.l4 + 2..ip.l4 + 4].copy_from_slice(&target.1.to_be_bytes());
                ttl_rule(
                    program,
                    verdict,
                    input,
                    &ip,
                    &mut expected,
                    delivery_of(service, target.0),
                )?;
                compare(expected, out, &[ETH_LEN + 10, l4_check_at(ip.l4, ip.proto)])?;
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
                write_addr(&mut expected, addr_at(4, ETH_LEN, true), backend);
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
                compare(expected, out, &[ETH_LEN + 10])?;
                header_kept(input, out)?;
                Ok(Outcome::FragmentSteered)
            }
            Forward::IcmpToPod(service, ip, quote) if tc => {
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

    fn check_back(
        &mut self,
        program: Program,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<Outcome, String> {
        let (service, ip, outcome) = match self.back(input) {
            Back::Reply(service, ip) => (service, ip, Outcome::Translated),
            Back::IcmpFromPod(service, ip, _) => (service, ip, Outcome::IcmpFromPod),
            Back::Other => return Err("a frame that is no reply of a pod was changed".into()),
        };
        let vip = service.vip;
        let mut expected = input.to_vec();
        write_addr(&mut expected, addr_at(ip.family, ETH_LEN, false), vip.ip);
        if program == Program::TcEgress {
            if verdict != TC_ACT_PIPE {
                return Err(format!("TC egress verdict {verdict}"));
            }
        } else {
            let routed = world::route_of(ip.dst);
            let ttl = input[ip.ttl_at];
            let redirect = routed.is_some() && ttl > 1;
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
            Back::Reply(..) => {
                expected[ip.l4..ip.l4 + 2].copy_from_slice(&vip.port.to_be_bytes());
                compare(expected, out, &[ETH_LEN + 10, l4_check_at(ip.l4, ip.proto)])?;
                checksums_kept(input, out, &ip)?;
            }
            Back::IcmpFromPod(_, _, quote) => {
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
/// the port at `port_at`, which must be one of the service's.
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
    if service.targets.iter().any(|t| (t.ip, t.port) == to) {
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
