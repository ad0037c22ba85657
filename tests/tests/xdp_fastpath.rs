//! The fast path on the real kernel: the XDP program's DNAT of service traffic to local
//! backends, and the TC egress program's reverse translation of their replies.
//!
//! - `xdp_cases`: a table of frames through BPF_PROG_TEST_RUN, each with its expected verdict,
//!   output frame and reason counter, checksums verified by the independent routine in
//!   `l3lb_tests::frames`.
//! - `flows_stick_to_their_backend`, `flow_hash_is_deterministic`: flow memory across table
//!   changes, terminating and removed backends.
//! - `replies_are_translated_back`: the TC program on the pods' replies.
//! - `end_to_end_*`: both programs attached in namespaces (client — node — pod), with real TCP
//!   and UDP sockets on both ends.
//!
//! The tests fill the maps directly, as the daemon would, with simple round-robin tables
//! (Maglev itself is tested in userspace).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use l3lb_common::{
    Affinity, AffinityKey, BACKEND_TERMINATING, Backend, Flow, FlowKey, PROTO_TCP, PROTO_UDP,
    PacketCounter, REPLY_CHECK_INTERVAL, Reason, ReplyNat, SERVICE_AFFINITY, ServiceEntry,
    ServiceKey, addr, map_names, program_names,
};
use l3lb_tests::{frames, netns, privileged};

const XDP_PASS: u32 = 2;
const TC_ACT_PIPE: u32 = 3;
/// Two tables of 1021 entries, the daemon's smallest table size.
const MAGLEV_ENTRIES: u32 = 2 * 1021;
/// The tests' tables: small, prime, several per Maglev region.
const TABLE: u32 = 13;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse().expect("an IPv6 address"))
}

/// The 5-tuple of a TCP/UDP frame.
fn flow_key_of(frame: &[u8]) -> FlowKey {
    FlowKey::new(
        frames::source(frame).into(),
        frames::destination(frame).into(),
        frames::layout(frame).proto,
    )
}

/// The loaded object with both programs verified, and the maps as the daemon would fill them.
struct Lb {
    ebpf: Ebpf,
}

