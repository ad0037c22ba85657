//! The configuration the fuzzer installs, as the daemon would (`Tables::set`): services on two
//! IPv4 addresses and one IPv6 address, backends reached every way (veth peer, neighbour, the
//! kernel's routing), one terminating backend and one service with `ClientIP` affinity; and the
//! client networks the generator draws from, some routed by the node's FIB and some not.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use l3lb::fastpath::plan::{Delivery, Target, Vip};
use l3lb_common::{PROTO_TCP, PROTO_UDP};

/// One installed service and its backends.
#[derive(Clone, Debug)]
pub struct Service {
    pub vip: Vip,
    pub targets: Vec<Target>,
    pub affinity: Option<u32>,
}

/// Everything the generator and the oracle know about the maps' contents.
#[derive(Clone, Debug)]
pub struct World {
    pub services: Vec<Service>,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse().expect("an IPv6 address"))
}

fn target(ip: IpAddr, port: u16, delivery: Delivery) -> Target {
    Target {
        ip,
        port,
        terminating: false,
        delivery,
    }
}

/// Service addresses: steered on the listed ports only.
pub const SERVICE_V4: [u8; 4] = [10, 96, 0, 10];
pub const SERVICE_V4_OTHER: [u8; 4] = [10, 96, 0, 11];
pub const SERVICE_V6: &str = "fd00:96::10";

impl World {
    pub fn new() -> World {
        let peer = Delivery::Peer { ifindex: 41 };
        let neigh = Delivery::Neigh { ifindex: 42 };
        let [a, b, c, d] = SERVICE_V4;
        let [e, f, g, h] = SERVICE_V4_OTHER;
        let vip = |ip: IpAddr, port: u16, proto: u8| Vip { ip, port, proto };
        let mut terminating = target(v4(10, 244, 3, 2), 8443, peer);
        terminating.terminating = true;
        let services = vec![
            Service {
                vip: vip(v4(a, b, c, d), 80, PROTO_TCP),
                targets: vec![
                    target(v4(10, 244, 1, 1), 8080, peer),
                    target(v4(10, 244, 1, 2), 8080, neigh),
                    target(v4(10, 244, 1, 3), 8080, Delivery::Stack),
                ],
                affinity: None,
            },
            Service {
                vip: vip(v4(a, b, c, d), 53, PROTO_UDP),
                targets: vec![
                    target(v4(10, 244, 2, 1), 5353, peer),
                    target(v4(10, 244, 2, 2), 5353, Delivery::Stack),
                ],
                affinity: None,
            },
            Service {
                vip: vip(v4(a, b, c, d), 443, PROTO_TCP),
                targets: vec![target(v4(10, 244, 3, 1), 8443, peer), terminating],
                affinity: Some(60),
            },
            Service {
                vip: vip(v4(e, f, g, h), 4789, PROTO_UDP),
                targets: vec![target(v4(10, 244, 4, 1), 4789, neigh)],
                affinity: None,
            },
            Service {
                vip: vip(v6(SERVICE_V6), 443, PROTO_TCP),
                targets: vec![
                    target(v6("fd00:244::1"), 8443, peer),
                    target(v6("fd00:244::2"), 8443, neigh),
                ],
                affinity: None,
            },
            Service {
                vip: vip(v6(SERVICE_V6), 53, PROTO_UDP),
                targets: vec![target(v6("fd00:244::3"), 5353, Delivery::Stack)],
                affinity: None,
            },
        ];
        World { services }
    }

    /// The service at this address, port and protocol.
    pub fn service(&self, ip: IpAddr, port: u16, proto: u8) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.vip.ip == ip && s.vip.port == port && s.vip.proto == proto)
    }

    /// The service whose backend this is (each backend serves one service here), and the
    /// backend.
    pub fn backend(&self, ip: IpAddr, port: u16, proto: u8) -> Option<(&Service, &Target)> {
        self.services.iter().find_map(|s| {
            let t = s.targets.iter().find(|t| t.ip == ip && t.port == port)?;
            (s.vip.proto == proto).then_some((s, t))
        })
    }

    /// Every address that is some service's.
    pub fn is_service_address(&self, ip: IpAddr) -> bool {
        self.services.iter().any(|s| s.vip.ip == ip)
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// Client networks: the FIB of [`crate::programs::FibNode`] routes 192.0.2.0/24 and
/// 2001:db8::/64 through a resolved next hop and 198.18.0.0/24 through an unresolved one;
/// 203.0.113.0/24 and 2001:db8:ff::/64 have no route.
pub fn client_v4(network: u8, host: u8) -> IpAddr {
    match network % 3 {
        0 => v4(192, 0, 2, host),
        1 => v4(198, 18, 0, host),
        _ => v4(203, 0, 113, host),
    }
}

pub fn client_v6(network: u8, host: u16) -> IpAddr {
    let prefix: u16 = if network.is_multiple_of(2) { 0 } else { 0xff };
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, prefix, 0, 0, 0, 0, host))
}

/// Whether the node's FIB routes a client address (the pod program may then send a reply out
/// itself), and whether it knows the next hop's MAC address.
pub fn route_of(ip: IpAddr) -> Option<bool> {
    match ip {
        IpAddr::V4(v4) => match v4.octets() {
            [192, 0, 2, _] => Some(true),
            [198, 18, 0, _] => Some(false),
            _ => None,
        },
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[..4] == [0x2001, 0xdb8, 0, 0]).then_some(true)
        }
    }
}
