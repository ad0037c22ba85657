//! The oracle on hand-built outcomes, without the kernel: it accepts what the programs should
//! do and catches each way of getting it wrong.
use std::net::Ipv4Addr;

use l3lb_common::{PROTO_TCP, PROTO_UDP};

use super::{Oracle, Outcome, Program};
use crate::{
    frames::{self, ETH_LEN},
    fuzz::{generate::fix_ipv4_checksum, world::World},
    programs::{TC_ACT_OK, TC_ACT_PIPE, TC_ACT_REDIRECT, XDP_PASS},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A backend of SERVICE:80/TCP, reached through a veth peer.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

fn oracle() -> Oracle {
    Oracle::new(World::new(), [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
}

fn request() -> Vec<u8> {
    frames::ipv4(PROTO_TCP, CLIENT, SERVICE, 40000, 80, b"GET /")
}

/// The request as it should reach `to`, built from scratch (so with valid checksums).
fn request_to(to: Ipv4Addr, port: u16) -> Vec<u8> {
    frames::ipv4(PROTO_TCP, CLIENT, to, 40000, port, b"GET /")
}

fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[ETH_LEN + 8] = ttl;
    fix_ipv4_checksum(&mut frame, ETH_LEN);
    frame
}

#[test]
fn a_service_packet_must_be_steered_to_a_backend_with_valid_checksums() {
    let mut oracle = oracle();
    let input = request();
    let good = request_to(POD, 8080);
    assert_eq!(
        oracle.check(Program::Xdp, &input, XDP_PASS, &good),
        Ok(Outcome::Steered)
    );
    assert!(
        oracle
            .check(Program::Xdp, &input, XDP_PASS, &input)
            .is_err(),
        "unsteered"
    );
    let stranger = request_to(Ipv4Addr::new(10, 244, 9, 9), 8080);
    assert!(
        oracle
            .check(Program::Xdp, &input, XDP_PASS, &stranger)
            .is_err(),
        "no backend"
    );
    let terminating = request_to(Ipv4Addr::new(10, 244, 3, 2), 8443);
    let to_443 = frames::ipv4(PROTO_TCP, CLIENT, SERVICE, 40000, 443, b"GET /");
    assert!(
        oracle
            .check(Program::Xdp, &to_443, XDP_PASS, &terminating)
            .is_err(),
        "a terminating backend takes no new flow"
    );
    let mut bad_l4 = good.clone();
    *bad_l4.last_mut().unwrap() ^= 1;
    assert!(
        oracle
            .check(Program::Xdp, &input, XDP_PASS, &bad_l4)
            .is_err(),
        "payload changed"
    );
    let mut bad_check = good.clone();
    let at = frames::layout(&good).l4 + 16;
    bad_check[at] ^= 0x10;
    assert!(
        oracle
            .check(Program::Xdp, &input, XDP_PASS, &bad_check)
            .is_err(),
        "TCP checksum"
    );
    assert!(
        oracle.check(Program::Xdp, &input, 1, &good).is_err(),
        "XDP_DROP"
    );
}

#[test]
fn tc_ingress_redirects_exactly_the_direct_deliveries_and_decrements_their_ttl() {
    let mut oracle = oracle();
    let input = request();
    let redirected = with_ttl(request_to(POD, 8080), 63);
    let program = Program::TcIngress;
    assert_eq!(
        oracle.check(program, &input, TC_ACT_REDIRECT, &redirected),
        Ok(Outcome::Steered)
    );
    let kept_ttl = request_to(POD, 8080);
    assert!(
        oracle
            .check(program, &input, TC_ACT_REDIRECT, &kept_ttl)
            .is_err()
    );
    assert!(
        oracle
            .check(program, &input, TC_ACT_OK, &redirected)
            .is_err()
    );
    // TTL 1: rewritten for the kernel to answer, not redirected.
    let last_hop = with_ttl(request(), 1);
    let to_stack = with_ttl(request_to(POD, 8080), 1);
    assert_eq!(
        oracle.check(program, &last_hop, TC_ACT_OK, &to_stack),
        Ok(Outcome::Steered)
    );
}

#[test]
fn malformed_and_foreign_frames_must_pass_untouched() {
    let mut oracle = oracle();
    let mut malformed = request();
    malformed[ETH_LEN + 10] ^= 0x5a;
    assert!(oracle.malformed_flow(&malformed).is_some());
    assert_eq!(
        oracle.check(Program::Xdp, &malformed, XDP_PASS, &malformed),
        Ok(Outcome::Untouched)
    );
    let mut rewritten = request_to(POD, 8080);
    rewritten[ETH_LEN + 10] ^= 0x5a;
    assert!(
        oracle
            .check(Program::Xdp, &malformed, XDP_PASS, &rewritten)
            .is_err()
    );

    let arp = frames::arp_request(CLIENT, SERVICE);
    let mut changed = arp.clone();
    changed[20] ^= 1;
    assert!(
        oracle
            .check(Program::TcIngress, &arp, TC_ACT_OK, &changed)
            .is_err()
    );
    assert!(
        oracle
            .check(Program::TcPod, &arp, TC_ACT_REDIRECT, &arp)
            .is_err()
    );
}

#[test]
fn a_reply_may_only_leave_as_its_service() {
    let mut oracle = oracle();
    let pod_udp = Ipv4Addr::new(10, 244, 2, 1);
    let reply = frames::ipv4(PROTO_UDP, pod_udp, CLIENT, 5353, 40001, b"answer");
    let translated = frames::ipv4(PROTO_UDP, SERVICE, CLIENT, 53, 40001, b"answer");
    assert_eq!(
        oracle.check(Program::TcEgress, &reply, TC_ACT_PIPE, &translated),
        Ok(Outcome::Translated)
    );
    let wrong_port = frames::ipv4(PROTO_UDP, SERVICE, CLIENT, 54, 40001, b"answer");
    assert!(
        oracle
            .check(Program::TcEgress, &reply, TC_ACT_PIPE, &wrong_port)
            .is_err()
    );
    // The client is routed through a resolved next hop: out of the uplink, TTL down, MACs set.
    let mut sent = with_ttl(translated.clone(), 63);
    frames::set_macs(&mut sent, [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        oracle.check(Program::TcPod, &reply, TC_ACT_REDIRECT, &sent),
        Ok(Outcome::Translated)
    );
    assert!(
        oracle
            .check(Program::TcPod, &reply, TC_ACT_OK, &translated)
            .is_err()
    );
    // Too big for the uplink: the kernel's routing gets it (and answers "fragmentation needed").
    let big = frames::ipv4(PROTO_UDP, pod_udp, CLIENT, 5353, 40001, &[7; 1500]);
    let big_translated = frames::ipv4(PROTO_UDP, SERVICE, CLIENT, 53, 40001, &[7; 1500]);
    assert_eq!(
        oracle.check(Program::TcPod, &big, TC_ACT_OK, &big_translated),
        Ok(Outcome::Translated)
    );
    let unrouted = Ipv4Addr::new(203, 0, 113, 7);
    let reply = frames::ipv4(PROTO_UDP, pod_udp, unrouted, 5353, 40001, b"answer");
    let translated = frames::ipv4(PROTO_UDP, SERVICE, unrouted, 53, 40001, b"answer");
    assert_eq!(
        oracle.check(Program::TcPod, &reply, TC_ACT_OK, &translated),
        Ok(Outcome::Translated)
    );
}