impl Lb {
    fn load() -> Lb {
        let mut ebpf = l3lb::ebpf::load(MAGLEV_ENTRIES).expect("load the embedded object");
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP_INGRESS)
            .expect("XDP program present")
            .try_into()
            .expect("an XDP program");
        xdp.load().expect("the verifier accepts the XDP program");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC_EGRESS)
            .expect("TC program present")
            .try_into()
            .expect("a classifier");
        tc.load().expect("the verifier accepts the TC program");
        for name in [program_names::TC_INGRESS, program_names::TC_POD] {
            let tc: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("TC program present")
                .try_into()
                .expect("a classifier");
            tc.load()
                .unwrap_or_else(|err| panic!("the verifier accepts {name}: {err:?}"));
        }
        Lb { ebpf }
    }

    fn backends(&mut self) -> Array<&mut aya::maps::MapData, Backend> {
        Array::try_from(self.ebpf.map_mut(map_names::BACKENDS).unwrap()).unwrap()
    }

    fn set_backend(&mut self, id: u32, addr: IpAddr, port: u16, flags: u32) {
        self.backends()
            .set(id, Backend::new(addr, port, flags), 0)
            .unwrap();
    }

    fn clear_backend(&mut self, id: u32) {
        self.backends().set(id, Backend::default(), 0).unwrap();
    }

    /// Writes a table of `TABLE` entries at `base`, cycling through `ids` (round robin).
    fn set_table(&mut self, base: u32, ids: &[u32]) {
        let mut maglev: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(map_names::MAGLEV).unwrap()).unwrap();
        for i in 0..TABLE {
            let id = if ids.is_empty() {
                0
            } else {
                ids[i as usize % ids.len()]
            };
            maglev.set(base + i, id, 0).unwrap();
        }
    }

    /// Points the service at the table at `base` (`TABLE` entries, or none when `empty`).
    fn set_service(&mut self, key: ServiceKey, id: u32, base: u32, empty: bool) {
        let mut services: HashMap<_, ServiceKey, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES).unwrap()).unwrap();
        let entry = ServiceEntry {
            id,
            table_base: base,
            table_size: if empty { 0 } else { TABLE },
            flags: 0,
            affinity_timeout_secs: 0,
        };
        services.insert(key, entry, 0).unwrap();
    }

    /// Gives the service at `key` `ClientIP` session affinity of `secs` seconds.
    fn set_affinity(&mut self, key: ServiceKey, secs: u32) {
        let mut services: HashMap<_, ServiceKey, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES).unwrap()).unwrap();
        let mut entry = services.get(&key, 0).unwrap();
        entry.flags |= SERVICE_AFFINITY;
        entry.affinity_timeout_secs = secs;
        services.insert(key, entry, 0).unwrap();
    }

    fn affinities(&mut self) -> HashMap<&mut aya::maps::MapData, AffinityKey, Affinity> {
        HashMap::try_from(self.ebpf.map_mut(map_names::AFFINITY).unwrap()).unwrap()
    }

    /// A service (id, table at `id * TABLE`) whose table cycles through `backends` (id, address,
    /// port), all installed in their slots.
    fn add_service(&mut self, key: ServiceKey, id: u32, backends: &[(u32, IpAddr, u16)]) {
        for &(backend, addr, port) in backends {
            self.set_backend(backend, addr, port, 0);
        }
        let ids: Vec<u32> = backends.iter().map(|b| b.0).collect();
        self.set_table(id * TABLE, &ids);
        self.set_service(key, id, id * TABLE, backends.is_empty());
    }

    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        let flows: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(self.ebpf.map(map_names::FLOWS).unwrap()).unwrap();
        flows.get(key, 0).ok()
    }

    fn remove_flow(&mut self, key: &FlowKey) {
        let mut flows: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(self.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
        flows.remove(key).unwrap();
    }

    fn reply(&self, key: &FlowKey) -> Option<ReplyNat> {
        let replies: HashMap<_, FlowKey, ReplyNat> =
            HashMap::try_from(self.ebpf.map(map_names::REPLIES).unwrap()).unwrap();
        replies.get(key, 0).ok()
    }

    fn remove_reply(&mut self, key: &FlowKey) {
        let mut replies: HashMap<_, FlowKey, ReplyNat> =
            HashMap::try_from(self.ebpf.map_mut(map_names::REPLIES).unwrap()).unwrap();
        replies.remove(key).unwrap();
    }

    fn reasons(&self) -> [PacketCounter; Reason::COUNT as usize] {
        l3lb::ebpf::reason_counters(&self.ebpf).expect("read the reason counters")
    }

    fn service_counter(&self, id: u32) -> PacketCounter {
        l3lb::ebpf::service_counter(&self.ebpf, id).expect("read the service counters")
    }

    /// Runs the XDP program on `frame`: verdict and output frame.
    fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self
            .ebpf
            .program(program_names::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN of the XDP program");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the TC egress program on `frame` (an skb built from the Ethernet frame).
    fn tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_tc(program_names::TC_EGRESS, frame)
    }

    /// Runs the TC program `name` on `frame`.
    fn run_tc(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN of the TC program");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// The XDP program on a frame that must be steered to `to`: the checked output.
    fn expect_steered(&self, frame: &[u8], to: (IpAddr, u16), description: &str) -> Vec<u8> {
        let (verdict, out) = self.xdp(frame);
        assert_eq!(verdict, XDP_PASS, "{description}: verdict");
        assert_steered(frame, &out, to, description);
        out
    }
}

/// `out` is `input` with the destination rewritten to `to` and nothing else changed but the
/// checksums, which verify.
fn assert_steered(input: &[u8], out: &[u8], to: (IpAddr, u16), description: &str) {
    let mut expected = input.to_vec();
    frames::set_destination(&mut expected, to.0, to.1);
    assert_eq!(
        frames::without_checksums(out),
        frames::without_checksums(&expected),
        "{description}: destination rewritten, every other byte identical"
    );
    assert!(
        frames::checksums_ok(out),
        "{description}: checksums verify after the rewrite"
    );
    if frames::layout(input).proto == PROTO_UDP && frames::l4_checksum(input) == 0 {
        assert_eq!(
            frames::l4_checksum(out),
            0,
            "{description}: a UDP datagram without checksum stays without"
        );
    }
}

/// `out` is `input` with the source rewritten to `from`, checksums verified.
fn assert_translated(input: &[u8], out: &[u8], from: (IpAddr, u16), description: &str) {
    let mut expected = input.to_vec();
    frames::set_source(&mut expected, from.0, from.1);
    assert_eq!(
        frames::without_checksums(out),
        frames::without_checksums(&expected),
        "{description}: source rewritten, every other byte identical"
    );
    assert!(
        frames::checksums_ok(out),
        "{description}: checksums verify after the rewrite"
    );
    if frames::layout(input).proto == PROTO_UDP && frames::l4_checksum(input) == 0 {
        assert_eq!(
            frames::l4_checksum(out),
            0,
            "{description}: UDP without checksum"
        );
    }
}

/// The reason counters' change between two reads: packets and bytes per reason.
fn delta(
    before: &[PacketCounter; Reason::COUNT as usize],
    after: &[PacketCounter; Reason::COUNT as usize],
) -> Vec<(Reason, u64, u64)> {
    Reason::ALL
        .iter()
        .map(|&r| {
            let (b, a) = (before[r as usize], after[r as usize]);
            (r, a.packets - b.packets, a.bytes - b.bytes)
        })
        .filter(|&(_, packets, _)| packets != 0)
        .collect()
}

enum Expect {
    /// Passed exactly as it came.
    Untouched,
    /// Destination rewritten to this backend; counted for this service id.
    Steered { to: (IpAddr, u16), service: u32 },
}

struct Case {
    description: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    expect: Expect,
    reason: Reason,
}

fn case(
    description: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    expect: Expect,
    reason: Reason,
) -> Case {
    Case {
        description,
        frame,
        verdict,
        expect,
        reason,
    }
}

#[test]
fn xdp_cases() {
    if !privileged("xdp_cases") {
        return;
    }
    let mut lb = Lb::load();

    let client = Ipv4Addr::new(192, 0, 2, 10);
    let client6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let service = Ipv4Addr::new(10, 96, 0, 10);
    let service6: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let (pod_tcp, pod_udp) = ((v4(10, 244, 1, 5), 8080), (v4(10, 244, 1, 6), 5353));
    let (pod6_tcp, pod6_udp) = ((v6("fd00:244::5"), 8443), (v6("fd00:244::6"), 5353));

    lb.add_service(
        ServiceKey::new(service.into(), 80, PROTO_TCP),
        1,
        &[(1, pod_tcp.0, pod_tcp.1)],
    );
    lb.add_service(
        ServiceKey::new(service.into(), 53, PROTO_UDP),
        2,
        &[(2, pod_udp.0, pod_udp.1)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 443, PROTO_TCP),
        3,
        &[(3, pod6_tcp.0, pod6_tcp.1)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 53, PROTO_UDP),
        4,
        &[(4, pod6_udp.0, pod6_udp.1)],
    );
    // No backend at all; a table naming a cleared slot; a backend of the other family.
    let (empty, cleared, crossed) = (
        Ipv4Addr::new(10, 96, 0, 11),
        Ipv4Addr::new(10, 96, 0, 12),
        Ipv4Addr::new(10, 96, 0, 13),
    );
    lb.add_service(ServiceKey::new(empty.into(), 80, PROTO_TCP), 5, &[]);
    lb.add_service(
        ServiceKey::new(cleared.into(), 80, PROTO_TCP),
        6,
        &[(6, v4(10, 244, 1, 7), 80)],
    );
    lb.clear_backend(6);
    lb.add_service(
        ServiceKey::new(crossed.into(), 80, PROTO_TCP),
        7,
        &[(7, v6("fd00:244::7"), 80)],
    );

    let tcp =
        |sport: u16, dport: u16| frames::ipv4(PROTO_TCP, client, service, sport, dport, b"GET /");
    let udp =
        |sport: u16, dport: u16| frames::ipv4(PROTO_UDP, client, service, sport, dport, b"query");
    let tcp6 =
        |sport: u16, dport: u16| frames::ipv6(PROTO_TCP, client6, service6, sport, dport, b"GET /");
    let udp6 =
        |sport: u16, dport: u16| frames::ipv6(PROTO_UDP, client6, service6, sport, dport, b"query");
    let v4_tcp = frames::Ipv4::new(PROTO_TCP, client, service);
    let v4_udp = frames::Ipv4::new(PROTO_UDP, client, service);
    let steered = |to: (IpAddr, u16), service: u32| Expect::Steered { to, service };
    let cut = |frame: Vec<u8>, len: usize| frame[..len].to_vec();
    let l4_at = frames::ETH_LEN + frames::IPV4_LEN;
    let l4_at6 = frames::ETH_LEN + frames::IPV6_LEN;

    // An IPv4 UDP datagram short enough to need Ethernet padding to the 60-byte minimum.
    let mut padded = v4_udp.segment(40100, 53, b"");
    padded.resize(60, 0);
    // IPv4 claiming version 6 in its header.
    let mut wrong_version = tcp(40200, 80);
    wrong_version[frames::ETH_LEN] = 0x65;
    // A frame whose IP total length does not even cover the headers.
    let short_total = v4_tcp.clone().total_length(30).segment(40300, 80, b"GET /");

    use Expect::Untouched;
    use Reason::*;
    // One case per line: description, frame, verdict, expected output, reason counted.
    #[rustfmt::skip]
    let cases = vec![
        case("IPv4 TCP to a service", tcp(40000, 80), XDP_PASS, steered(pod_tcp, 1), Forwarded),
        case("IPv4 TCP, same flow again (flow table hit)", tcp(40000, 80), XDP_PASS, steered(pod_tcp, 1), Forwarded),
        case("IPv4 UDP to a service", udp(40001, 53), XDP_PASS, steered(pod_udp, 2), Forwarded),
        case("IPv4 UDP without checksum", v4_udp.udp_without_checksum(40002, 53, b"query"), XDP_PASS, steered(pod_udp, 2), Forwarded),
        case("IPv4 UDP with Ethernet padding", padded, XDP_PASS, steered(pod_udp, 2), Forwarded),
        case("IPv6 TCP to a service", tcp6(40003, 443), XDP_PASS, steered(pod6_tcp, 3), Forwarded),
        case("IPv6 UDP to a service", udp6(40004, 53), XDP_PASS, steered(pod6_udp, 4), Forwarded),
        case("IPv4 TCP with a router-alert option (IHL 6)", v4_tcp.clone().options(&[0x94, 0x04, 0, 0]).segment(40005, 80, b"GET /"), XDP_PASS, steered(pod_tcp, 1), Forwarded),
        case("IPv4 UDP with 40 bytes of options (IHL 15)", v4_udp.clone().options(&[1; 40]).segment(40006, 53, b"query"), XDP_PASS, steered(pod_udp, 2), Forwarded),
        case("IPv4 TCP to another address", frames::ipv4(PROTO_TCP, client, Ipv4Addr::new(10, 96, 0, 99), 40007, 80, b"x"), XDP_PASS, Untouched, NotService),
        case("IPv4 TCP to an unknown port", tcp(40008, 8080), XDP_PASS, Untouched, NotService),
        case("IPv4 UDP to a TCP-only port", udp(40009, 80), XDP_PASS, Untouched, NotService),
        case("IPv6 TCP to another address", frames::ipv6(PROTO_TCP, client6, "fd00:96::99".parse().unwrap(), 40010, 443, b"x"), XDP_PASS, Untouched, NotService),
        case("IPv6 UDP to a TCP-only port", udp6(40011, 443), XDP_PASS, Untouched, NotService),
        case("ICMP echo to the service address", frames::icmpv4_echo(client, service), XDP_PASS, Untouched, NotTcpUdp),
        case("GRE to the service address", frames::Ipv4::new(frames::PROTO_GRE, client, service).packet(&[0, 0, 0x08, 0]), XDP_PASS, Untouched, NotTcpUdp),
        case("ICMPv6 echo to the service address", frames::icmpv6_echo(client6, service6), XDP_PASS, Untouched, NotTcpUdp),
        case("IPv4 first fragment (MF) of a service datagram", v4_udp.clone().frag(frames::IPV4_MF).segment(40012, 53, b"query"), XDP_PASS, Untouched, Fragment),
        case("IPv4 later fragment (offset 185)", v4_udp.clone().frag(185).packet(b"rest of a datagram"), XDP_PASS, Untouched, Fragment),
        case("IPv4 middle fragment (MF, offset 1)", v4_udp.clone().frag(frames::IPV4_MF | 1).packet(b"middle of a datagram"), XDP_PASS, Untouched, Fragment),
        case("IPv6 hop-by-hop header before TCP", frames::ipv6_with_extension(frames::IPV6_HOP_BY_HOP, PROTO_TCP, client6, service6, 40013, 443, b"x"), XDP_PASS, Untouched, Ipv6Extension),
        case("IPv6 fragment header before UDP", frames::ipv6_with_extension(frames::IPV6_FRAGMENT, PROTO_UDP, client6, service6, 40014, 53, b"x"), XDP_PASS, Untouched, Fragment),
        case("Ethernet header only", cut(tcp(40015, 80), frames::ETH_LEN), XDP_PASS, Untouched, Truncated),
        case("IPv4 header cut short", cut(tcp(40016, 80), frames::ETH_LEN + 10), XDP_PASS, Untouched, Truncated),
        case("IPv4 options cut short", cut(v4_tcp.clone().options(&[1; 12]).segment(40017, 80, b""), frames::ETH_LEN + 24), XDP_PASS, Untouched, Truncated),
        case("IPv4 IHL 4", v4_tcp.clone().ihl(4).segment(40018, 80, b"GET /"), XDP_PASS, Untouched, Truncated),
        case("IPv4 header with version 6", wrong_version, XDP_PASS, Untouched, Truncated),
        case("IPv4 total length shorter than the headers", short_total, XDP_PASS, Untouched, Truncated),
        case("TCP header cut short", cut(tcp(40019, 80), l4_at + 10), XDP_PASS, Untouched, Truncated),
        case("UDP header cut short", cut(udp(40020, 53), l4_at + 4), XDP_PASS, Untouched, Truncated),
        case("IPv6 header cut short", cut(tcp6(40021, 443), frames::ETH_LEN + 30), XDP_PASS, Untouched, Truncated),
        case("IPv6 TCP header cut short", cut(tcp6(40022, 443), l4_at6 + 12), XDP_PASS, Untouched, Truncated),
        case("VLAN-tagged service packet", frames::vlan_tagged(&tcp(40023, 80), 100), XDP_PASS, Untouched, NotIp),
        case("ARP", frames::arp_request(client, service), XDP_PASS, Untouched, NotIp),
        case("service without backends", frames::ipv4(PROTO_TCP, client, empty, 40024, 80, b"x"), XDP_PASS, Untouched, NoBackend),
        case("table naming a cleared backend slot", frames::ipv4(PROTO_TCP, client, cleared, 40025, 80, b"x"), XDP_PASS, Untouched, NoBackend),
        case("backend of the other address family", frames::ipv4(PROTO_TCP, client, crossed, 40026, 80, b"x"), XDP_PASS, Untouched, NoBackend),
    ];

    for case in &cases {
        let description = case.description;
        let before = lb.reasons();
        let stats_before = match case.expect {
            Expect::Steered { service, .. } => lb.service_counter(service),
            Expect::Untouched => PacketCounter::default(),
        };
        let (verdict, out) = lb.xdp(&case.frame);
        assert_eq!(verdict, case.verdict, "{description}: verdict");
        assert_eq!(
            out.len(),
            case.frame.len(),
            "{description}: length unchanged"
        );
        match case.expect {
            Expect::Untouched => assert_eq!(out, case.frame, "{description}: frame untouched"),
            Expect::Steered { to, service } => {
                assert_steered(&case.frame, &out, to, description);
                let stats = lb.service_counter(service);
                assert_eq!(
                    stats.packets,
                    stats_before.packets + 1,
                    "{description}: service packets"
                );
                assert_eq!(
                    stats.bytes,
                    stats_before.bytes + case.frame.len() as u64,
                    "{description}: service bytes"
                );
                // The flow and its reverse translation are remembered.
                let key = flow_key_of(&case.frame);
                let flow = lb
                    .flow(&key)
                    .unwrap_or_else(|| panic!("{description}: flow recorded"));
                assert_eq!(
                    flow.backend_addr,
                    addr::to_bytes(to.0).0,
                    "{description}: flow backend"
                );
                assert_eq!(
                    flow.backend_port_be,
                    to.1.to_be(),
                    "{description}: flow port"
                );
                assert_eq!(flow.service_id, service, "{description}: flow service");
                let (client_addr, client_port) = frames::source(&case.frame);
                let reply_key =
                    FlowKey::new(to.into(), (client_addr, client_port).into(), key.proto);
                let nat = lb
                    .reply(&reply_key)
                    .unwrap_or_else(|| panic!("{description}: reply translation recorded"));
                assert_eq!(
                    nat.service_addr, key.dst,
                    "{description}: reply source address"
                );
                assert_eq!(
                    nat.service_port_be, key.dport_be,
                    "{description}: reply source port"
                );
            }
        }
        assert_eq!(
            delta(&before, &lb.reasons()),
            vec![(case.reason, 1, case.frame.len() as u64)],
            "{description}: counted once, as {}",
            case.reason.label()
        );
    }
}

/// Both programs load, and stay far from the verifier's limits: a regression guard, and the
/// numbers for `--nocapture`.
#[test]
fn programs_stay_small_for_the_verifier() {
    if !privileged("programs_stay_small_for_the_verifier") {
        return;
    }
    let lb = Lb::load();
    for name in [program_names::XDP_INGRESS, program_names::TC_EGRESS] {
        let info = lb.ebpf.program(name).unwrap().info().expect("program info");
        let verified = info.verified_instruction_count().unwrap_or_default();
        let size = info.size_translated().unwrap_or_default() / 8;
        eprintln!("{name}: {size} instructions, {verified} processed by the verifier");
        assert!(size > 0 && size < 4096, "{name}: {size} instructions");
        assert!(verified < 100_000, "{name}: {verified} verifier steps");
    }
}

#[test]
fn flows_stick_to_their_backend() {
    if !privileged("flows_stick_to_their_backend") {
        return;
    }
    let mut lb = Lb::load();
    let client = Ipv4Addr::new(192, 0, 2, 20);
    let service = Ipv4Addr::new(10, 96, 0, 20);
    let key = ServiceKey::new(service.into(), 80, PROTO_TCP);
    let (x, y, z) = (
        (v4(10, 244, 2, 10), 8080),
        (v4(10, 244, 2, 11), 8080),
        (v4(10, 244, 2, 12), 8080),
    );
    // Table A (base 0) all X.
    lb.add_service(key, 0, &[(10, x.0, x.1)]);
    lb.set_backend(11, y.0, y.1, 0);
    lb.set_backend(12, z.0, z.1, 0);

    let flow_a = frames::ipv4(PROTO_TCP, client, service, 41000, 80, b"a");
    let flow_b = frames::ipv4(PROTO_TCP, client, service, 41001, 80, b"b");
    let flow_c = frames::ipv4(PROTO_TCP, client, service, 41002, 80, b"c");
    let count = |lb: &Lb, reason: Reason| lb.reasons()[reason as usize].packets;

    lb.expect_steered(&flow_a, x, "A, first packet");

    // The daemon's swap: the new table (all Y) into the other half, then the service entry.
    lb.set_table(TABLE, &[11]);
    lb.set_service(key, 0, TABLE, false);
    lb.expect_steered(&flow_a, x, "A after the table moved to Y");
    lb.expect_steered(&flow_b, y, "B, new after the table moved to Y");

    // X terminating (and in no table): its established flow stays.
    lb.set_backend(10, x.0, x.1, BACKEND_TERMINATING);
    lb.expect_steered(&flow_a, x, "A while X terminates");
    assert_eq!(
        count(&lb, Reason::Rescheduled),
        0,
        "nothing rescheduled so far"
    );

    // X removed (slot cleared): A is rescheduled through the table, to Y.
    let a_key = flow_key_of(&flow_a);
    let old_reply = FlowKey::new(x.into(), frames::source(&flow_a).into(), PROTO_TCP);
    assert!(
        lb.reply(&old_reply).is_some(),
        "A's reply translation via X"
    );
    lb.clear_backend(10);
    let forwarded = count(&lb, Reason::Forwarded);
    lb.expect_steered(&flow_a, y, "A after X was removed");
    assert_eq!(
        count(&lb, Reason::Rescheduled),
        1,
        "A counted as rescheduled"
    );
    assert_eq!(
        count(&lb, Reason::Forwarded),
        forwarded + 1,
        "and forwarded"
    );
    assert_eq!(
        lb.flow(&a_key).unwrap().backend_id,
        11,
        "A's flow now names Y"
    );
    assert!(
        lb.reply(&old_reply).is_none(),
        "the stale reply translation is gone"
    );
    let new_reply = FlowKey::new(y.into(), frames::source(&flow_a).into(), PROTO_TCP);
    assert!(
        lb.reply(&new_reply).is_some(),
        "A's reply translation via Y"
    );
    lb.expect_steered(&flow_a, y, "A stays on Y");
    assert_eq!(count(&lb, Reason::Rescheduled), 1, "rescheduled once only");

    // A slot reused for another pod: the flow pinned to the slot's old pod moves on.
    lb.set_table(0, &[12]);
    lb.set_service(key, 0, 0, false);
    lb.expect_steered(&flow_c, z, "C, new, to Z");
    lb.set_backend(12, v4(10, 244, 2, 99), 8080, 0);
    lb.set_table(TABLE, &[11]);
    lb.set_service(key, 0, TABLE, false);
    lb.expect_steered(&flow_c, y, "C after Z's slot went to another pod");
    assert_eq!(
        count(&lb, Reason::Rescheduled),
        2,
        "C counted as rescheduled"
    );

    // A flow whose backend is gone while the service has none left: untouched, NoBackend, and
    // forgotten (the next packet is not counted as rescheduled again).
    lb.set_service(key, 0, TABLE, true);
    lb.clear_backend(11);
    let before = lb.reasons();
    let (verdict, out) = lb.xdp(&flow_a);
    assert_eq!(
        (verdict, &out),
        (XDP_PASS, &flow_a),
        "A untouched without backends"
    );
    let changes = delta(&before, &lb.reasons());
    let reasons: Vec<Reason> = changes.iter().map(|c| c.0).collect();
    assert_eq!(
        reasons,
        [Reason::NoBackend, Reason::Rescheduled],
        "{changes:?}"
    );
    assert!(lb.flow(&a_key).is_none(), "A's stale flow forgotten");
    let before = lb.reasons();
    lb.xdp(&flow_a);
    let changes = delta(&before, &lb.reasons());
    assert_eq!(changes.len(), 1, "only NoBackend: {changes:?}");
    assert_eq!(changes[0].0, Reason::NoBackend);
}

#[test]
fn flow_hash_is_deterministic() {
    if !privileged("flow_hash_is_deterministic") {
        return;
    }
    let mut lb = Lb::load();
    let service: Ipv6Addr = "fd00:96::30".parse().unwrap();
    let key = ServiceKey::new(service.into(), 443, PROTO_TCP);
    let (p, q) = ((v6("fd00:244::30"), 8443), (v6("fd00:244::31"), 8443));
    lb.add_service(key, 2, &[(30, p.0, p.1), (31, q.0, q.1)]);

    let flows: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            let client: Ipv6Addr = format!("2001:db8::{:x}", 0x100 + i).parse().unwrap();
            frames::ipv6(PROTO_TCP, client, service, 42000 + i, 443, b"x")
        })
        .collect();
    let first: Vec<u32> = flows
        .iter()
        .map(|frame| {
            let (_, out) = lb.xdp(frame);
            assert!(frames::checksums_ok(&out));
            lb.flow(&flow_key_of(frame))
                .expect("flow recorded")
                .backend_id
        })
        .collect();
    let on_p = first.iter().filter(|&&id| id == 30).count();
    assert!(
        (8..=56).contains(&on_p),
        "64 flows spread over both backends of a round-robin table: {on_p} on one"
    );

    // With the flow table forgotten (LRU eviction, a restart), every flow hashes to the same
    // table entry again, and so to the same backend.
    for frame in &flows {
        lb.remove_flow(&flow_key_of(frame));
    }
    for (frame, &id) in flows.iter().zip(&first) {
        let (_, out) = lb.xdp(frame);
        let to = if id == 30 { p } else { q };
        assert_steered(frame, &out, to, "re-hashed flow");
    }
    // And a fresh load of the program (a daemon restart) hashes the same way.
    let mut again = Lb::load();
    again.add_service(key, 2, &[(30, p.0, p.1), (31, q.0, q.1)]);
    for (frame, &id) in flows.iter().zip(&first) {
        again.xdp(frame);
        assert_eq!(again.flow(&flow_key_of(frame)).unwrap().backend_id, id);
    }
    assert_eq!(lb.reasons()[Reason::Rescheduled as usize].packets, 0);
}

