//! The TC programs of the fast path through BPF_PROG_TEST_RUN, with the maps written by the
//! daemon's own `Tables`:
//!
//! - `ingress_cases`: `l3lb_tc_ingress` on the uplink, a table of frames with their expected
//!   verdict (`TC_ACT_REDIRECT` into the pod, or `TC_ACT_OK` to the kernel), exact output bytes
//!   (destination rewritten, TTL decremented when the node forwards the packet itself, checksums
//!   verified by the independent routine in `l3lb_tests::frames`) and reason counter.
//! - `pod_replies_leave_by_the_fib`: `l3lb_tc_pod` on a pod's reply, in a namespace whose FIB
//!   knows the client (next hop resolved, not yet resolved, no route): the translated reply with
//!   the next hop's MAC addresses and a redirect, or the kernel's routing; and the fragments of
//!   a reply too big for the pod's link, IPv4 and IPv6, compared byte for byte with the same
//!   datagram's fragments sent from the service.
//!
//! Which interface a redirect targets is not visible to a test run (the kernel only records it
//! for the redirect that follows a real receive); `tests/tests/fastpath_e2e.rs` shows the
//! packets arriving in the right pods.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use l3lb::fastpath::plan::Delivery;
use l3lb_common::{PROTO_TCP, PROTO_UDP, Reason, program_names};
use l3lb_tests::{
    frames, privileged,
    programs::{Fastpath, FibNode, TC_ACT_OK, TC_ACT_REDIRECT},
};

const TABLE_SIZE: u32 = 13;
const MAX_SERVICES: u32 = 8;

/// What a case's output must be.
enum Expect {
    /// Exactly the input.
    Untouched,
    /// Destination rewritten to `to`, TTL (hop limit) decremented when `forwarded`, checksums
    /// valid, every other byte as it came.
    Rewritten { to: (IpAddr, u16), forwarded: bool },
}

struct Case {
    description: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    expect: Expect,
    reason: Reason,
}

fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frames::set_ttl(&mut frame, ttl);
    if frames::layout(&frame).family == 4 {
        // Recompute the header checksum the independent way.
        frame[frames::ETH_LEN + 10..frames::ETH_LEN + 12].fill(0);
        let header_len = usize::from(frame[frames::ETH_LEN] & 0x0f) * 4;
        let sum = frames::checksum(0, &frame[frames::ETH_LEN..frames::ETH_LEN + header_len]);
        frame[frames::ETH_LEN + 10..frames::ETH_LEN + 12].copy_from_slice(&sum.to_be_bytes());
    }
    frame
}

fn check(case: &Case, verdict: u32, out: &[u8]) {
    let what = case.description;
    assert_eq!(verdict, case.verdict, "{what}: verdict");
    match case.expect {
        Expect::Untouched => assert_eq!(out, case.frame.as_slice(), "{what}: untouched"),
        Expect::Rewritten { to, forwarded } => {
            let mut expected = case.frame.clone();
            frames::set_destination(&mut expected, to.0, to.1);
            if forwarded {
                frames::set_ttl(&mut expected, frames::ttl(&case.frame) - 1);
            }
            assert_eq!(
                frames::without_checksums(out),
                frames::without_checksums(&expected),
                "{what}: destination rewritten{}, every other byte identical",
                if forwarded {
                    " and TTL decremented"
                } else {
                    ""
                }
            );
            let layout = frames::layout(&case.frame);
            let no_udp_checksum =
                layout.proto == PROTO_UDP && frames::l4_checksum(&case.frame) == 0;
            if no_udp_checksum {
                // 0 is "none" for IPv4 and invalid for IPv6: left as it came either way.
                assert_eq!(
                    frames::l4_checksum(out),
                    0,
                    "{what}: a UDP checksum of 0 stays 0"
                );
            }
            if !(no_udp_checksum && layout.family == 6) {
                assert!(frames::checksums_ok(out), "{what}: checksums verify");
            }
        }
    }
}

/// A TCP/UDP frame over IPv4 or IPv6, whose 5-tuple can be read back.
fn frames_have_ports(frame: &[u8]) -> bool {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    (ether_type == 0x0800 || ether_type == 0x86dd)
        && matches!(frames::layout(frame).proto, PROTO_TCP | PROTO_UDP)
        && frame.len() >= frames::layout(frame).l4 + 4
}

