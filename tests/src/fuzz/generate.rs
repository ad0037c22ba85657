//! Frames to start from, each of a [`Kind`]: service packets of new and known flows (TCP/UDP,
//! IPv4 with and without options, IPv6, UDP without checksum, TTLs about to run out), other
//! traffic, the pods' replies, ICMP errors both ways with whole, short, cut and random quotes,
//! IPv4 fragments, IPv6 extension headers, VLAN tags, ARP and random bytes. Drawn from a seeded
//! PRNG and the flows seen so far, so a seed gives the same frames again.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fastrand::Rng;
use l3lb::fastpath::plan::Vip;
use l3lb_common::{PROTO_TCP, PROTO_UDP};

use super::{
    parse::be16,
    world::{self, World},
};
use crate::frames::{self, ETH_LEN, IPV6_LEN};

/// What a frame was built as, before any mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ServiceNewFlow,
    ServiceKnownFlow,
    NotService,
    Reply,
    IcmpToPod,
    IcmpFromPod,
    IcmpOther,
    FirstFragment,
    LaterFragment,
    Ipv6Extension,
    Vlan,
    NotIp,
    RandomBytes,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::ServiceNewFlow => "service packet, new flow",
            Kind::ServiceKnownFlow => "service packet, known flow",
            Kind::NotService => "not a service (address/port)",
            Kind::Reply => "a pod's reply",
            Kind::IcmpToPod => "ICMP error about a reply",
            Kind::IcmpFromPod => "ICMP error from a pod",
            Kind::IcmpOther => "other ICMP",
            Kind::FirstFragment => "IPv4 first fragment",
            Kind::LaterFragment => "IPv4 later fragment",
            Kind::Ipv6Extension => "IPv6 extension header",
            Kind::Vlan => "VLAN-tagged",
            Kind::NotIp => "ARP / other EtherType",
            Kind::RandomBytes => "random bytes",
        }
    }
}

/// A client's flow to a service, and the backend the programs were seen to pick for it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    port: u16,
    vip: Vip,
    backend: Option<(IpAddr, u16)>,
}

/// How many recent flows (and fragmented datagrams) the generator draws known ones from.
const RECENT: usize = 512;

pub struct Generator {
    rng: Rng,
    world: World,
    flows: Vec<Flow>,
    next_flow: usize,
    /// Recent first fragments: source, destination, protocol, IP ID.
    datagrams: Vec<(IpAddr, IpAddr, u8, u16)>,
    next_datagram: usize,
}

/// A generated frame; `flow` names the recent flow it belongs to, for [`Generator::learn`].
pub struct Generated {
    pub bytes: Vec<u8>,
    pub kind: Kind,
    pub flow: Option<usize>,
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("an IPv4 service has IPv4 clients and backends"),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(_) => unreachable!("an IPv6 service has IPv6 clients and backends"),
    }
}

