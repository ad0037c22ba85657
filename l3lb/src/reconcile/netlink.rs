//! Thin rtnetlink verbs for interface addresses, in the style of netavark's netlink layer: each
//! verb does one kernel request, treats the idempotent outcomes as success (EEXIST on add,
//! EADDRNOTAVAIL/ENOENT on delete) and turns every other errno into an [`Error`] that says what
//! was being done, to which address, on which interface, and what to check.
use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    AddressMessageBuilder, Handle,
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    },
    packet_route::{
        RouteNetlinkMessage,
        address::{
            AddressAttribute, AddressHeaderFlags, AddressMessage, AddressProtocol, AddressScope,
        },
    },
    proto::ConnectionHandle,
    sys::SocketAddr,
};

/// An rtnetlink connection that sends several messages in one datagram (one `sendmsg`), for
/// [`replace_address`].
pub type BatchHandle = ConnectionHandle<RouteNetlinkMessage>;

/// What a failed request was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    LookUp,
    List,
    Add,
    Delete,
    /// Delete and re-add, to change an address's metric.
    Reweight,
    Subscribe,
    Connect,
}

impl Verb {
    /// A short, stable name for metrics and structured logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::LookUp => "lookup",
            Verb::List => "list",
            Verb::Add => "add",
            Verb::Delete => "delete",
            Verb::Reweight => "reweight",
            Verb::Subscribe => "subscribe",
            Verb::Connect => "connect",
        }
    }
}

/// The request an [`Error`] is about: the verb, the address (for add and delete) and the
/// interface, so every error message is actionable on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub verb: Verb,
    pub address: Option<(IpAddr, u8)>,
    pub interface: String,
}

impl Operation {
    fn new(verb: Verb, interface: &str) -> Self {
        Operation {
            verb,
            address: None,
            interface: interface.to_owned(),
        }
    }

    fn on(verb: Verb, interface: &Interface, ip: IpAddr, prefix_len: u8) -> Self {
        Operation {
            verb,
            address: Some((ip, prefix_len)),
            interface: interface.name.clone(),
        }
    }

    fn is_ipv6(&self) -> bool {
        matches!(self.address, Some((IpAddr::V6(_), _)))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let iface = &self.interface;
        match (self.verb, self.address) {
            (Verb::Add, Some((ip, len))) => write!(f, "adding address {ip}/{len} to {iface}"),
            (Verb::Delete, Some((ip, len))) => {
                write!(f, "removing address {ip}/{len} from {iface}")
            }
            (Verb::Reweight, Some((ip, len))) => {
                write!(
                    f,
                    "re-adding address {ip}/{len} on {iface} with a new metric"
                )
            }
            (Verb::Reweight, None) => write!(f, "re-adding an address on {iface}"),
            (Verb::LookUp, _) => write!(f, "looking up interface {iface}"),
            (Verb::Subscribe, _) => write!(f, "subscribing to address changes on {iface}"),
            (Verb::Connect, _) => write!(
                f,
                "opening an rtnetlink socket to manage the addresses of {iface}"
            ),
            (Verb::Add, None) => write!(f, "adding an address to {iface}"),
            (Verb::Delete, None) => write!(f, "removing an address from {iface}"),
            (Verb::List, _) => write!(f, "listing the addresses of {iface}"),
        }
    }
}