/// The services of the translation tests, one backend each (ids 1–4): TCP 80 and UDP 53 on
/// `service` to `pod` 8080 and 5353, TCP 443 and UDP 53 on `service6` to `pod6` 8443 and 5353.
fn one_pod_services(
    lb: &mut Lb,
    service: Ipv4Addr,
    service6: Ipv6Addr,
    pod: Ipv4Addr,
    pod6: Ipv6Addr,
) {
    lb.add_service(
        ServiceKey::new(service.into(), 80, PROTO_TCP),
        1,
        &[(1, pod.into(), 8080)],
    );
    lb.add_service(
        ServiceKey::new(service.into(), 53, PROTO_UDP),
        2,
        &[(2, pod.into(), 5353)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 443, PROTO_TCP),
        3,
        &[(3, pod6.into(), 8443)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 53, PROTO_UDP),
        4,
        &[(4, pod6.into(), 5353)],
    );
}

#[test]
fn replies_are_translated_back() {
    if !privileged("replies_are_translated_back") {
        return;
    }
    let mut lb = Lb::load();
    let client = Ipv4Addr::new(192, 0, 2, 40);
    let client6: Ipv6Addr = "2001:db8::40".parse().unwrap();
    let service = Ipv4Addr::new(10, 96, 0, 40);
    let service6: Ipv6Addr = "fd00:96::40".parse().unwrap();
    let pod = Ipv4Addr::new(10, 244, 4, 5);
    let pod6: Ipv6Addr = "fd00:244::45".parse().unwrap();
    one_pod_services(&mut lb, service, service6, pod, pod6);

    struct Reply {
        description: &'static str,
        /// The client's packet that creates the flow.
        request: Vec<u8>,
        /// The pod's answer.
        reply: Vec<u8>,
        /// The address and port it must appear to come from.
        from: (IpAddr, u16),
    }
    let v4_udp_reply = frames::Ipv4::new(PROTO_UDP, pod, client);
    let replies = vec![
        Reply {
            description: "IPv4 TCP",
            request: frames::ipv4(PROTO_TCP, client, service, 43000, 80, b"GET /"),
            reply: frames::ipv4(PROTO_TCP, pod, client, 8080, 43000, b"200 OK"),
            from: (service.into(), 80),
        },
        Reply {
            description: "IPv4 UDP",
            request: frames::ipv4(PROTO_UDP, client, service, 43001, 53, b"query"),
            reply: frames::ipv4(PROTO_UDP, pod, client, 5353, 43001, b"answer"),
            from: (service.into(), 53),
        },
        Reply {
            description: "IPv4 UDP without checksum",
            request: frames::ipv4(PROTO_UDP, client, service, 43002, 53, b"query"),
            reply: v4_udp_reply.udp_without_checksum(5353, 43002, b"answer"),
            from: (service.into(), 53),
        },
        Reply {
            description: "IPv4 UDP with options",
            request: frames::ipv4(PROTO_UDP, client, service, 43003, 53, b"query"),
            reply: v4_udp_reply
                .clone()
                .options(&[0x94, 0x04, 0, 0])
                .segment(5353, 43003, b"answer"),
            from: (service.into(), 53),
        },
        Reply {
            description: "IPv6 TCP",
            request: frames::ipv6(PROTO_TCP, client6, service6, 43004, 443, b"GET /"),
            reply: frames::ipv6(PROTO_TCP, pod6, client6, 8443, 43004, b"200 OK"),
            from: (service6.into(), 443),
        },
        Reply {
            description: "IPv6 UDP",
            request: frames::ipv6(PROTO_UDP, client6, service6, 43005, 53, b"query"),
            reply: frames::ipv6(PROTO_UDP, pod6, client6, 5353, 43005, b"answer"),
            from: (service6.into(), 53),
        },
    ];
    for case in &replies {
        let description = case.description;
        let (verdict, _) = lb.xdp(&case.request);
        assert_eq!(verdict, XDP_PASS);
        let before = lb.reasons();
        let (verdict, out) = lb.tc(&case.reply);
        assert_eq!(verdict, TC_ACT_PIPE, "{description}: TC verdict");
        assert_eq!(
            out.len(),
            case.reply.len(),
            "{description}: length unchanged"
        );
        assert_translated(&case.reply, &out, case.from, description);
        assert_eq!(
            delta(&before, &lb.reasons()),
            vec![(Reason::ReplyTranslated, 1, case.reply.len() as u64)],
            "{description}: counted as reply_translated"
        );
    }

    // A reply translation evicted on its own is restored by the flow's packets within
    // REPLY_CHECK_INTERVAL of them (the programs do not look on every packet).
    let request = &replies[0].request;
    let reply_key = flow_key_of(&replies[0].reply);
    lb.remove_reply(&reply_key);
    let (_, out) = lb.tc(&replies[0].reply);
    assert_eq!(
        out, replies[0].reply,
        "without its entry the reply passes untranslated"
    );
    let packets = (1..=u32::from(REPLY_CHECK_INTERVAL) + 1).find(|_| {
        lb.xdp(request);
        lb.reply(&reply_key).is_some()
    });
    assert!(
        packets.is_some(),
        "restored within {} client packets",
        REPLY_CHECK_INTERVAL + 1
    );
    let (_, out) = lb.tc(&replies[0].reply);
    assert_translated(
        &replies[0].reply,
        &out,
        replies[0].from,
        "after the restore",
    );

    // Everything else leaves untouched and uncounted.
    let untouched: Vec<(&str, Vec<u8>)> = vec![
        (
            "the pod to another client port",
            frames::ipv4(PROTO_TCP, pod, client, 8080, 43999, b"x"),
        ),
        (
            "the pod from another port",
            frames::ipv4(PROTO_TCP, pod, client, 9090, 43000, b"x"),
        ),
        (
            "another pod to the client",
            frames::ipv4(
                PROTO_TCP,
                Ipv4Addr::new(10, 244, 4, 6),
                client,
                8080,
                43000,
                b"x",
            ),
        ),
        (
            "UDP on a TCP flow's ports",
            frames::ipv4(PROTO_UDP, pod, client, 8080, 43000, b"x"),
        ),
        (
            "the client's own request on egress",
            replies[0].request.clone(),
        ),
        (
            "the node's own traffic",
            frames::ipv4(
                PROTO_TCP,
                Ipv4Addr::new(10, 0, 0, 1),
                client,
                22,
                50000,
                b"x",
            ),
        ),
        ("ICMP from the pod", frames::icmpv4_echo(pod, client)),
        ("ICMPv6 from the pod", frames::icmpv6_echo(pod6, client6)),
        ("ARP", frames::arp_request(pod, client)),
        (
            "a fragment of the pod's reply",
            frames::Ipv4::new(PROTO_UDP, pod, client)
                .frag(frames::IPV4_MF)
                .segment(5353, 43001, b"x"),
        ),
        (
            "the reply cut inside the TCP header",
            replies[0].reply[..frames::ETH_LEN + frames::IPV4_LEN + 10].to_vec(),
        ),
    ];
    for (description, frame) in &untouched {
        let before = lb.reasons();
        let (verdict, out) = lb.tc(frame);
        assert_eq!(verdict, TC_ACT_PIPE, "{description}: TC verdict");
        assert_eq!(&out, frame, "{description}: untouched");
        assert_eq!(
            delta(&before, &lb.reasons()),
            vec![],
            "{description}: not counted"
        );
    }
}

