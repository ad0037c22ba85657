//! The local pods' side of the fast path: how a packet reaches each pod without the host's
//! routing ([`Resolver`], from the host's own routes and links, the way the CNI set them up),
//! and the reply program on every pod interface that a backend uses ([`PodLinks`]).
//!
//! Nothing inside a pod's namespace is read or touched: the route to the pod's address names
//! the host-side interface, and that interface's link says whether its peer lives in another
//! namespace (a veth or netkit pair, for `bpf_redirect_peer`) or not.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use l3lb_common::program_names;
use rtnetlink::{
    packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};
use tracing::{debug, info, warn};

use super::{loader, plan::Delivery};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink ({what}): {source}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "attaching {} to pod interface {interface}: {detail}",
        program_names::TC_POD
    )]
    Attach { interface: String, detail: String },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Netlink { .. } => "fastpath_resolve",
            Error::Attach { .. } => "fastpath_attach",
        }
    }
}

/// What the host's link table says about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `netkit`, `bridge`, …; `None` for physical devices.
    pub kind: Option<String>,
    /// The peer of a veth/netkit pair lives in another namespace (the link carries
    /// `IFLA_LINK_NETNSID`).
    pub peer_elsewhere: bool,
}

impl Link {
    fn is_pair(&self) -> bool {
        matches!(self.kind.as_deref(), Some("veth" | "netkit"))
    }
}

/// Synchronous rtnetlink requests of the current namespace: one route or link look-up each.
pub struct Resolver {
    socket: Socket,
    seq: u32,
}

impl Resolver {
    pub fn new() -> Result<Resolver, Error> {
        let netlink = |source| Error::Netlink {
            what: "opening a route socket".to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(netlink)?;
        socket.bind_auto().map_err(netlink)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(netlink)?;
        Ok(Resolver { socket, seq: 0 })
    }

    /// How packets reach the local pod at `ip`, except through `uplinks`: straight into its
    /// namespace when the route to it leaves through a veth/netkit whose peer lives elsewhere,
    /// out of its interface with neighbour resolution when it is another directly connected
    /// device (a bridge), and the kernel's routing otherwise (no route, a gateway, `lo`, or an
    /// uplink: no pod of this node).
    pub fn delivery(&mut self, ip: IpAddr, uplinks: &BTreeSet<String>) -> Result<Delivery, Error> {
        let Some((oif, gateway)) = self.route(ip)? else {
            return Ok(Delivery::Stack);
        };
        if gateway {
            return Ok(Delivery::Stack);
        }
        let Some(link) = self.link_by_index(oif)? else {
            return Ok(Delivery::Stack);
        };
        if link.name == "lo" || uplinks.contains(&link.name) {
            return Ok(Delivery::Stack);
        }
        Ok(if link.is_pair() && link.peer_elsewhere {
            Delivery::Peer { ifindex: oif }
        } else {
            Delivery::Neigh { ifindex: oif }
        })
    }

    /// The output interface of the kernel's route to `ip`, and whether it goes via a gateway.
    fn route(&mut self, ip: IpAddr) -> Result<Option<(u32, bool)>, Error> {
        let mut message = RouteMessage::default();
        message.header.address_family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        let what = format!("route to {ip}");
        let replies = self.request(RouteNetlinkMessage::GetRoute(message), &what)?;
        for reply in replies {
            if let RouteNetlinkMessage::NewRoute(route) = reply {
                if !matches!(route.header.kind, RouteType::Unicast) {
                    return Ok(None);
                }
                let oif = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                });
                let gateway = route
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_)));
                return Ok(oif.map(|oif| (oif, gateway)));
            }
        }
        Ok(None)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.link(message, &format!("link {index}"))
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        self.link(message, &format!("link {name}"))
    }

    fn link(&mut self, message: LinkMessage, what: &str) -> Result<Option<Link>, Error> {
        let replies = match self.request(RouteNetlinkMessage::GetLink(message), what) {
            Ok(replies) => replies,
            // ENODEV: no such interface (any more).
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(Link {
                index: link.header.index,
                name: link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                kind: link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind_name(kind)),
                        _ => None,
                    }),
                    _ => None,
                }),
                peer_elsewhere: link
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_))),
            }),
            _ => None,
        }))
    }

    /// One request and its replies (the kernel answers these look-ups with one message, or an
    /// error).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let netlink = |source| Error::Netlink {
            what: what.to_owned(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(netlink)?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(netlink)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|err| netlink(io::Error::new(io::ErrorKind::InvalidData, err)))?;
                let length = reply.header.length as usize;
                let sequence = reply.header.sequence_number;
                offset += length.max(1);
                if sequence != self.seq {
                    continue; // a late answer to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        return Ok(replies);
                    }
                    NetlinkPayload::Error(err) => {
                        let code = err.code.map_or(0, |c| -c.get());
                        return Err(netlink(io::Error::from_raw_os_error(code)));
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".to_owned(),
        InfoKind::Netkit => "netkit".to_owned(),
        InfoKind::Bridge => "bridge".to_owned(),
        other => other.to_string(),
    }
}