/// Why an address request failed. Every variant names the operation (verb, address, interface).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: permission denied (l3lb needs CAP_NET_ADMIN in this network namespace)")]
    PermissionDenied { op: Operation },
    #[error("{op}: no such interface (was it deleted or renamed?)")]
    NoSuchInterface { op: Operation },
    #[error(
        "{op}: IPv6 is disabled on this interface or in this kernel (check sysctl \
         net.ipv6.conf.{}.disable_ipv6 and the ipv6.disable boot parameter)",
        op.interface
    )]
    Ipv6Disabled { op: Operation },
    #[error("{op}: the kernel refused it: {source}")]
    Kernel {
        op: Operation,
        #[source]
        source: io::Error,
    },
    #[error("{op}: the rtnetlink connection is closed (its task stopped)")]
    ConnectionClosed { op: Operation },
    #[error("{op}: unexpected rtnetlink reply: {detail}")]
    Unexpected { op: Operation, detail: String },
    #[error("{op}: {source}")]
    Socket {
        op: Operation,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// A short, stable label for an error counter (`reason="…"`); pair it with
    /// `self.op().verb.as_str()` for the verb.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::PermissionDenied { .. } => "permission_denied",
            Error::NoSuchInterface { .. } => "no_such_interface",
            Error::Ipv6Disabled { .. } => "ipv6_disabled",
            Error::Kernel { .. } => "kernel_refused",
            Error::ConnectionClosed { .. } => "connection_closed",
            Error::Unexpected { .. } => "unexpected_reply",
            Error::Socket { .. } => "socket",
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> &Operation {
        match self {
            Error::PermissionDenied { op }
            | Error::NoSuchInterface { op }
            | Error::Ipv6Disabled { op }
            | Error::Kernel { op, .. }
            | Error::ConnectionClosed { op }
            | Error::Unexpected { op, .. }
            | Error::Socket { op, .. } => op,
        }
    }

    /// The errno the kernel answered with, when it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { .. } => Some(libc::EPERM),
            Error::NoSuchInterface { .. } => Some(libc::ENODEV),
            Error::Kernel { source, .. } | Error::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn socket(verb: Verb, interface: &str, source: io::Error) -> Self {
        Error::Socket {
            op: Operation::new(verb, interface),
            source,
        }
    }

    fn from_rtnetlink(op: Operation, err: rtnetlink::Error) -> Self {
        match err {
            rtnetlink::Error::NetlinkError(_) => {
                Self::from_errno(op, errno(&err).unwrap_or(libc::EIO))
            }
            rtnetlink::Error::RequestFailed => Error::ConnectionClosed { op },
            other => Error::Unexpected {
                op,
                detail: other.to_string(),
            },
        }
    }

    fn from_errno(op: Operation, errno: i32) -> Self {
        match errno {
            libc::EPERM => Error::PermissionDenied { op },
            libc::ENODEV => Error::NoSuchInterface { op },
            // inet6_addr_add answers EACCES when disable_ipv6 is set on the device, and the
            // socket layer EAFNOSUPPORT when the kernel runs with ipv6.disable=1.
            libc::EACCES | libc::EAFNOSUPPORT if op.verb == Verb::Add && op.is_ipv6() => {
                Error::Ipv6Disabled { op }
            }
            _ => Error::Kernel {
                op,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }
}

/// The positive errno carried by a netlink error reply.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => match msg.raw_code() {
            0 => None,
            code => Some(code.abs()),
        },
        _ => None,
    }
}

/// An interface, by name and index (the name is kept for error messages and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

impl Interface {
    /// Resolves `name` to its index in the handle's network namespace.
    pub async fn lookup(handle: &Handle, name: &str) -> Result<Self, Error> {
        Ok(Interface {
            name: name.to_owned(),
            index: ifindex_of(handle, name).await?,
        })
    }
}

/// One address on an interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// IFA_PROTO: who added it. `None` when unset (0), and always on kernels without IFA_PROTO.
    pub proto: Option<u8>,
    /// IFA_RT_PRIORITY (`ip addr … metric N`): l3lb's weight with `--weights endpoints`; 0 when
    /// unset.
    pub metric: u32,
}

impl InterfaceAddress {
    /// A host route: /32 for IPv4, /128 for IPv6.
    pub fn is_host(&self) -> bool {
        self.prefix_len == host_prefix_len(self.ip)
    }
}

/// 32 for IPv4, 128 for IPv6.
pub fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The index of the interface called `name` (`ip link show NAME`).
pub async fn ifindex_of(handle: &Handle, name: &str) -> Result<u32, Error> {
    let op = || Operation::new(Verb::LookUp, name);
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(Error::NoSuchInterface { op: op() }),
        Err(err) => Err(Error::from_rtnetlink(op(), err)),
    }
}

/// Every address on `interface` (`ip addr show dev IFACE`), IPv4 and IPv6.
pub async fn list_addresses(
    handle: &Handle,
    interface: &Interface,
) -> Result<Vec<InterfaceAddress>, Error> {
    let op = || Operation::new(Verb::List, &interface.name);
    let mut dump = handle
        .address()
        .get()
        .set_link_index_filter(interface.index)
        .execute();
    let mut addresses = Vec::new();
    while let Some(message) = dump
        .try_next()
        .await
        .map_err(|err| Error::from_rtnetlink(op(), err))?
    {
        if let Some(address) = parse_address(&message) {
            addresses.push(address);
        }
    }
    Ok(addresses)
}