/// `sessionAffinity: ClientIP`: once a client's first new flow has a pod, its other new flows
/// go there too (where Maglev would spread them), until the affinity times out or the pod stops
/// taking new flows.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_pod() {
    if !privileged("client_ip_affinity_keeps_a_client_on_one_pod") {
        return;
    }
    let mut lb = Lb::load();
    let client = Ipv4Addr::new(192, 0, 2, 60);
    let service = Ipv4Addr::new(10, 96, 0, 60);
    let key = ServiceKey::new(service.into(), 80, PROTO_TCP);
    let pods = [v4(10, 244, 6, 5), v4(10, 244, 6, 6)];
    lb.add_service(key, 1, &[(1, pods[0], 8080), (2, pods[1], 8080)]);
    let ports: Vec<u16> = (45000..45050).collect();
    let frame = |port: u16| frames::ipv4(PROTO_TCP, client, service, port, 80, b"GET /");
    let pod_of = |lb: &Lb, port: u16| {
        let (verdict, out) = lb.xdp(&frame(port));
        assert_eq!(verdict, XDP_PASS);
        frames::destination(&out).0
    };
    let forget = |lb: &mut Lb, port: u16| lb.remove_flow(&flow_key_of(&frame(port)));

    // Without affinity, Maglev spreads the client's flows over both pods.
    let maglev: Vec<IpAddr> = ports.iter().map(|&port| pod_of(&lb, port)).collect();
    assert!(
        pods.iter().all(|pod| maglev.contains(pod)),
        "per-flow spread without affinity: {maglev:?}"
    );
    for &port in &ports {
        forget(&mut lb, port);
    }

    lb.set_affinity(key, 60);
    let first = pod_of(&lb, ports[0]);
    assert_eq!(first, maglev[0], "the first flow is Maglev's pick");
    for &port in &ports[1..] {
        assert_eq!(
            pod_of(&lb, port),
            first,
            "port {port} sticks to the client's pod"
        );
    }
    let affinity_key = AffinityKey {
        client: addr::to_bytes(client.into()).0,
        service_id: 1,
        family: 4,
        pad: [0; 3],
    };
    let bound = lb
        .affinities()
        .get(&affinity_key, 0)
        .expect("affinity recorded");
    assert_eq!(bound.backend_addr, addr::to_bytes(first).0);
    // Another client is bound on its own.
    let other = frames::ipv4(
        PROTO_TCP,
        Ipv4Addr::new(192, 0, 2, 61),
        service,
        45000,
        80,
        b"x",
    );
    assert_eq!(lb.xdp(&other).0, XDP_PASS);
    assert_eq!(lb.affinities().iter().count(), 2);

    // Timed out (its last new flow long ago): the next new flow is Maglev's pick again.
    let (i, elsewhere) = maglev
        .iter()
        .enumerate()
        .find(|(_, pod)| **pod != first)
        .map(|(i, pod)| (i, *pod))
        .unwrap();
    forget(&mut lb, ports[i]);
    assert_eq!(
        pod_of(&lb, ports[i]),
        first,
        "still bound before the timeout"
    );
    forget(&mut lb, ports[i]);
    let mut expired = bound;
    expired.last_seen_ns = 0;
    lb.affinities().insert(affinity_key, expired, 0).unwrap();
    assert_eq!(
        pod_of(&lb, ports[i]),
        elsewhere,
        "after the timeout the flow goes where Maglev sends it"
    );
    // …and the client is bound to that pod from then on.
    forget(&mut lb, ports[0]);
    assert_eq!(pod_of(&lb, ports[0]), elsewhere);

    // A pod that stops taking new flows (terminating) releases its clients.
    let id = if elsewhere == pods[0] { 1 } else { 2 };
    lb.set_backend(id, elsewhere, 8080, BACKEND_TERMINATING);
    lb.set_table(TABLE, &[3 - id]);
    forget(&mut lb, ports[1]);
    assert_ne!(
        pod_of(&lb, ports[1]),
        elsewhere,
        "a terminating pod gets no new flows through affinity"
    );
}