#[test]
fn ingress_cases() {
    if !privileged("ingress_cases") {
        return;
    }
    let mut lb = Fastpath::load(TABLE_SIZE, MAX_SERVICES);
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let client6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let service = Ipv4Addr::new(10, 96, 0, 10);
    let service6: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let pod = (IpAddr::from([10, 244, 1, 5]), 8080);
    let pod_neigh = (IpAddr::from([10, 244, 2, 5]), 5353);
    let pod_stack = (IpAddr::from([10, 244, 3, 5]), 8053);
    let pod6 = (
        IpAddr::from("fd00:244::5".parse::<Ipv6Addr>().unwrap()),
        8443,
    );

    let peer = Delivery::Peer { ifindex: 41 };
    lb.service((service.into(), 80, PROTO_TCP), pod, peer);
    lb.service(
        (service.into(), 53, PROTO_UDP),
        pod_neigh,
        Delivery::Neigh { ifindex: 42 },
    );
    lb.service((service.into(), 54, PROTO_UDP), pod_stack, Delivery::Stack);
    lb.service((service6.into(), 443, PROTO_TCP), pod6, peer);
    let pod6_udp = (
        IpAddr::from("fd00:244::6".parse::<Ipv6Addr>().unwrap()),
        5353,
    );
    lb.service((service6.into(), 53, PROTO_UDP), pod6_udp, peer);

    let v4_udp = frames::Ipv4::new(PROTO_UDP, client, service);
    let cases = vec![
        Case {
            description: "IPv4 TCP to a pod on a veth pair: into its namespace",
            frame: frames::ipv4(PROTO_TCP, client, service, 40000, 80, b"GET /"),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Rewritten {
                to: pod,
                forwarded: true,
            },
            reason: Reason::RedirectPeer,
        },
        Case {
            description: "IPv6 TCP to a pod on a veth pair",
            frame: frames::ipv6(PROTO_TCP, client6, service6, 40001, 443, b"hello"),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Rewritten {
                to: pod6,
                forwarded: true,
            },
            reason: Reason::RedirectPeer,
        },
        Case {
            description: "IPv4 UDP to a pod behind another interface: out of it, neighbour resolved",
            frame: frames::ipv4(PROTO_UDP, client, service, 40002, 53, b"query"),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Rewritten {
                to: pod_neigh,
                forwarded: true,
            },
            reason: Reason::RedirectNeigh,
        },
        Case {
            description: "IPv4 UDP without checksum stays without",
            frame: v4_udp.udp_without_checksum(40003, 53, b"query"),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Rewritten {
                to: pod_neigh,
                forwarded: true,
            },
            reason: Reason::RedirectNeigh,
        },
        Case {
            description: "a pod userspace could not place: rewritten, routed by the kernel",
            frame: frames::ipv4(PROTO_UDP, client, service, 40004, 54, b"query"),
            verdict: TC_ACT_OK,
            expect: Expect::Rewritten {
                to: pod_stack,
                forwarded: false,
            },
            reason: Reason::Forwarded,
        },
        Case {
            description: "TTL 1: rewritten, TTL left for the kernel to answer time exceeded",
            frame: with_ttl(frames::ipv4(PROTO_TCP, client, service, 40005, 80, b"x"), 1),
            verdict: TC_ACT_OK,
            expect: Expect::Rewritten {
                to: pod,
                forwarded: false,
            },
            reason: Reason::Forwarded,
        },
        Case {
            description: "IPv6 hop limit 1",
            frame: with_ttl(
                frames::ipv6(PROTO_TCP, client6, service6, 40006, 443, b"x"),
                1,
            ),
            verdict: TC_ACT_OK,
            expect: Expect::Rewritten {
                to: pod6,
                forwarded: false,
            },
            reason: Reason::Forwarded,
        },
        Case {
            description: "not a service port",
            frame: frames::ipv4(PROTO_TCP, client, service, 40007, 81, b"x"),
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::NotService,
        },
        Case {
            description: "ICMP to the service address",
            frame: frames::icmpv4_echo(client, service),
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::NotTcpUdp,
        },
        Case {
            description: "an IPv4 header claiming more than the frame holds",
            frame: frames::Ipv4::new(PROTO_TCP, client, service)
                .ihl(15)
                .segment(40008, 80, b""),
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::Truncated,
        },
        Case {
            description: "IPv6 UDP with a checksum of 0 (invalid): rewritten, the 0 left alone",
            frame: {
                let mut frame = frames::ipv6(PROTO_UDP, client6, service6, 40009, 53, b"q");
                let at = frames::layout(&frame).l4 + 6;
                frame[at..at + 2].fill(0);
                frame
            },
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Rewritten {
                to: pod6_udp,
                forwarded: true,
            },
            reason: Reason::RedirectPeer,
        },
        Case {
            description: "malformed: 42 bytes whose IPv4 header claims 60",
            frame: v4_udp.clone().total_length(60).segment(40010, 53, b""),
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::Truncated,
        },
        Case {
            description: "malformed: a bad IPv4 header checksum",
            frame: {
                let mut frame = frames::ipv4(PROTO_UDP, client, service, 40011, 53, b"query");
                frame[frames::ETH_LEN + 10] ^= 0x5a;
                frame
            },
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::Truncated,
        },
        Case {
            description: "malformed: a UDP length that disagrees with the IP length",
            frame: {
                let mut frame = frames::ipv4(PROTO_UDP, client, service, 40012, 53, b"query");
                let at = frames::layout(&frame).l4 + 4;
                frame[at + 1] += 4;
                frame
            },
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::Truncated,
        },
        Case {
            description: "malformed: a TCP data offset below 5",
            frame: {
                let mut frame = frames::ipv4(PROTO_TCP, client, service, 40013, 80, b"GET");
                let at = frames::layout(&frame).l4 + 12;
                frame[at] = 0x40;
                frame
            },
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::Truncated,
        },
        Case {
            description: "ARP",
            frame: frames::arp_request(client, service),
            verdict: TC_ACT_OK,
            expect: Expect::Untouched,
            reason: Reason::NotIp,
        },
    ];
    for case in &cases {
        let mut result = None;
        let counted = lb.counted(|| result = Some(lb.run(program_names::TC_INGRESS, &case.frame)));
        let (verdict, out) = result.unwrap();
        check(case, verdict, &out);
        assert_eq!(
            counted,
            [(case.reason, 1)],
            "{}: counted once, as {:?}",
            case.description,
            case.reason
        );
        if matches!(case.expect, Expect::Untouched) && frames_have_ports(&case.frame) {
            assert!(
                !lb.has_flow(&case.frame),
                "{}: no flow state left behind",
                case.description
            );
        }
    }
}