/// The reply program (`l3lb_tc_pod`) at TC ingress of each pod interface a backend uses,
/// attached through links pinned under `<pin root>/links/pods/<ifindex>` so that a restart
/// keeps translating replies (the new program is swapped into the same links), and detached
/// when no backend uses the interface any more.
pub struct PodLinks {
    dir: PathBuf,
    /// Interfaces with the program attached, by index, with their names for the logs.
    attached: BTreeMap<u32, String>,
}

impl PodLinks {
    /// Adopts the links an earlier run pinned, swapping this run's program into them.
    pub fn adopt(ebpf: &mut Ebpf, links: &Path) -> PodLinks {
        let dir = links.join("pods");
        let _ = std::fs::create_dir_all(&dir);
        let mut attached = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let index = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok());
                let adopted = index.and_then(|index| {
                    let link = PinnedLink::from_pin(&path).ok()?;
                    let link = SchedClassifierLink::try_from(FdLink::from(link)).ok()?;
                    let program = classifier(ebpf).ok()?;
                    let id = program.attach_to_link(link).ok()?;
                    drop(program.take_link(id).ok()?); // the pin keeps it
                    Some(index)
                });
                match adopted {
                    Some(index) => {
                        attached.insert(index, format!("ifindex {index}"));
                    }
                    None => loader::unpin_link(&path),
                }
            }
        }
        if !attached.is_empty() {
            info!(
                pods = attached.len(),
                "fast path: reply program updated in place on pod interfaces"
            );
        }
        PodLinks { dir, attached }
    }

    /// Attaches the reply program to every interface in `wanted` that lacks it. Done before
    /// the maps steer anything through an interface: a pod's first reply must find the program.
    pub fn attach_missing(
        &mut self,
        ebpf: &mut Ebpf,
        wanted: impl IntoIterator<Item = u32>,
    ) -> Vec<Error> {
        let mut errors = Vec::new();
        for index in wanted {
            if self.attached.contains_key(&index) {
                continue;
            }
            match self.attach(ebpf, index) {
                Ok(name) => {
                    debug!(
                        interface = name,
                        index, "fast path: reply program attached to pod interface"
                    );
                    self.attached.insert(index, name);
                }
                Err(err) => errors.push(err),
            }
        }
        errors
    }

    /// Detaches the reply program from every interface not in `wanted`. An interface that went
    /// away (its pod deleted) took its link with it; the pin is removed here. A detach waits
    /// for the kernel's RCU grace period, so callers do it last, after what is urgent.
    pub fn detach_unwanted(&mut self, wanted: &BTreeSet<u32>) {
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|index| !wanted.contains(index))
            .copied()
            .collect();
        for index in gone {
            let name = self.attached.remove(&index).unwrap_or_default();
            loader::unpin_link(&self.dir.join(index.to_string()));
            debug!(
                interface = name,
                index, "fast path: reply program detached from pod interface"
            );
        }
    }

    /// The interfaces with the reply program, by index.
    pub fn attached(&self) -> impl Iterator<Item = (&u32, &String)> {
        self.attached.iter()
    }

    fn attach(&mut self, ebpf: &mut Ebpf, index: u32) -> Result<String, Error> {
        let name = interface_name(index).ok_or_else(|| Error::Attach {
            interface: format!("ifindex {index}"),
            detail: "no such interface".to_owned(),
        })?;
        let attach_error = |detail: String| Error::Attach {
            interface: name.clone(),
            detail,
        };
        let program = classifier(ebpf).map_err(|e| attach_error(e.to_string()))?;
        // Kernels before 6.6 attach through a clsact qdisc, which needs to exist.
        let _ = aya::programs::tc::qdisc_add_clsact(&name);
        let id = program
            .attach(&name, TcAttachType::Ingress)
            .map_err(|e| attach_error(e.to_string()))?;
        let link = program
            .take_link(id)
            .map_err(|e| attach_error(e.to_string()))?;
        match FdLink::try_from(link) {
            Ok(link) => {
                if let Err(err) = link.pin(self.dir.join(index.to_string())) {
                    warn!(interface = name, "pinning the reply program's link: {err}");
                }
            }
            Err(_) => warn!(
                interface = name,
                "reply program attached without a bpf link (kernel < 6.6): it stays until the interface goes"
            ),
        }
        Ok(name)
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, loader::Error> {
    loader::program(ebpf, program_names::TC_POD)
}

/// The name of the interface with this index in the current namespace.
fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}