/// Recomputes the IPv4 header checksum of the frame's IP header at `l3` (after a mutation, so
/// that the deeper checks are reached too).
pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    if frame.len() < l3 + 20 || frame[l3] >> 4 != 4 {
        return;
    }
    let header_len = (usize::from(frame[l3] & 0x0f) * 4).max(20);
    if frame.len() < l3 + header_len {
        return;
    }
    frame[l3 + 10..l3 + 12].fill(0);
    let sum = frames::checksum(0, &frame[l3..l3 + header_len]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

impl Generator {
    pub fn new(seed: u64, world: World) -> Generator {
        Generator {
            rng: Rng::with_seed(seed),
            world,
            flows: Vec::with_capacity(RECENT),
            next_flow: 0,
            datagrams: Vec::with_capacity(RECENT),
            next_datagram: 0,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Records the backend the programs steered flow `flow` to.
    pub fn learn(&mut self, flow: usize, backend: (IpAddr, u16)) {
        if let Some(f) = self.flows.get_mut(flow) {
            f.backend = Some(backend);
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        // Now and then a jumbo frame: more than a page, which the XDP test run splits into
        // several buffers (the frags-aware program's case) and the TC test run refuses.
        let len = match self.rng.u16(..512) {
            0 => self.rng.usize(4000..8900),
            1..=32 => self.rng.usize(0..900),
            _ => self.rng.usize(0..48),
        };
        let mut payload = vec![0; len];
        self.rng.fill(&mut payload);
        payload
    }

    fn new_flow(&mut self) -> usize {
        let service = self.rng.usize(..self.world.services.len());
        let vip = self.world.services[service].vip;
        let network = self.rng.u8(..);
        let client = if vip.ip.is_ipv4() {
            world::client_v4(network, self.rng.u8(1..255))
        } else {
            world::client_v6(network, self.rng.u16(1..))
        };
        let flow = Flow {
            client,
            port: self.rng.u16(1024..),
            vip,
            backend: None,
        };
        if self.flows.len() < RECENT {
            self.flows.push(flow);
            self.flows.len() - 1
        } else {
            self.next_flow = (self.next_flow + 1) % RECENT;
            self.flows[self.next_flow] = flow;
            self.next_flow
        }
    }

    fn known_flow(&mut self) -> usize {
        if self.flows.is_empty() {
            self.new_flow()
        } else {
            self.rng.usize(..self.flows.len())
        }
    }

    /// A TCP/UDP frame: IPv4 with options, fragment field, a missing UDP checksum or a low TTL
    /// now and then; IPv6 with a zero UDP checksum now and then.
    fn packet(
        &mut self,
        (src, sport): (IpAddr, u16),
        (dst, dport): (IpAddr, u16),
        proto: u8,
    ) -> Vec<u8> {
        let payload = self.payload();
        let mut frame = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = frames::Ipv4::new(proto, s, d).id(self.rng.u16(..));
                if self.rng.u8(..) < 32 {
                    let mut options = vec![1u8; 4 * self.rng.usize(1..=10)];
                    options[0] = 0x94; // router alert
                    options[1] = 4;
                    ip = ip.options(&options);
                }
                if proto == PROTO_UDP && self.rng.u8(..) < 24 {
                    ip.udp_without_checksum(sport, dport, &payload)
                } else {
                    ip.segment(sport, dport, &payload)
                }
            }
            (s, d) => {
                let mut frame = frames::ipv6(proto, v6(s), v6(d), sport, dport, &payload);
                if proto == PROTO_UDP && self.rng.u8(..) < 16 {
                    let at = ETH_LEN + IPV6_LEN + 6;
                    frame[at..at + 2].fill(0);
                }
                frame
            }
        };
        if self.rng.u8(..) < 16 {
            let ttl = self.rng.u8(0..3);
            let at = if src.is_ipv4() {
                ETH_LEN + 8
            } else {
                ETH_LEN + 7
            };
            frame[at] = ttl;
            fix_ipv4_checksum(&mut frame, ETH_LEN);
        }
        if self.rng.u8(..) < 16 {
            // Ethernet padding after the IP packet.
            let extra = self.rng.usize(1..32);
            frame.extend((0..extra).map(|_| self.rng.u8(..)));
        }
        frame
    }

    fn request(&mut self, flow: usize) -> Vec<u8> {
        let f = self.flows[flow];
        self.packet((f.client, f.port), (f.vip.ip, f.vip.port), f.vip.proto)
    }

    /// The backend a flow's replies come from: the one seen, else any of its service's.
    fn backend_of(&mut self, flow: usize) -> (IpAddr, u16) {
        let f = self.flows[flow];
        if let Some(backend) = f.backend.filter(|_| self.rng.u8(..) < 240) {
            return backend;
        }
        let service = self
            .world
            .service(f.vip.ip, f.vip.port, f.vip.proto)
            .expect("installed");
        let t = service.targets[self.rng.usize(..service.targets.len())];
        (t.ip, t.port)
    }

    /// The quote of `packet` in an ICMP error: whole, IP header + 8 bytes, cut anywhere, or
    /// random bytes.
    fn quote(&mut self, packet: &[u8]) -> Vec<u8> {
        let ip = frames::ip_packet(packet);
        let header = if packet[12] == 0x08 {
            usize::from(ip[0] & 0x0f) * 4
        } else {
            IPV6_LEN
        };
        match self.rng.u8(0..8) {
            0..=3 => ip.to_vec(),
            4 | 5 => ip[..(header + 8).min(ip.len())].to_vec(),
            6 => ip[..self.rng.usize(0..=ip.len())].to_vec(),
            _ => {
                let mut random = vec![0; self.rng.usize(0..80)];
                self.rng.fill(&mut random);
                random
            }
        }
    }

    fn icmp_error(&mut self, src: IpAddr, dst: IpAddr, quote: &[u8]) -> Vec<u8> {
        let rest = self.rng.u32(..);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (kind, code) =
                    [(3, 4), (3, 3), (3, 1), (11, 0), (12, 0), (5, 1)][self.rng.usize(..6)];
                frames::icmpv4_error(s, d, kind, code, rest, quote)
            }
            (s, d) => {
                let (kind, code) =
                    [(2, 0), (1, 4), (1, 0), (3, 0), (4, 0), (129, 0)][self.rng.usize(..6)];
                frames::icmpv6_error(v6(s), v6(d), kind, code, rest, quote)
            }
        }
    }

    /// A router (or the client) on the flow's side: where errors about replies come from.
    fn router(&mut self, family_of: IpAddr) -> IpAddr {
        if family_of.is_ipv4() {
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, self.rng.u8(2..255)))
        } else {
            IpAddr::V6(Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, self.rng.u16(2..)))
        }
    }

    /// The next frame to run.
    pub fn frame(&mut self) -> Generated {
        let roll = self.rng.u8(..);
        let (kind, flow, bytes) = match roll {
            0..=59 => {
                let flow = self.new_flow();
                (Kind::ServiceNewFlow, Some(flow), self.request(flow))
            }
            60..=99 => {
                let flow = self.known_flow();
                (Kind::ServiceKnownFlow, Some(flow), self.request(flow))
            }
            100..=139 => {
                let flow = self.known_flow();
                let f = self.flows[flow];
                let from = self.backend_of(flow);
                let bytes = self.packet(from, (f.client, f.port), f.vip.proto);
                (Kind::Reply, Some(flow), bytes)
            }
            140..=159 => {
                let flow = self.known_flow();
                let f = self.flows[flow];
                let reply = self.packet((f.vip.ip, f.vip.port), (f.client, f.port), f.vip.proto);
                let quote = self.quote(&reply);
                let router = self.router(f.client);
                let bytes = self.icmp_error(router, f.vip.ip, &quote);
                (Kind::IcmpToPod, Some(flow), bytes)
            }
            160..=174 => {
                let flow = self.known_flow();
                let f = self.flows[flow];
                let backend = self.backend_of(flow);
                let request = self.packet((f.client, f.port), backend, f.vip.proto);
                let quote = self.quote(&request);
                let bytes = self.icmp_error(backend.0, f.client, &quote);
                (Kind::IcmpFromPod, Some(flow), bytes)
            }
            175..=189 => (Kind::FirstFragment, None, self.first_fragment()),
            190..=199 => (Kind::LaterFragment, None, self.later_fragment()),
            200..=214 => (Kind::NotService, None, self.not_service()),
            215..=222 => (Kind::IcmpOther, None, self.icmp_other()),
            223..=232 => (Kind::Ipv6Extension, None, self.ipv6_extension()),
            233..=240 => {
                let flow = self.known_flow();
                let inner = self.request(flow);
                (Kind::Vlan, None, self.vlan(&inner))
            }
            241..=246 => (Kind::NotIp, None, self.not_ip()),
            _ => (Kind::RandomBytes, None, self.random_bytes()),
        };
        Generated { bytes, kind, flow }
    }

    fn first_fragment(&mut self) -> Vec<u8> {
        let flow = self.new_flow();
        let f = self.flows[flow];
        let (IpAddr::V4(client), IpAddr::V4(service)) = (f.client, f.vip.ip) else {
            // Fragments are IPv4's; an IPv6 flow gets a fragment header instead.
            return self.ipv6_extension();
        };
        let id = self.rng.u16(..);
        let mut payload = vec![0; self.rng.usize(24..200)];
        self.rng.fill(&mut payload);
        let frame = if f.vip.proto == PROTO_UDP {
            let first_len = 8 * self.rng.usize(1..=payload.len() / 8);
            let [first, _] = frames::ipv4_udp_fragments(
                (client, service, id),
                f.port,
                f.vip.port,
                &payload,
                first_len,
            );
            first
        } else {
            frames::Ipv4::new(PROTO_TCP, client, service)
                .id(id)
                .frag(frames::IPV4_MF)
                .segment(f.port, f.vip.port, &payload)
        };
        self.remember_datagram((f.client, f.vip.ip, f.vip.proto, id));
        frame
    }

    fn remember_datagram(&mut self, datagram: (IpAddr, IpAddr, u8, u16)) {
        if self.datagrams.len() < RECENT {
            self.datagrams.push(datagram);
        } else {
            self.next_datagram = (self.next_datagram + 1) % RECENT;
            self.datagrams[self.next_datagram] = datagram;
        }
    }

    fn later_fragment(&mut self) -> Vec<u8> {
        let (src, dst, proto, id) = if !self.datagrams.is_empty() && self.rng.u8(..) < 220 {
            self.datagrams[self.rng.usize(..self.datagrams.len())]
        } else {
            let flow = self.new_flow();
            let f = self.flows[flow];
            if f.client.is_ipv6() {
                return self.ipv6_extension();
            }
            (f.client, f.vip.ip, f.vip.proto, self.rng.u16(..))
        };
        let more = if self.rng.bool() { frames::IPV4_MF } else { 0 };
        let mut body = vec![0; self.rng.usize(0..300)];
        self.rng.fill(&mut body);
        frames::Ipv4::new(proto, v4(src), v4(dst))
            .id(id)
            .frag(more | self.rng.u16(1..0x1fff))
            .packet(&body)
    }

    fn not_service(&mut self) -> Vec<u8> {
        let flow = self.known_flow();
        let f = self.flows[flow];
        let proto = if self.rng.bool() {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let (dst, port) = match self.rng.u8(0..3) {
            0 => (f.vip.ip, self.rng.u16(..)),
            1 if f.vip.ip.is_ipv4() => (IpAddr::V4(Ipv4Addr::new(10, 96, 0, 99)), f.vip.port),
            _ if f.vip.ip.is_ipv4() => (IpAddr::V4(Ipv4Addr::new(10, 96, 0, 12)), f.vip.port),
            _ => (f.vip.ip, f.vip.port),
        };
        self.packet((f.client, f.port), (dst, port), proto)
    }

    fn icmp_other(&mut self) -> Vec<u8> {
        let flow = self.known_flow();
        let f = self.flows[flow];
        match (f.client, f.vip.ip) {
            (IpAddr::V4(c), IpAddr::V4(s)) => frames::icmpv4_echo(c, s),
            (c, s) => frames::icmpv6_echo(v6(c), v6(s)),
        }
    }

    /// A service packet of an IPv6 flow with an extension header (of any type the programs
    /// must pass) between the IPv6 header and TCP/UDP.
    fn ipv6_extension(&mut self) -> Vec<u8> {
        let service = self.world.services[4 + self.rng.usize(..2)].vip;
        let client = world::client_v6(self.rng.u8(..), self.rng.u16(1..));
        let port = self.rng.u16(1024..);
        let frame = self.packet((client, port), (service.ip, service.port), service.proto);
        let extension = [0u8, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254][self.rng.usize(..11)];
        let mut out = frame[..ETH_LEN + IPV6_LEN].to_vec();
        let proto = out[ETH_LEN + 6];
        out[ETH_LEN + 6] = extension;
        let payload = be16(&out, ETH_LEN + 4) + 8;
        out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
        out.extend_from_slice(&frame[ETH_LEN + IPV6_LEN..]);
        out
    }

    fn vlan(&mut self, frame: &[u8]) -> Vec<u8> {
        let tagged = frames::vlan_tagged(frame, self.rng.u16(..4096));
        if self.rng.bool() {
            // 802.1ad outer tag (QinQ).
            let mut outer = frames::vlan_tagged(&tagged, self.rng.u16(..4096));
            outer[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
            outer
        } else {
            tagged
        }
    }

    fn not_ip(&mut self) -> Vec<u8> {
        let flow = self.known_flow();
        let f = self.flows[flow];
        match (f.client, f.vip.ip) {
            (IpAddr::V4(c), IpAddr::V4(s)) if self.rng.bool() => frames::arp_request(c, s),
            _ => {
                let mut frame = self.request(flow);
                let ether_type = [0x88cc, 0x8847, 0x0806, 0x86dc, 0x0801][self.rng.usize(..5)];
                frame[12..14].copy_from_slice(&u16::to_be_bytes(ether_type));
                frame
            }
        }
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let mut frame = vec![0; self.rng.usize(0..160)];
        self.rng.fill(&mut frame);
        if frame.len() > 14 && self.rng.bool() {
            let (ether_type, version) = if self.rng.bool() {
                (0x0800u16, 0x45)
            } else {
                (0x86dd, 0x60)
            };
            frame[12..14].copy_from_slice(&ether_type.to_be_bytes());
            frame[14] = version;
            if self.rng.bool() && frame.len() > 14 + 20 {
                frame[14 + if version == 0x45 { 9 } else { 6 }] = if self.rng.bool() {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                };
            }
        }
        frame
    }
}