/// Fragments through the uplink's TC ingress, IPv4 and IPv6: the first fragment of a service
/// datagram is steered like a whole packet, later ones follow it; each output is compared byte
/// for byte with the fragment of the same datagram sent to the pod directly.
#[test]
fn fragments_follow_their_first() {
    if !privileged("fragments_follow_their_first") {
        return;
    }
    let mut lb = Lb::load();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let (client, service, pod) = (
        Ipv4Addr::new(192, 0, 2, 70),
        Ipv4Addr::new(10, 96, 0, 70),
        Ipv4Addr::new(10, 244, 7, 5),
    );
    lb.add_service(
        ServiceKey::new(service.into(), 53, PROTO_UDP),
        1,
        &[(1, pod.into(), 5353)],
    );
    // Each datagram its own IP ID (the client port's), as a sender numbers them.
    fragments_case(
        &lb,
        |sport, to: Option<Ipv4Addr>| {
            let (dst, dport) = to.map_or((service, 53), |pod| (pod, 5353));
            frames::ipv4_udp_fragments((client, dst, sport), sport, dport, &payload, 1480)
        },
        (1, pod),
        Ipv4Addr::new(10, 96, 0, 99),
    );

    let (client6, service6, pod6): (Ipv6Addr, Ipv6Addr, Ipv6Addr) = (
        "2001:db8:2::70".parse().unwrap(),
        "2001:db8:100::70".parse().unwrap(),
        "fd00:244:7::5".parse().unwrap(),
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 53, PROTO_UDP),
        2,
        &[(2, pod6.into(), 5353)],
    );
    fragments_case(
        &lb,
        |sport, to: Option<Ipv6Addr>| {
            let (dst, dport) = to.map_or((service6, 53), |pod| (pod, 5353));
            let id = 0x5eed_0000 | u32::from(sport);
            frames::ipv6_udp_fragments((client6, dst, id), sport, dport, &payload, 1448)
        },
        (2, pod6),
        "2001:db8:100::99".parse().unwrap(),
    );
}