/// The local address (IFA_LOCAL, or IFA_ADDRESS when there is no peer), prefix length and
/// IFA_PROTO of one RTM_NEWADDR message.
pub fn parse_address(message: &AddressMessage) -> Option<InterfaceAddress> {
    let mut local = None;
    let mut address = None;
    let mut proto = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)).filter(|&p| p != 0),
            AddressAttribute::RoutePriority(m) => metric = *m,
            _ => {}
        }
    }
    Some(InterfaceAddress {
        ip: local.or(address)?,
        prefix_len: message.header.prefix_len,
        proto,
        metric,
    })
}

/// What [`add_address`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// False when the kernel answered EEXIST: the address was already there (maybe unmarked,
    /// maybe someone else's), and nothing changed.
    pub created: bool,
    /// True when the kernel refused IFA_PROTO (EINVAL/EOPNOTSUPP) and the address was added
    /// without it: this kernel cannot mark addresses.
    pub proto_refused: bool,
}

/// Adds `ip/prefix_len` to `interface`, scope global (what `ip addr add X/32 dev lo` gives, and
/// what FRR's `redistribute connected` picks up), IPv6 without DAD, with `metric` as
/// IFA_RT_PRIORITY when given. `proto` sets IFA_PROTO; when
/// the kernel refuses the attribute (EINVAL/EOPNOTSUPP) the add is retried without it and
/// [`Added::proto_refused`] says so. Kernels that ignore the attribute silently are only caught by
/// reading the address back. EEXIST is success, with [`Added::created`] false.
pub async fn add_address(
    handle: &Handle,
    interface: &Interface,
    ip: IpAddr,
    prefix_len: u8,
    proto: Option<u8>,
    metric: Option<u32>,
) -> Result<Added, Error> {
    let op = || Operation::on(Verb::Add, interface, ip, prefix_len);
    let err = match try_add(handle, interface.index, ip, prefix_len, proto, metric).await {
        Ok(()) => {
            return Ok(Added {
                created: true,
                proto_refused: false,
            });
        }
        Err(err) => err,
    };
    match errno(&err) {
        Some(libc::EEXIST) => Ok(Added {
            created: false,
            proto_refused: false,
        }),
        Some(libc::EINVAL | libc::EOPNOTSUPP) if proto.is_some() => {
            match try_add(handle, interface.index, ip, prefix_len, None, metric).await {
                Ok(()) => Ok(Added {
                    created: true,
                    proto_refused: true,
                }),
                Err(retry) if errno(&retry) == Some(libc::EEXIST) => Ok(Added {
                    created: false,
                    proto_refused: true,
                }),
                // Refused without IFA_PROTO as well: the attribute was not the problem.
                Err(retry) => Err(Error::from_rtnetlink(op(), retry)),
            }
        }
        _ => Err(Error::from_rtnetlink(op(), err)),
    }
}

async fn try_add(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    prefix_len: u8,
    proto: Option<u8>,
    metric: Option<u32>,
) -> Result<(), rtnetlink::Error> {
    let mut request = handle.address().add(index, ip, prefix_len);
    describe_new(request.message_mut(), ip, proto, metric);
    request.execute().await
}

/// What every address l3lb adds carries besides the address itself.
fn describe_new(message: &mut AddressMessage, ip: IpAddr, proto: Option<u8>, metric: Option<u32>) {
    message.header.scope = AddressScope::Universe;
    if ip.is_ipv6() {
        // A service IP is meant to be on many nodes at once; and on `lo` DAD only delays it.
        message.header.flags |= AddressHeaderFlags::Nodad;
    }
    if let Some(proto) = proto {
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(proto)));
    }
    if let Some(metric) = metric.filter(|&m| m > 0) {
        message
            .attributes
            .push(AddressAttribute::RoutePriority(metric));
    }
}

/// An RTM_NEWADDR/RTM_DELADDR body naming exactly `ip/prefix_len` on interface `index`.
fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(v4, prefix_len)
            .build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(v6, prefix_len)
            .build(),
    }
}