#[test]
fn pod_replies_leave_by_the_fib() {
    if !privileged("pod_replies_leave_by_the_fib") {
        return;
    }
    // A node whose uplink knows one client network through a resolved next hop, one through a
    // next hop not resolved yet, and nothing about a third.
    let FibNode {
        ns: node,
        gateway_mac,
        uplink_mac,
    } = FibNode::new("tcfib");

    node.run_inside(move || {
        let mut lb = Fastpath::load(TABLE_SIZE, MAX_SERVICES);
        let service = Ipv4Addr::new(10, 96, 0, 20);
        let service6: Ipv6Addr = "fd00:96::20".parse().unwrap();
        let pod = Ipv4Addr::new(10, 244, 1, 7);
        let pod6: Ipv6Addr = "fd00:244::7".parse().unwrap();
        let peer = Delivery::Peer { ifindex: 41 };
        lb.service((service.into(), 80, PROTO_TCP), (pod.into(), 8080), peer);
        lb.service((service6.into(), 80, PROTO_UDP), (pod6.into(), 8080), peer);

        struct Reply {
            description: &'static str,
            request: Vec<u8>,
            reply: Vec<u8>,
            from: (IpAddr, u16),
            verdict: u32,
            /// The next hop's MAC addresses (destination, source), when the FIB knew them.
            macs: Option<([u8; 6], [u8; 6])>,
            reason: Reason,
        }
        let resolved = Some((gateway_mac, uplink_mac));
        let replies = [
            Reply {
                description: "IPv4, next hop resolved: MACs from the FIB, redirected",
                request: frames::ipv4(PROTO_TCP, Ipv4Addr::new(192, 0, 2, 7), service, 41000, 80, b"GET"),
                reply: frames::ipv4(PROTO_TCP, pod, Ipv4Addr::new(192, 0, 2, 7), 8080, 41000, b"200"),
                from: (service.into(), 80),
                verdict: TC_ACT_REDIRECT,
                macs: resolved,
                reason: Reason::ReplyRedirected,
            },
            Reply {
                description: "IPv6, next hop resolved",
                request: frames::ipv6(PROTO_UDP, "2001:db8::7".parse().unwrap(), service6, 41001, 80, b"q"),
                reply: frames::ipv6(PROTO_UDP, pod6, "2001:db8::7".parse().unwrap(), 8080, 41001, b"a"),
                from: (service6.into(), 80),
                verdict: TC_ACT_REDIRECT,
                macs: resolved,
                reason: Reason::ReplyRedirected,
            },
            Reply {
                description: "IPv4, next hop not resolved yet: redirected for the kernel to resolve",
                request: frames::ipv4(PROTO_TCP, Ipv4Addr::new(198, 18, 0, 7), service, 41002, 80, b"GET"),
                reply: frames::ipv4(PROTO_TCP, pod, Ipv4Addr::new(198, 18, 0, 7), 8080, 41002, b"200"),
                from: (service.into(), 80),
                verdict: TC_ACT_REDIRECT,
                macs: None,
                reason: Reason::ReplyRedirected,
            },
            Reply {
                description: "IPv4, no route to the client: translated, left to the kernel",
                request: frames::ipv4(PROTO_TCP, Ipv4Addr::new(203, 0, 113, 7), service, 41003, 80, b"GET"),
                reply: frames::ipv4(PROTO_TCP, pod, Ipv4Addr::new(203, 0, 113, 7), 8080, 41003, b"200"),
                from: (service.into(), 80),
                verdict: TC_ACT_OK,
                macs: None,
                reason: Reason::ReplyToStack,
            },
        ];
        for reply in &replies {
            let what = reply.description;
            let (verdict, _) = lb.run(program_names::TC_INGRESS, &reply.request);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: the request created the flow");
            let mut result = None;
            let counted = lb.counted(|| result = Some(lb.run(program_names::TC_POD, &reply.reply)));
            let (verdict, out) = result.unwrap();
            assert_eq!(verdict, reply.verdict, "{what}: verdict");
            assert_eq!(counted, [(reply.reason, 1)], "{what}: counted once");
            let mut expected = reply.reply.clone();
            frames::set_source(&mut expected, reply.from.0, reply.from.1);
            if reply.verdict == TC_ACT_REDIRECT {
                frames::set_ttl(&mut expected, frames::ttl(&reply.reply) - 1);
            }
            if let Some((destination, source)) = reply.macs {
                frames::set_macs(&mut expected, destination, source);
            }
            assert_eq!(
                frames::without_checksums(&out),
                frames::without_checksums(&expected),
                "{what}: source translated, TTL and MACs as the FIB says, the rest identical"
            );
            assert!(frames::checksums_ok(&out), "{what}: checksums verify");
        }

        // The pod's own traffic (no steered flow) passes untouched and uncounted.
        let own = frames::ipv4(PROTO_UDP, pod, Ipv4Addr::new(192, 0, 2, 8), 5000, 53, b"dns");
        let mut result = None;
        let counted = lb.counted(|| result = Some(lb.run(program_names::TC_POD, &own)));
        let (verdict, out) = result.unwrap();
        assert_eq!((verdict, out.as_slice()), (TC_ACT_OK, own.as_slice()));
        assert!(counted.is_empty(), "not counted: {counted:?}");

        // A reply too big for the pod's link leaves as fragments: each gets the service as its
        // source and leaves by the FIB, byte for byte the fragments of the same datagram sent
        // from the service (TTL and MACs as the FIB says).
        lb.service((service.into(), 53, PROTO_UDP), (pod.into(), 5353), peer);
        // Two fragments that both fit the uplink (the builders make exactly two).
        let payload: Vec<u8> = (0..2000u32).map(|i| (i % 253) as u8).collect();
        let client = Ipv4Addr::new(192, 0, 2, 9);
        let client6: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let request = frames::ipv4(PROTO_UDP, client, service, 41010, 53, b"q");
        let request6 = frames::ipv6(PROTO_UDP, client6, service6, 41011, 80, b"q");
        let cases = [
            (
                request,
                frames::ipv4_udp_fragments((pod, client, 7), 5353, 41010, &payload, 1480),
                frames::ipv4_udp_fragments((service, client, 7), 53, 41010, &payload, 1480),
            ),
            (
                request6,
                frames::ipv6_udp_fragments((pod6, client6, 7), 8080, 41011, &payload, 1448),
                frames::ipv6_udp_fragments((service6, client6, 7), 80, 41011, &payload, 1448),
            ),
        ];
        for (request, replies, expected) in cases {
            let (verdict, _) = lb.run(program_names::TC_INGRESS, &request);
            assert_eq!(verdict, TC_ACT_REDIRECT, "the request created the flow");
            // Pod's own fragments of another datagram: untouched and uncounted; a later
            // fragment with no first before it: untouched, counted as a fragment.
            let layout = frames::layout(&replies[0]);
            let mut unknown = replies[1].clone();
            let id_at = if layout.family == 4 {
                frames::ETH_LEN + 4
            } else {
                frames::ETH_LEN + frames::IPV6_LEN + 4
            };
            unknown[id_at] ^= 0xff;
            let mut result = None;
            let counted = lb.counted(|| result = Some(lb.run(program_names::TC_POD, &unknown)));
            assert_eq!(result.unwrap(), (TC_ACT_OK, unknown.clone()));
            assert_eq!(counted, [(Reason::Fragment, 1)]);

            for (reply, expected) in replies.iter().zip(&expected) {
                let mut result = None;
                let counted = lb.counted(|| result = Some(lb.run(program_names::TC_POD, reply)));
                let (verdict, out) = result.unwrap();
                assert_eq!(
                    (verdict, counted.as_slice()),
                    (TC_ACT_REDIRECT, &[(Reason::ReplyRedirected, 1)][..]),
                    "family {}",
                    layout.family
                );
                let mut expected = with_ttl(expected.clone(), frames::ttl(expected) - 1);
                frames::set_macs(&mut expected, gateway_mac, uplink_mac);
                assert_eq!(out, expected, "a fragment of the reply, translated");
            }
        }
    });
}