/// One family of [`fragments_follow_their_first`]: `fragments(sport, None)` are a datagram's
/// two fragments to the service (ID from `sport`), `fragments(sport, Some(addr))` the same
/// datagram to `addr` on the pod's port; `pod` is the one backend of service `service_id`,
/// `other` an address of no service.
fn fragments_case<A: Copy>(
    lb: &Lb,
    fragments: impl Fn(u16, Option<A>) -> [Vec<u8>; 2],
    (service_id, pod): (u32, A),
    other: A,
) {
    const TC_ACT_OK: u32 = 0;
    let run = |frame: &[u8]| {
        let before = lb.reasons();
        let (verdict, out) = lb.run_tc(program_names::TC_INGRESS, frame);
        assert_eq!(verdict, TC_ACT_OK);
        (out, delta(&before, &lb.reasons()))
    };
    let ipv4 = |frame: &[u8]| frames::layout(frame).family == 4;

    // In order: both fragments steered, and counted as forwarded (no delivery flags here).
    let [first, second] = fragments(46000, None);
    let [first_sent, second_sent] = fragments(46000, Some(pod));
    let (out, counted) = run(&first);
    assert_eq!(
        out, first_sent,
        "the first fragment goes to the pod, UDP checksum and all"
    );
    assert!(!ipv4(&out) || frames::ipv4_header_checksum_ok(&out));
    assert_eq!(counted, vec![(Reason::Forwarded, 1, first.len() as u64)]);
    let (out, counted) = run(&second);
    assert_eq!(out, second_sent, "the later fragment follows it");
    assert!(!ipv4(&out) || frames::ipv4_header_checksum_ok(&out));
    assert_eq!(counted, vec![(Reason::Forwarded, 1, second.len() as u64)]);
    assert_eq!(
        lb.service_counter(service_id).packets,
        1,
        "the service counts the first"
    );

    // A later fragment arriving before its first: untouched, counted as a fragment.
    let [first, second] = fragments(46001, None);
    let [first_sent, _] = fragments(46001, Some(pod));
    let (out, counted) = run(&second);
    assert_eq!(out, second, "untouched");
    assert_eq!(counted, vec![(Reason::Fragment, 1, second.len() as u64)]);
    let (out, _) = run(&first);
    assert_eq!(out, first_sent, "its first still goes to the pod");

    // Fragments of no service, and a later fragment of an unknown datagram, pass untouched.
    let [other_first, other_second] = fragments(46002, Some(other));
    let (out, counted) = run(&other_first);
    assert_eq!(out, other_first);
    // Sent to `other` on the pod's port: a service address nowhere, so the service lookup
    // misses.
    assert_eq!(
        counted,
        vec![(Reason::NotService, 1, other_first.len() as u64)]
    );
    let (out, counted) = run(&other_second);
    assert_eq!(out, other_second);
    assert_eq!(
        counted,
        vec![(Reason::Fragment, 1, other_second.len() as u64)]
    );

    // Malformed fragments of service datagrams (found by `cargo xtask fuzz`): untouched,
    // counted as truncated, and a malformed first leaves no entry for its later fragments.
    let corrupt = |mut frame: Vec<u8>| {
        frame[frames::ETH_LEN + 10] ^= 0x5a;
        frame
    };
    let [first, second] = fragments(46003, None);
    let mut malformed_firsts = vec![(
        "an IP length beyond the frame",
        first[..first.len() - 100].to_vec(),
    )];
    if ipv4(&first) {
        malformed_firsts.push(("a bad IPv4 header checksum", corrupt(first.clone())));
    }
    for (description, malformed) in malformed_firsts {
        let (out, counted) = run(&malformed);
        assert_eq!(
            out, malformed,
            "first fragment with {description}: untouched"
        );
        assert_eq!(
            counted,
            vec![(Reason::Truncated, 1, malformed.len() as u64)],
            "first fragment with {description}"
        );
        let (out, counted) = run(&second);
        assert!(out == second, "after a first with {description}: no entry");
        assert_eq!(counted, vec![(Reason::Fragment, 1, second.len() as u64)]);
    }
    let [_, second_sent] = fragments(46003, Some(pod));
    run(&first);
    if ipv4(&second) {
        let bad_second = corrupt(second.clone());
        let (out, counted) = run(&bad_second);
        assert_eq!(
            out, bad_second,
            "a later fragment with a bad header checksum"
        );
        assert_eq!(
            counted,
            vec![(Reason::Truncated, 1, bad_second.len() as u64)]
        );
    }
    let cut_second = second[..second.len() - 10].to_vec();
    let (out, counted) = run(&cut_second);
    assert_eq!(out, cut_second, "a later fragment cut short: untouched");
    assert_eq!(
        counted,
        vec![(Reason::Truncated, 1, cut_second.len() as u64)]
    );
    let (out, _) = run(&second);
    assert_eq!(
        out, second_sent,
        "the well-formed one still follows its first"
    );
}

type Frame = Vec<u8>;

