//! Between `core::net` addresses and the maps' encoding: a 16-byte `addr` field (IPv4 in the
//! first 4 bytes, the rest zero) with a `family` of [`FAMILY_IPV4`] or [`FAMILY_IPV6`], and ports
//! in network byte order. The daemon, `l3lb inspect` and the tests all convert here, so the
//! encoding is written down once.
//!
//! The constructors end in `..Default::default()`: the layouts grow, and new fields start zeroed.
#![allow(clippy::needless_update)]
use core::net::{IpAddr, SocketAddr};

use crate::{Backend, FAMILY_IPV4, FAMILY_IPV6, FlowKey, ServiceKey};

/// `ip` as an `addr` field and its `family`.
pub fn to_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (addr, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The address an `addr` field of `family` holds; `None` for an unknown family (a cleared
/// entry has family 0).
pub fn from_bytes(addr: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        FAMILY_IPV6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

impl ServiceKey {
    pub fn new(ip: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = to_bytes(ip);
        ServiceKey {
            addr,
            port_be: port.to_be(),
            proto,
            family,
            ..Default::default()
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        from_bytes(&self.addr, self.family)
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

impl Backend {
    /// A slot in use for the pod at `ip`:`port`, with `flags` such as [`crate::BACKEND_TERMINATING`].
    pub fn new(ip: IpAddr, port: u16, flags: u32) -> Self {
        let (addr, family) = to_bytes(ip);
        Backend {
            addr,
            port_be: port.to_be(),
            family,
            in_use: 1,
            flags,
            ..Default::default()
        }
    }

    /// The pod's address and port; `None` for a slot that was never filled.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            from_bytes(&self.addr, self.family)?,
            u16::from_be(self.port_be),
        ))
    }
}

impl FlowKey {
    /// The key of a flow from `src` to `dst` (both of one family: `src`'s is recorded).
    pub fn new(src: SocketAddr, dst: SocketAddr, proto: u8) -> Self {
        let (src_addr, family) = to_bytes(src.ip());
        let (dst_addr, _) = to_bytes(dst.ip());
        FlowKey {
            src: src_addr,
            dst: dst_addr,
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto,
            family,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::PROTO_TCP;

    #[test]
    fn ipv4_sits_in_the_first_four_bytes() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 100, 7));
        let (addr, family) = to_bytes(ip);
        assert_eq!(family, FAMILY_IPV4);
        assert_eq!(addr, [10, 0, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(from_bytes(&addr, family), Some(ip));
    }

    #[test]
    fn ipv6_round_trips_and_unknown_families_do_not() {
        let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7));
        let (addr, family) = to_bytes(ip);
        assert_eq!(family, FAMILY_IPV6);
        assert_eq!(from_bytes(&addr, family), Some(ip));
        assert_eq!(from_bytes(&addr, 0), None);
    }

    #[test]
    fn ports_are_in_network_byte_order() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 100, 7));
        let key = ServiceKey::new(ip, 0x1234, PROTO_TCP);
        assert_eq!(key.port_be.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!((key.ip(), key.port()), (Some(ip), 0x1234));

        let backend = Backend::new(ip, 8080, 0);
        assert_eq!(backend.in_use, 1);
        assert_eq!(backend.socket_addr(), Some(SocketAddr::new(ip, 8080)));
        assert_eq!(Backend::default().socket_addr(), None);

        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000);
        let flow = FlowKey::new(client, SocketAddr::new(ip, 80), PROTO_TCP);
        assert_eq!(flow.sport_be.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(flow.dport_be.to_ne_bytes(), 80u16.to_be_bytes());
        assert_eq!(flow.family, FAMILY_IPV4);
    }
}
