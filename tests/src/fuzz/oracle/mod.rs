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

use l3lb_common::{FlowKey, PROTO_UDP, program_names};

use super::{
    parse::{self, Ip, Quote, be16},
    world::{Service, World},
};
use crate::programs::{TC_ACT_OK, TC_ACT_PIPE, XDP_PASS};

mod rewrite;
#[cfg(test)]
mod tests;

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
            Outcome::Refused => "refused by the test run (a runt, or a TC frame over a page)",
        }
    }
}

type Datagram = (IpAddr, IpAddr, u8, u32);

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
    /// The first fragment of a reply datagram from a backend.
    ReplyFragment(&'w Service, Ip),
    /// A later fragment of a reply datagram whose first was translated (to this service
    /// address).
    LaterReplyFragment(IpAddr, Ip),
    Other,
}

pub struct Oracle {
    world: World,
    /// The backend each steered fragmented datagram went to (its later fragments follow).
    datagrams: HashMap<Datagram, IpAddr>,
    /// The service address each translated reply datagram got (its later fragments follow).
    reply_datagrams: HashMap<Datagram, IpAddr>,
    macs: ([u8; 6], [u8; 6]),
}

impl Oracle {
    pub fn new(world: World, gateway_mac: [u8; 6], uplink_mac: [u8; 6]) -> Oracle {
        Oracle {
            world,
            datagrams: HashMap::new(),
            reply_datagrams: HashMap::new(),
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
        if ip.is_fragment() && ip.offset != 0 {
            return match self.reply_datagrams.get(&(ip.src, ip.dst, ip.proto, ip.id)) {
                Some(&vip) => Back::LaterReplyFragment(vip, ip),
                None => Back::Other,
            };
        }
        if ip.is_fragment() {
            if frame.len() < ip.l4 + 4 {
                return Back::Other;
            }
            return match self.world.backend(ip.src, be16(frame, ip.l4), ip.proto) {
                Some((service, _)) => Back::ReplyFragment(service, ip),
                None => Back::Other,
            };
        }
        if frame.len() < ip.l4 + min {
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
}