/// ICMP errors about steered flows, through BPF_PROG_TEST_RUN: a router's error about a
/// translated reply goes to the pod (uplink TC ingress), a pod's error about a translated
/// request leaves as the service's (TC egress, the same code as on the pod's interface). The
/// expected output of each is built from scratch: the error the pod would have got (or sent)
/// had there been no translation, so every byte, checksums included, is compared.
#[test]
fn icmp_errors_follow_their_flow() {
    if !privileged("icmp_errors_follow_their_flow") {
        return;
    }
    const TC_ACT_OK: u32 = 0;
    let mut lb = Lb::load();
    let client = Ipv4Addr::new(192, 0, 2, 50);
    let client6: Ipv6Addr = "2001:db8::50".parse().unwrap();
    let router = Ipv4Addr::new(192, 0, 2, 254);
    let router6: Ipv6Addr = "2001:db8::fe".parse().unwrap();
    let service = Ipv4Addr::new(10, 96, 0, 50);
    let service6: Ipv6Addr = "fd00:96::50".parse().unwrap();
    let pod = Ipv4Addr::new(10, 244, 5, 5);
    let pod6: Ipv6Addr = "fd00:244::55".parse().unwrap();
    one_pod_services(&mut lb, service, service6, pod, pod6);
    // The flows: client ports 44000.. to each service.
    for request in [
        frames::ipv4(PROTO_TCP, client, service, 44000, 80, b"GET /"),
        frames::ipv4(PROTO_UDP, client, service, 44001, 53, b"query"),
        frames::ipv4(PROTO_UDP, client, service, 44002, 53, b"query"),
        frames::ipv6(PROTO_TCP, client6, service6, 44003, 443, b"GET /"),
        frames::ipv6(PROTO_UDP, client6, service6, 44004, 53, b"query"),
    ] {
        assert_eq!(lb.xdp(&request).0, XDP_PASS);
    }

    let body = [0x5a_u8; 200];
    // A pod's reply as it left the pod, and as the client's side saw it (translated).
    let reply4 = |proto: u8, pod_port: u16, service_port: u16, client_port: u16| {
        (
            frames::ipv4(proto, pod, client, pod_port, client_port, &body),
            frames::ipv4(proto, service, client, service_port, client_port, &body),
        )
    };
    let reply6 = |proto: u8, pod_port: u16, service_port: u16, client_port: u16| {
        (
            frames::ipv6(proto, pod6, client6, pod_port, client_port, &body),
            frames::ipv6(proto, service6, client6, service_port, client_port, &body),
        )
    };
    let (tcp, tcp_seen) = reply4(PROTO_TCP, 8080, 80, 44000);
    let (udp, udp_seen) = reply4(PROTO_UDP, 5353, 53, 44001);
    let udp_none =
        frames::Ipv4::new(PROTO_UDP, pod, client).udp_without_checksum(5353, 44002, &body);
    let udp_none_seen =
        frames::Ipv4::new(PROTO_UDP, service, client).udp_without_checksum(53, 44002, &body);
    let (tcp6, tcp6_seen) = reply6(PROTO_TCP, 8443, 443, 44003);
    let (udp6, udp6_seen) = reply6(PROTO_UDP, 5353, 53, 44004);
    let q = frames::ip_packet;
    // RFC 792's minimum quote: the IP header and 8 bytes (a TCP quote then lacks its checksum).
    let short4 = |frame: &[u8]| frames::ip_packet(frame)[..frames::IPV4_LEN + 8].to_vec();
    let short6 = |frame: &[u8]| frames::ip_packet(frame)[..frames::IPV6_LEN + 8].to_vec();

    // Router → service (as the client's side saw the reply) becomes router → pod (as the pod sent it).
    let to_pod4 = |kind: u8, code: u8, mtu: u32, seen: &[u8], sent: &[u8]| {
        (
            frames::icmpv4_error(router, service, kind, code, mtu, seen),
            Some(frames::icmpv4_error(router, pod, kind, code, mtu, sent)),
        )
    };
    let to_pod6 = |kind: u8, code: u8, mtu: u32, seen: &[u8], sent: &[u8]| {
        (
            frames::icmpv6_error(router6, service6, kind, code, mtu, seen),
            Some(frames::icmpv6_error(router6, pod6, kind, code, mtu, sent)),
        )
    };
    let untouched4 = |kind: u8, code: u8, to: Ipv4Addr, seen: &[u8]| {
        (frames::icmpv4_error(router, to, kind, code, 0, seen), None)
    };

    // A quote of the translated reply cut inside the ports, and one of a later fragment.
    let no_ports = q(&tcp_seen)[..frames::IPV4_LEN + 2].to_vec();
    let header_only = q(&tcp_seen)[..frames::IPV4_LEN].to_vec();
    let later_fragment = q(&frames::Ipv4::new(PROTO_UDP, service, client)
        .frag(185)
        .packet(&body))
    .to_vec();
    let (_, unknown_seen) = reply4(PROTO_TCP, 8080, 80, 44999);
    let (_, unknown6_seen) = reply6(PROTO_TCP, 8443, 443, 44999);

    #[rustfmt::skip]
    let cases: Vec<(&str, (Frame, Option<Frame>))> = vec![
        ("v4 frag needed, TCP, whole reply quoted", to_pod4(3, 4, 1400, q(&tcp_seen), q(&tcp))),
        ("v4 frag needed, TCP, IP header + 8 bytes quoted", to_pod4(3, 4, 1400, &short4(&tcp_seen), &short4(&tcp))),
        ("v4 port unreachable, UDP, IP header + 8 bytes quoted", to_pod4(3, 3, 0, &short4(&udp_seen), &short4(&udp))),
        ("v4 time exceeded, UDP, whole reply quoted", to_pod4(11, 0, 0, q(&udp_seen), q(&udp))),
        ("v4 frag needed, UDP without checksum", to_pod4(3, 4, 1400, q(&udp_none_seen), q(&udp_none))),
        ("v6 packet too big, TCP, whole reply quoted", to_pod6(2, 0, 1280, q(&tcp6_seen), q(&tcp6))),
        ("v6 packet too big, TCP, IPv6 header + 8 bytes quoted", to_pod6(2, 0, 1280, &short6(&tcp6_seen), &short6(&tcp6))),
        ("v6 unreachable, UDP, whole reply quoted", to_pod6(1, 4, 0, q(&udp6_seen), q(&udp6))),
        ("v6 time exceeded, UDP, IPv6 header + 8 bytes quoted", to_pod6(3, 0, 0, &short6(&udp6_seen), &short6(&udp6))),
        ("v4 frag needed about an unknown flow", untouched4(3, 4, service, q(&unknown_seen))),
        ("v6 packet too big about an unknown flow", (frames::icmpv6_error(router6, service6, 2, 0, 1280, q(&unknown6_seen)), None)),
        ("v4 quote cut inside the ports", untouched4(3, 4, service, &no_ports)),
        ("v4 quote of the IP header only", untouched4(3, 4, service, &header_only)),
        ("v4 quote of a later fragment", untouched4(3, 4, service, &later_fragment)),
        ("v4 error to another address than the quoted source", untouched4(3, 4, Ipv4Addr::new(10, 0, 0, 1), q(&tcp_seen))),
        ("v4 parameter problem (not translated)", untouched4(12, 0, service, q(&tcp_seen))),
        ("v4 echo request to the service", (frames::icmpv4_echo(client, service), None)),
        ("v6 echo request to the service", (frames::icmpv6_echo(client6, service6), None)),
    ];
    for (description, (error, expected)) in &cases {
        let before = lb.reasons();
        let (verdict, out) = lb.run_tc(program_names::TC_INGRESS, error);
        assert_eq!(verdict, TC_ACT_OK, "{description}: verdict");
        let (expected, reason) = match expected {
            Some(expected) => (expected, Reason::IcmpTranslated),
            None => (error, Reason::NotTcpUdp),
        };
        assert_eq!(&out, expected, "{description}: output bytes");
        assert!(frames::icmp_checksums_ok(&out), "{description}: checksums");
        assert_eq!(
            delta(&before, &lb.reasons()),
            vec![(reason, 1, error.len() as u64)],
            "{description}: counted as {}",
            reason.label()
        );
    }

    // Malformed errors about a steered flow (found by `cargo xtask fuzz`): untouched, counted
    // as truncated, never redirected into the pod.
    let (error, _) = to_pod4(3, 4, 1400, q(&tcp_seen), q(&tcp));
    let mut bad_header = error.clone();
    bad_header[frames::ETH_LEN + 10] ^= 0x5a;
    let cut = error[..error.len() - 40].to_vec();
    let (error6, _) = to_pod6(2, 0, 1280, q(&tcp6_seen), q(&tcp6));
    let cut6 = error6[..error6.len() - 40].to_vec();
    for (description, malformed) in [
        ("v4 error with a bad header checksum", bad_header),
        ("v4 error whose IP length reaches beyond the frame", cut),
        (
            "v6 error whose payload length reaches beyond the frame",
            cut6,
        ),
    ] {
        let before = lb.reasons();
        let (verdict, out) = lb.run_tc(program_names::TC_INGRESS, &malformed);
        assert_eq!(verdict, TC_ACT_OK, "{description}: verdict");
        assert!(out == malformed, "{description}: untouched");
        assert_eq!(
            delta(&before, &lb.reasons()),
            vec![(Reason::Truncated, 1, malformed.len() as u64)],
            "{description}: counted as truncated"
        );
    }

    // The pod's errors about a request (client → pod) leave as the service's.
    let request = frames::ipv4(PROTO_UDP, client, pod, 44001, 5353, b"query");
    let request_seen = frames::ipv4(PROTO_UDP, client, service, 44001, 53, b"query");
    let request6 = frames::ipv6(PROTO_UDP, client6, pod6, 44004, 5353, b"query");
    let request6_seen = frames::ipv6(PROTO_UDP, client6, service6, 44004, 53, b"query");
    let stranger = frames::ipv4(PROTO_UDP, client, pod, 44998, 5353, b"query");
    #[rustfmt::skip]
    let outward: Vec<(&str, Frame, Option<Frame>)> = vec![
        ("v4 port unreachable from the pod", frames::icmpv4_error(pod, client, 3, 3, 0, q(&request)), Some(frames::icmpv4_error(service, client, 3, 3, 0, q(&request_seen)))),
        ("v6 port unreachable from the pod", frames::icmpv6_error(pod6, client6, 1, 4, 0, q(&request6)), Some(frames::icmpv6_error(service6, client6, 1, 4, 0, q(&request6_seen)))),
        ("v4 port unreachable about an unknown flow", frames::icmpv4_error(pod, client, 3, 3, 0, q(&stranger)), None),
        ("the translated error again (egress after the pod's program)", frames::icmpv4_error(service, client, 3, 3, 0, q(&request_seen)), None),
    ];
    for (description, error, expected) in &outward {
        let before = lb.reasons();
        let (verdict, out) = lb.tc(error);
        assert_eq!(verdict, TC_ACT_PIPE, "{description}: verdict");
        let (expected, counted) = match expected {
            Some(expected) => (
                expected,
                vec![(Reason::IcmpReplyTranslated, 1, error.len() as u64)],
            ),
            None => (error, vec![]),
        };
        assert_eq!(&out, expected, "{description}: output bytes");
        assert!(frames::icmp_checksums_ok(&out), "{description}: checksums");
        assert_eq!(
            delta(&before, &lb.reasons()),
            counted,
            "{description}: counters"
        );
    }
}

/// Client, node and pod namespaces: client `eth0` — node `uplink` (XDP, TC egress) and
/// node `pod0` — pod `eth0`. The service address sits on the node's `lo`, as the daemon puts
/// it; the pod listens on its own address, and only the fast path can connect the two.
struct Topology {
    /// Dropped first: detaches the programs before the namespaces go.
    lb: Option<Lb>,
    client: netns::NetNs,
    node: netns::NetNs,
    pod: netns::NetNs,
}

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 2);
const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 1);
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const CLIENT_V6: &str = "fd10:210::2";
const SERVICE_V6: &str = "fd10:96::1";
const POD_V6: &str = "fd10:211::2";