/// Gives `ip/prefix_len` on `interface` the metric `metric` by deleting and re-adding it (marked
/// with `proto`) in ONE netlink datagram. Changing the metric in place (RTM_NEWADDR with
/// NLM_F_REPLACE) reaches the kernel, but FRR 8.4's zebra keeps the old metric; a delete and an
/// add that arrive together are one update to zebra (its RIB work queue coalesces them), so BGP
/// sends the new weight without withdrawing the route in between.
///
/// An address already gone is simply added. When the add half fails the address may be gone:
/// the error's verb is then [`Verb::Add`], and the caller should add it again at once (with
/// [`add_address`], which also copes with kernels that refuse IFA_PROTO).
pub async fn replace_address(
    batch: &BatchHandle,
    interface: &Interface,
    ip: IpAddr,
    prefix_len: u8,
    proto: Option<u8>,
    metric: u32,
) -> Result<(), Error> {
    let op = |verb| Operation::on(verb, interface, ip, prefix_len);
    let mut delete = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(address_message(
        interface.index,
        ip,
        prefix_len,
    )));
    delete.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut body = address_message(interface.index, ip, prefix_len);
    describe_new(&mut body, ip, proto, Some(metric));
    let mut add = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(body));
    add.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;

    let mut replies = batch
        .request_batch([delete, add], SocketAddr::new(0, 0))
        .map_err(|_| Error::ConnectionClosed {
            op: op(Verb::Reweight),
        })?;
    // One ACK or error per message; the connection numbers them in order, delete first.
    let mut answers = Vec::with_capacity(2);
    while let Some(reply) = replies.next().await {
        if let NetlinkPayload::Error(error) = reply.payload {
            let errno = error.code.map_or(0, |code| code.get().abs());
            answers.push((reply.header.sequence_number, errno));
        }
    }
    answers.sort_unstable();
    let [(_, deleted), (_, added)] = answers[..] else {
        return Err(Error::ConnectionClosed {
            op: op(Verb::Reweight),
        });
    };
    match (deleted, added) {
        (_, 0) => Ok(()),
        // The delete failed for another reason than "already gone", so the add found the old
        // address: nothing changed.
        (deleted, libc::EEXIST) if !matches!(deleted, 0 | libc::EADDRNOTAVAIL | libc::ENOENT) => {
            Err(Error::from_errno(op(Verb::Reweight), deleted))
        }
        (_, added) => Err(Error::from_errno(op(Verb::Add), added)),
    }
}

/// Removes exactly `ip/prefix_len` from `interface` (a /32 never takes a covering /24 with it).
/// Returns whether it was there: EADDRNOTAVAIL/ENOENT (already gone) is success, `Ok(false)`.
pub async fn del_address(
    handle: &Handle,
    interface: &Interface,
    ip: IpAddr,
    prefix_len: u8,
) -> Result<bool, Error> {
    let message = address_message(interface.index, ip, prefix_len);
    match handle.address().del(message).execute().await {
        Ok(()) => Ok(true),
        Err(err) if matches!(errno(&err), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => Ok(false),
        Err(err) => Err(Error::from_rtnetlink(
            Operation::on(Verb::Delete, interface, ip, prefix_len),
            err,
        )),
    }
}

/// `lo` with index 1, for unit tests.
#[cfg(test)]
pub(super) fn test_lo() -> Interface {
    Interface {
        name: "lo".into(),
        index: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::{test_lo as lo, *};

    #[test]
    fn errors_name_verb_address_and_interface() {
        let ip: IpAddr = "10.0.100.7".parse().unwrap();
        let err = Error::from_errno(Operation::on(Verb::Add, &lo(), ip, 32), libc::EPERM);
        assert_eq!(
            err.to_string(),
            "adding address 10.0.100.7/32 to lo: permission denied (l3lb needs CAP_NET_ADMIN \
             in this network namespace)"
        );
        assert_eq!(err.metric_label(), "permission_denied");

        let err = Error::from_errno(Operation::on(Verb::Delete, &lo(), ip, 32), libc::EBUSY);
        assert!(
            err.to_string()
                .starts_with("removing address 10.0.100.7/32 from lo: the kernel refused it"),
            "{err}"
        );
        assert_eq!(err.metric_label(), "kernel_refused");
        assert_eq!(err.errno(), Some(libc::EBUSY));
    }

    #[test]
    fn eacces_on_an_ipv6_add_means_ipv6_is_disabled() {
        let ip: IpAddr = "2001:db8:100::7".parse().unwrap();
        let err = Error::from_errno(Operation::on(Verb::Add, &lo(), ip, 128), libc::EACCES);
        assert_eq!(err.metric_label(), "ipv6_disabled");
        assert!(
            err.to_string().contains("net.ipv6.conf.lo.disable_ipv6"),
            "{err}"
        );

        let v4: IpAddr = "10.0.100.7".parse().unwrap();
        let err = Error::from_errno(Operation::on(Verb::Add, &lo(), v4, 32), libc::EACCES);
        assert_eq!(err.metric_label(), "kernel_refused");
    }
}