impl Topology {
    fn new(tag: &str) -> Topology {
        let client = netns::NetNs::new(&format!("{tag}c"));
        let node = netns::NetNs::new(&format!("{tag}n"));
        let pod = netns::NetNs::new(&format!("{tag}p"));
        netns::veth_pair(
            &client,
            "eth0",
            "10.210.0.2/24",
            &node,
            "uplink",
            "10.210.0.1/24",
        );
        netns::veth_pair(
            &node,
            "pod0",
            "10.211.0.1/24",
            &pod,
            "eth0",
            "10.211.0.2/24",
        );
        for (ns, iface, addr) in [
            (&client, "eth0", "fd10:210::2/64"),
            (&node, "uplink", "fd10:210::1/64"),
            (&node, "pod0", "fd10:211::1/64"),
            (&pod, "eth0", "fd10:211::2/64"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", iface, "nodad"]);
        }
        node.ip(&["addr", "add", "10.96.1.1/32", "dev", "lo"]);
        node.ip(&["addr", "add", "fd10:96::1/128", "dev", "lo"]);
        client.ip(&["route", "add", "10.96.1.1/32", "via", "10.210.0.1"]);
        client.ip(&["-6", "route", "add", "fd10:96::1/128", "via", "fd10:210::1"]);
        pod.ip(&["route", "add", "default", "via", "10.211.0.1"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd10:211::1"]);
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            netns::sh(node.command("sysctl").args(["-qw", sysctl]));
        }
        Topology {
            lb: None,
            client,
            node,
            pod,
        }
    }

    /// Loads and attaches both programs on the node's uplink.
    fn attach(&mut self) {
        let lb = self.node.run_inside(|| {
            let mut lb = Lb::load();
            let xdp: &mut Xdp = lb
                .ebpf
                .program_mut(program_names::XDP_INGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            xdp.attach("uplink", XdpMode::Driver)
                .expect("native XDP on the uplink veth");
            let tc: &mut SchedClassifier = lb
                .ebpf
                .program_mut(program_names::TC_EGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            tc.attach("uplink", TcAttachType::Egress)
                .expect("TC egress on the uplink");
            lb
        });
        self.lb = Some(lb);
    }

    fn lb(&mut self) -> &mut Lb {
        self.lb.as_mut().expect("attached")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The namespaces (and with them the veths) go when their guards drop, after this.
        self.lb.take();
    }
}

/// Echo servers in the pod: TCP (v4 and v6) on 8080, UDP on 5353, each answering until the
/// listener is dropped with the namespace.
fn start_pod_servers(pod: &netns::NetNs) {
    let (tcp4, tcp6, udp4, udp6) = pod.run_inside(|| {
        (
            TcpListener::bind((POD_V4, 8080)).expect("bind TCP 8080"),
            TcpListener::bind((POD_V6.parse::<Ipv6Addr>().unwrap(), 8080)).expect("bind TCP6"),
            UdpSocket::bind((POD_V4, 5353)).expect("bind UDP 5353"),
            UdpSocket::bind((POD_V6.parse::<Ipv6Addr>().unwrap(), 5353)).expect("bind UDP6"),
        )
    });
    for listener in [tcp4, tcp6] {
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    // The peer the pod sees: the client itself (source address kept).
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = stream.write_all(format!("peer {peer}\n").as_bytes());
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for socket in [udp4, udp6] {
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let mut answer = format!("peer {} ", from.ip()).into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&answer, from);
            }
        });
    }
}

/// Connects from the client namespace to the service and checks the echo of `bytes` bytes.
fn tcp_through_service(
    client: &netns::NetNs,
    service: SocketAddr,
    expected_peer: &str,
    bytes: usize,
) {
    let expected_peer = expected_peer.to_owned();
    client.run_inside(move || {
        let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("connect to {service} through the fast path: {err}"));
        assert_eq!(
            stream.peer_addr().unwrap(),
            service,
            "the reply came from the service"
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut greeting = Vec::new();
        let mut byte = [0u8; 1];
        while greeting.last() != Some(&b'\n') {
            stream.read_exact(&mut byte).expect("read the greeting");
            greeting.push(byte[0]);
        }
        assert_eq!(
            String::from_utf8_lossy(&greeting).trim(),
            format!("peer {expected_peer}"),
            "the pod saw the client's own address"
        );
        let payload: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = stream.try_clone().unwrap();
        let sent = payload.clone();
        let sender = std::thread::spawn(move || writer.write_all(&sent).expect("send"));
        let mut echoed = vec![0u8; bytes];
        stream.read_exact(&mut echoed).expect("read the echo");
        sender.join().unwrap();
        assert!(echoed == payload, "{bytes} bytes echoed intact");
    });
}

fn udp_through_service(client: &netns::NetNs, service: SocketAddr, expected_peer: &str) {
    let expected_peer = expected_peer.to_owned();
    client.run_inside(move || {
        let bind: SocketAddr = if service.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 2048];
        // UDP may lose the first datagram to neighbour resolution: a few tries.
        for _ in 0..5 {
            socket.send_to(b"hello", service).unwrap();
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                assert_eq!(from, service, "the answer came from the service");
                assert_eq!(
                    String::from_utf8_lossy(&buf[..n]),
                    format!("peer {expected_peer} hello")
                );
                return;
            }
        }
        panic!("no UDP answer from {service} through the fast path");
    });
}

fn end_to_end(tag: &str, complete_checksums: bool) {
    let mut topology = Topology::new(tag);
    if complete_checksums {
        topology.client.tx_checksum_off("eth0");
        topology.pod.tx_checksum_off("eth0");
    }
    start_pod_servers(&topology.pod);
    topology.attach();

    let service6: Ipv6Addr = SERVICE_V6.parse().unwrap();
    let pod6: IpAddr = POD_V6.parse().unwrap();
    let lb = topology.lb();
    lb.add_service(
        ServiceKey::new(SERVICE_V4.into(), 80, PROTO_TCP),
        1,
        &[(1, POD_V4.into(), 8080)],
    );
    lb.add_service(
        ServiceKey::new(SERVICE_V4.into(), 53, PROTO_UDP),
        2,
        &[(2, POD_V4.into(), 5353)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 80, PROTO_TCP),
        3,
        &[(3, pod6, 8080)],
    );
    lb.add_service(
        ServiceKey::new(service6.into(), 53, PROTO_UDP),
        4,
        &[(4, pod6, 5353)],
    );

    let bytes = if complete_checksums { 4096 } else { 1 << 20 };
    tcp_through_service(
        &topology.client,
        (SERVICE_V4, 80).into(),
        &CLIENT_V4.to_string(),
        bytes,
    );
    tcp_through_service(&topology.client, (service6, 80).into(), CLIENT_V6, bytes);
    udp_through_service(
        &topology.client,
        (SERVICE_V4, 53).into(),
        &CLIENT_V4.to_string(),
    );
    udp_through_service(&topology.client, (service6, 53).into(), CLIENT_V6);

    let reasons = topology.lb().reasons();
    let get = |reason: Reason| reasons[reason as usize].packets;
    assert!(
        get(Reason::Forwarded) >= 8,
        "client packets forwarded: {reasons:?}"
    );
    assert!(
        get(Reason::ReplyTranslated) >= 8,
        "pod replies translated: {reasons:?}"
    );
    assert_eq!(get(Reason::Truncated), 0, "{reasons:?}");
    assert_eq!(get(Reason::Rescheduled), 0, "{reasons:?}");
    // Not a service port: the node's own stack answers (here with a refusal), untouched.
    topology.client.run_inside(|| {
        let refused = TcpStream::connect_timeout(&(SERVICE_V4, 81).into(), Duration::from_secs(5));
        assert_eq!(
            refused.expect_err("nothing listens on the node").kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    });
}

/// Complete checksums on both ends (transmit offload off): the receiving kernels verify every
/// checksum the two programs updated.
#[test]
fn end_to_end_with_complete_checksums() {
    if !privileged("end_to_end_with_complete_checksums") {
        return;
    }
    end_to_end("e2ec", true);
}

/// The pods' usual traffic: CHECKSUM_PARTIAL and TSO super-packets (a 1 MiB echo) through the
/// TC program.
#[test]
fn end_to_end_with_offloads() {
    if !privileged("end_to_end_with_offloads") {
        return;
    }
    end_to_end("e2eo", false);
}
