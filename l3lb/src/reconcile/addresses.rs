//! [`AddressReconciler`]: makes the host addresses on one interface match the desired set of
//! service IPs, touching only the addresses l3lb owns.
//!
//! # Ownership (the safety rule)
//! The managed prefixes are l3lb's (as `L3LB_PREFIX` meant in the original l3lb): the routing
//! daemon announces every host address inside them, so one that no Service needs is a black
//! hole. An address is *owned* by l3lb when all of these hold:
//! - it is a host address: /32 for IPv4, /128 for IPv6;
//! - it lies inside one of the managed prefixes;
//! - it is on the reconciler's interface;
//! - it carries IFA_PROTO == the reconciler's proto ([`L3LB_ADDR_PROTO`] in production), or no
//!   IFA_PROTO at all: left by the original l3lb, by a kernel that could not mark it, or added
//!   by hand. Such an *unmarked* address is adopted as it is while a Service needs it (no delete
//!   and re-add, so no flap), and withdrawn when none does, with a warning and a count in
//!   [`Changes::unowned_removed`].
//!
//! An address another program marked with its own IFA_PROTO is that program's claim and stays.
//! Nothing that is not owned is ever removed or changed: not 127.0.0.1 or ::1, not the node's
//! own loopback /32 outside the prefixes, not a /24 inside them. On kernels that cannot mark
//! addresses at all, every host address inside the managed prefixes is owned.
//!
//! # Restarts
//! Owned addresses left by a previous run are adopted: while still desired they are left exactly
//! as they are (no delete and re-add, so no BGP withdraw/announce flap on restart).
//!
//! # Weights
//! With [`AddressReconciler::apply_weighted`] each address also carries a metric
//! (IFA_RT_PRIORITY). An owned address whose metric differs is deleted and re-added in one
//! netlink datagram ([`netlink::replace_address`]), the one way FRR's zebra takes the new metric
//! without a withdrawal. [`AddressReconciler::apply`] leaves metrics alone: without weights a
//! metric never makes an address "need an update".
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::{Stream, StreamExt as _};
use ipnet::IpNet;
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use super::{
    netlink::{
        self, BatchHandle, Error, Interface, InterfaceAddress, Verb, add_address, del_address,
        host_prefix_len, list_addresses, replace_address,
    },
    view::{self, AddressView},
};

/// The IFA_PROTO value l3lb marks its addresses with (`ip -d addr` shows `proto 76`, or
/// `proto l3lb` with an `/etc/iproute2/rt_addrprotos` entry). Values 0-3 belong to the kernel.
pub const L3LB_ADDR_PROTO: u8 = 76;

/// The interface the service IPs go on unless configured otherwise.
pub const DEFAULT_INTERFACE: &str = "lo";

/// What one [`AddressReconciler::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: BTreeSet<IpAddr>,
    pub removed: BTreeSet<IpAddr>,
    /// The part of `removed` that did not carry l3lb's mark (see the module docs).
    pub unowned_removed: BTreeSet<IpAddr>,
    /// Addresses that stayed but were re-added with a new metric (weight).
    pub reweighted: BTreeMap<IpAddr, u32>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

/// Some address operations failed. The others went through: `changes` says which, and the
/// failed ones are retried by the next apply.
#[derive(Debug)]
pub struct ApplyError {
    pub changes: Changes,
    /// Each names its verb, address and interface. A failure to read the interface's addresses
    /// is the only entry, with `changes` empty.
    pub failures: Vec<Error>,
}

impl ApplyError {
    fn nothing_done(error: Error) -> Self {
        ApplyError {
            changes: Changes::default(),
            failures: vec![error],
        }
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.failures.len();
        write!(
            f,
            "{n} address operation{} failed",
            if n == 1 { "" } else { "s" }
        )?;
        if !self.changes.is_empty() {
            write!(
                f,
                " (the rest went through: {} added, {} removed)",
                self.changes.added.len(),
                self.changes.removed.len()
            )?;
        }
        for (i, failure) in self.failures.iter().enumerate() {
            write!(f, "{}{failure}", if i == 0 { ": " } else { "; " })?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .first()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Keeps the desired service IPs as host addresses on one interface. See the module docs for
/// the ownership rule.
///
/// The reconciler logs its changes at debug only: it does not know service names, so the
/// familiar `assuming address IP (service)` / `forfeiting address IP` lines are the caller's,
/// from the returned [`Changes`].
pub struct AddressReconciler {
    handle: Handle,
    /// A second connection for delete-and-add pairs that must leave in one datagram.
    batch: BatchHandle,
    interface: String,
    prefixes: Vec<IpNet>,
    proto: u8,
    /// Set once the kernel has shown it cannot mark addresses with IFA_PROTO.
    no_marking: AtomicBool,
    /// Set once a marked address was read back with its mark: the kernel keeps IFA_PROTO.
    marking_verified: AtomicBool,
    /// The interface's addresses as the address events left them (see [`view`]).
    view: Arc<AddressView>,
    /// How many times a reconcile read the interface whole.
    dumps: AtomicU64,
    /// Serializes apply/withdraw_all, so two callers never race on the same addresses.
    apply_lock: tokio::sync::Mutex<()>,
    connections: [JoinHandle<()>; 2],
}

impl AddressReconciler {
    /// A reconciler for `interface` (usually [`DEFAULT_INTERFACE`]), owning host addresses inside
    /// `prefixes` (IPv4 and IPv6, host bits ignored) marked with `proto` (usually
    /// [`L3LB_ADDR_PROTO`]). Opens its own rtnetlink socket in the calling thread's network
    /// namespace, drives it on a Tokio task, and checks that the interface exists, so a typo
    /// fails at start-up rather than at the first apply. (The interface is looked up again on
    /// every apply, so one that is deleted and re-created is followed.)
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn new(
        interface: impl Into<String>,
        prefixes: Vec<IpNet>,
        proto: u8,
    ) -> Result<Self, Error> {
        let interface = interface.into();
        let socket_error = |source| Error::socket(Verb::Connect, &interface, source);
        let (connection, handle, _) = rtnetlink::new_connection().map_err(socket_error)?;
        // Both sockets are opened here, in the caller's network namespace.
        let (mut batch_connection, batch, _) =
            rtnetlink::proto::new_connection(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map_err(socket_error)?;
        // Each half of a batch answers; its ACK is how a success shows.
        batch_connection.set_forward_ack(true);
        let reconciler = AddressReconciler {
            handle,
            batch,
            interface,
            prefixes: prefixes.iter().map(IpNet::trunc).collect(),
            proto,
            no_marking: AtomicBool::new(false),
            marking_verified: AtomicBool::new(false),
            view: Arc::default(),
            dumps: AtomicU64::new(0),
            apply_lock: tokio::sync::Mutex::new(()),
            connections: [tokio::spawn(connection), tokio::spawn(batch_connection)],
        };
        Interface::lookup(&reconciler.handle, &reconciler.interface).await?;
        Ok(reconciler)
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn prefixes(&self) -> &[IpNet] {
        &self.prefixes
    }

    /// Whether `ip` lies inside one of the managed prefixes (only those are ever added).
    pub fn manages(&self, ip: IpAddr) -> bool {
        in_prefixes(&self.prefixes, ip)
    }

    /// False once the kernel has shown that it cannot mark addresses with IFA_PROTO; from then
    /// on every host address inside the managed prefixes counts as owned.
    pub fn marking_available(&self) -> bool {
        !self.no_marking.load(Ordering::Relaxed)
    }

    /// How many times a reconcile has read the interface's addresses from the kernel. With
    /// [`address_events`](Self::address_events) followed, that is once, then only after a
    /// resync ([`forget_view`](Self::forget_view)), an overrun or a failure.
    pub fn dumps(&self) -> u64 {
        self.dumps.load(Ordering::Relaxed)
    }

    /// The next reconcile reads the interface from the kernel instead of the event-fed view
    /// (the periodic resync: whatever the view might have missed, it is found there).
    pub fn forget_view(&self) {
        self.view.forget();
    }

    /// The interface and its addresses: from the view when it can be trusted, else read from
    /// the kernel (and kept as the view when no event raced the read).
    async fn current(&self) -> Result<(Interface, Vec<InterfaceAddress>), Error> {
        if let Some(current) = self.view.current() {
            return Ok(current);
        }
        let before = self.view.generation();
        let interface = Interface::lookup(&self.handle, &self.interface).await?;
        let current = list_addresses(&self.handle, &interface).await?;
        self.dumps.fetch_add(1, Ordering::Relaxed);
        self.view.install(before, &interface, &current);
        Ok((interface, current))
    }

    /// The addresses l3lb owns on the interface now.
    pub async fn owned(&self) -> Result<BTreeSet<IpAddr>, Error> {
        let interface = Interface::lookup(&self.handle, &self.interface).await?;
        let current = list_addresses(&self.handle, &interface).await?;
        Ok(self.owned_among(&current))
    }

    /// Makes the owned addresses equal `desired`: adds each desired IP that is absent (as /32 or
    /// /128, scope global, marked), removes each owned IP that is not desired, and leaves every
    /// other address alone. Desired IPs outside the managed prefixes are refused with a warning.
    ///
    /// One failing address does not stop the others: the error lists the failures and carries
    /// the [`Changes`] that went through. Metrics are left as they are.
    pub async fn apply(&self, desired: &BTreeSet<IpAddr>) -> Result<Changes, ApplyError> {
        self.reconcile(&desired.iter().map(|&ip| (ip, None)).collect())
            .await
    }

    /// Like [`apply`](Self::apply), and each address also carries its weight as its metric: an
    /// owned address with another metric is re-added with this one (see the module docs).
    pub async fn apply_weighted(
        &self,
        desired: &BTreeMap<IpAddr, u32>,
    ) -> Result<Changes, ApplyError> {
        self.reconcile(
            &desired
                .iter()
                .map(|(&ip, &weight)| (ip, Some(weight)))
                .collect(),
        )
        .await
    }

    /// Removes every owned address (shutdown without `--retain-on-exit`).
    pub async fn withdraw_all(&self) -> Result<Changes, ApplyError> {
        self.reconcile(&BTreeMap::new()).await
    }

    /// `desired`: each IP with the metric it must carry, or `None` for any metric.
    async fn reconcile(
        &self,
        desired: &BTreeMap<IpAddr, Option<u32>>,
    ) -> Result<Changes, ApplyError> {
        let _serialized = self.apply_lock.lock().await;
        let (interface, current) = self.current().await.map_err(ApplyError::nothing_done)?;
        let present: BTreeMap<IpAddr, u32> = current
            .iter()
            .filter(|a| a.is_host())
            .map(|a| (a.ip, a.metric))
            .collect();
        let owned = self.owned_among(&current);
        // Owned but without l3lb's mark: adopted while wanted, withdrawn loudly when not.
        let unmarked: BTreeSet<IpAddr> = current
            .iter()
            .filter(|a| a.proto.is_none() && owned.contains(&a.ip))
            .map(|a| a.ip)
            .collect();

        let mut changes = Changes::default();
        let mut failures = Vec::new();
        let mut to_verify = Vec::new();
        let iface = &self.interface;
        for (&ip, &metric) in desired {
            if !self.manages(ip) {
                warn!(
                    interface = %iface,
                    "refusing to assume address {ip}: it is outside every managed prefix ({})",
                    DisplayList(&self.prefixes)
                );
                continue;
            }
            let proto = self.marking_available().then_some(self.proto);
            if let Some(&have) = present.get(&ip) {
                if !owned.contains(&ip) {
                    debug!(
                        interface = %iface,
                        "address {ip} is already on {iface} with another program's mark: \
                         counting it as present, and it will never be removed"
                    );
                    continue;
                }
                if unmarked.contains(&ip) {
                    debug!(
                        interface = %iface,
                        "adopting address {ip} on {iface}: unmarked, and a Service needs it"
                    );
                }
                if let Some(want) = metric.filter(|&want| want != have) {
                    match self.reweigh(&interface, ip, proto, want).await {
                        Ok(marked) => {
                            debug!(interface = %iface, "re-added {ip} with metric {want} (was {have})");
                            self.view.added(InterfaceAddress {
                                ip,
                                prefix_len: host_prefix_len(ip),
                                proto: marked,
                                metric: want,
                            });
                            changes.reweighted.insert(ip, want);
                        }
                        Err(error) => failures.push(error),
                    }
                }
                continue;
            }
            match add_address(
                &self.handle,
                &interface,
                ip,
                host_prefix_len(ip),
                proto,
                metric,
            )
            .await
            {
                Ok(added) => {
                    if added.proto_refused {
                        self.lose_marking("the kernel refused the IFA_PROTO attribute");
                    } else if added.created
                        && proto.is_some()
                        && !self.marking_verified.load(Ordering::Relaxed)
                    {
                        to_verify.push(ip);
                    }
                    if added.created {
                        debug!(interface = %iface, "added {ip}");
                        self.view.added(InterfaceAddress {
                            ip,
                            prefix_len: host_prefix_len(ip),
                            proto: proto.filter(|_| !added.proto_refused),
                            metric: metric.unwrap_or(0),
                        });
                        changes.added.insert(ip);
                    } else {
                        debug!(interface = %iface, "address {ip} appeared on {iface} meanwhile");
                        self.view.forget();
                    }
                }
                Err(error) => failures.push(error),
            }
        }
        for &ip in owned.iter().filter(|ip| !desired.contains_key(ip)) {
            match del_address(&self.handle, &interface, ip, host_prefix_len(ip)).await {
                Ok(true) => {
                    self.view.removed(ip, host_prefix_len(ip));
                    if unmarked.contains(&ip) && self.marking_available() {
                        warn!(
                            interface = %iface,
                            "removing unowned address {ip} from {iface}: it is inside the \
                             managed prefixes ({}), carries no l3lb mark (left by an earlier \
                             l3lb or another tool, or added by hand), and no Service needs it",
                            DisplayList(&self.prefixes)
                        );
                        changes.unowned_removed.insert(ip);
                    } else {
                        debug!(interface = %iface, "removed {ip}");
                    }
                    changes.removed.insert(ip);
                }
                Ok(false) => {
                    debug!(interface = %iface, "address {ip} was already gone");
                    self.view.forget();
                }
                Err(error) => failures.push(error),
            }
        }
        if !to_verify.is_empty() {
            self.verify_marking(&interface, &to_verify).await;
        }

        if failures.is_empty() {
            Ok(changes)
        } else {
            // Whatever failed (a vanished interface, a refused address), the view may be wrong.
            self.view.forget();
            Err(ApplyError { changes, failures })
        }
    }

    /// Gives an owned address a new metric; when only the delete half went through, adds the
    /// address back at once (the route is then withdrawn for that moment, loudly). Returns the
    /// mark the address now carries.
    async fn reweigh(
        &self,
        interface: &Interface,
        ip: IpAddr,
        proto: Option<u8>,
        metric: u32,
    ) -> Result<Option<u8>, Error> {
        let len = host_prefix_len(ip);
        match replace_address(&self.batch, interface, ip, len, proto, metric).await {
            Err(error) if error.op().verb == Verb::Add => {
                warn!(
                    interface = %self.interface,
                    "{error}: the address was deleted but not re-added; adding it again"
                );
                let added =
                    add_address(&self.handle, interface, ip, len, proto, Some(metric)).await?;
                if added.proto_refused {
                    self.lose_marking("the kernel refused the IFA_PROTO attribute");
                    return Ok(None);
                }
                Ok(proto)
            }
            other => other.map(|()| proto),
        }
    }

    /// Old kernels accept IFA_PROTO and drop it silently: read what was just added back, and
    /// when the mark did not stick, stop relying on it.
    async fn verify_marking(&self, interface: &Interface, added: &[IpAddr]) {
        let current = match list_addresses(&self.handle, interface).await {
            Ok(current) => current,
            Err(error) => {
                debug!("not verifying the IFA_PROTO mark: {error}");
                return;
            }
        };
        let unmarked = current
            .iter()
            .any(|a| a.is_host() && added.contains(&a.ip) && a.proto.is_none());
        if unmarked {
            self.lose_marking("the kernel accepted IFA_PROTO but did not keep it");
            // The view recorded the mark the kernel dropped.
            self.view.forget();
        } else {
            self.marking_verified.store(true, Ordering::Relaxed);
        }
    }

    fn lose_marking(&self, why: &str) {
        if !self.no_marking.swap(true, Ordering::Relaxed) {
            warn!(
                interface = %self.interface,
                "this kernel cannot mark addresses with IFA_PROTO ({why}): from now on every host \
                 address inside {} on {} counts as l3lb's own, including ones added by hand; run \
                 a kernel with IFA_PROTO support to keep those safe",
                DisplayList(&self.prefixes),
                self.interface
            );
        }
    }

    fn owned_among(&self, current: &[InterfaceAddress]) -> BTreeSet<IpAddr> {
        current
            .iter()
            .filter(|a| is_owned(a, &self.prefixes, self.proto, self.marking_available()))
            .map(|a| a.ip)
            .collect()
    }

    /// A notification each time an address inside the managed prefixes appears on or leaves the
    /// interface (from the kernel's RTNLGRP_IPV4_IFADDR / RTNLGRP_IPV6_IFADDR multicast groups),
    /// or notifications were lost. Notifications coalesce: however many changes happen before the
    /// receiver looks, it sees one. The reconciler's own changes fire too (once each burst):
    /// re-applying a converged set changes nothing, so that does not loop.
    ///
    /// The subscription is in place when this returns. It opens a socket in the calling thread's
    /// network namespace and spawns Tokio tasks, which stop when the [`AddressEvents`] is dropped.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn address_events(&self) -> Result<AddressEvents, Error> {
        let (connection, _, mut messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(|source| Error::socket(Verb::Subscribe, &self.interface, source))?;
        let connection = tokio::spawn(connection);
        let (tx, rx) = mpsc::channel(1);
        let handle = self.handle.clone();
        let name = self.interface.clone();
        let prefixes = self.prefixes.clone();
        let view = self.view.clone();
        let pump = tokio::spawn(async move {
            // Subscribed already (the socket is bound), so nothing is missed while this resolves.
            let index = match netlink::ifindex_of(&handle, &name).await {
                Ok(index) => Some(index),
                Err(error) => {
                    warn!("address events for every interface, not just {name}: {error}");
                    None
                }
            };
            // However the pump ends (the socket failed, or the subscription was dropped and
            // this task aborted), the view stops being trusted.
            let _unfollow = index.map(|index| {
                view.follow(index);
                Unfollow(view.clone())
            });
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    message = messages.next() => match message {
                        Some((message, _)) => {
                            // The view first: the reconcile a notification causes must see it.
                            update_view(&view, &message);
                            if is_relevant(&message, index, &prefixes) {
                                // Full means a notification is already pending: coalesce.
                                let _ = tx.try_send(());
                            }
                        }
                        None => break,
                    },
                }
            }
        });
        Ok(AddressEvents {
            rx,
            tasks: [pump, connection],
        })
    }
}

impl Drop for AddressReconciler {
    fn drop(&mut self) {
        for connection in &self.connections {
            connection.abort();
        }
    }
}

/// Address-change notifications for one reconciler's interface; see
/// [`AddressReconciler::address_events`]. A [`Stream`] of `()`, ending only if the netlink
/// socket fails.
pub struct AddressEvents {
    rx: mpsc::Receiver<()>,
    tasks: [JoinHandle<()>; 2],
}

impl AddressEvents {
    /// Waits for the next notification; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<()> {
        self.rx.recv().await
    }
}

impl Stream for AddressEvents {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for AddressEvents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Stops trusting the view when dropped.
struct Unfollow(Arc<AddressView>);

impl Drop for Unfollow {
    fn drop(&mut self) {
        self.0.unfollow();
    }
}

/// Applies one message from the address events to the view.
fn update_view(view: &AddressView, message: &NetlinkMessage<RouteNetlinkMessage>) {
    match &message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) => {
            if let Some(parsed) = netlink::parse_address(address) {
                view.apply(address.header.index, view::Event::New(parsed));
            }
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(address)) => {
            if let Some(parsed) = netlink::parse_address(address) {
                view.apply(address.header.index, view::Event::Del(parsed));
            }
        }
        NetlinkPayload::Overrun(_) => view.overrun(),
        _ => {}
    }
}

/// An address change on the interface (or, before its index is known, on any) inside the
/// managed prefixes; or an overrun, after which anything may have changed.
fn is_relevant(
    message: &NetlinkMessage<RouteNetlinkMessage>,
    index: Option<u32>,
    prefixes: &[IpNet],
) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address),
        ) => {
            index.is_none_or(|index| address.header.index == index)
                && netlink::parse_address(address).is_some_and(|a| in_prefixes(prefixes, a.ip))
        }
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

fn in_prefixes(prefixes: &[IpNet], ip: IpAddr) -> bool {
    prefixes.iter().any(|prefix| prefix.contains(&ip))
}

/// The ownership rule (module docs), for one address already known to be on the interface.
fn is_owned(address: &InterfaceAddress, prefixes: &[IpNet], proto: u8, marking: bool) -> bool {
    address.is_host()
        && in_prefixes(prefixes, address.ip)
        && (!marking || address.proto.is_none_or(|p| p == proto))
}

struct DisplayList<'a>(&'a [IpNet]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, prefix) in self.0.iter().enumerate() {
            write!(f, "{}{prefix}", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(cidr: &str, proto: Option<u8>) -> InterfaceAddress {
        let net: IpNet = cidr.parse().unwrap();
        InterfaceAddress {
            ip: net.addr(),
            prefix_len: net.prefix_len(),
            proto,
            metric: 0,
        }
    }

    fn prefixes() -> Vec<IpNet> {
        vec![
            "10.0.100.0/24".parse().unwrap(),
            "2001:db8:100::/64".parse().unwrap(),
        ]
    }

    #[test]
    fn owns_host_addresses_inside_the_prefixes_unless_another_program_marked_them() {
        let p = prefixes();
        let owned = |a: &InterfaceAddress| is_owned(a, &p, L3LB_ADDR_PROTO, true);
        assert!(owned(&addr("10.0.100.7/32", Some(76))));
        assert!(owned(&addr("2001:db8:100::7/128", Some(76))));
        // Unmarked inside the prefixes: left by the original l3lb, an old kernel, or by hand.
        assert!(owned(&addr("10.0.100.50/32", None)));
        assert!(owned(&addr("2001:db8:100::50/128", None)));
        // Someone else's: another program's mark, not a host address, outside the prefixes.
        assert!(!owned(&addr("10.0.100.51/32", Some(4))));
        assert!(!owned(&addr("10.0.100.128/25", Some(76))));
        assert!(!owned(&addr("2001:db8:100::/64", Some(76))));
        assert!(!owned(&addr("10.0.0.20/32", Some(76))));
        assert!(!owned(&addr("127.0.0.1/8", None)));
        assert!(!owned(&addr("::1/128", Some(1))));
    }

    #[test]
    fn without_marking_every_host_address_inside_the_prefixes_is_owned() {
        let p = prefixes();
        let owned = |a: &InterfaceAddress| is_owned(a, &p, L3LB_ADDR_PROTO, false);
        assert!(owned(&addr("10.0.100.50/32", None)));
        assert!(owned(&addr("2001:db8:100::7/128", None)));
        // Still never: non-host addresses and anything outside the prefixes.
        assert!(!owned(&addr("10.0.100.128/25", None)));
        assert!(!owned(&addr("10.0.0.20/32", None)));
        assert!(!owned(&addr("127.0.0.1/8", None)));
        assert!(!owned(&addr("::1/128", None)));
    }

    #[test]
    fn apply_error_says_what_failed_and_what_went_through() {
        let ip: IpAddr = "10.0.100.7".parse().unwrap();
        let error = ApplyError {
            changes: Changes {
                added: BTreeSet::from(["10.0.100.8".parse().unwrap()]),
                ..Changes::default()
            },
            failures: vec![Error::NoSuchInterface {
                op: netlink::Operation {
                    verb: Verb::Add,
                    address: Some((ip, 32)),
                    interface: "lo".into(),
                },
            }],
        };
        assert_eq!(
            error.to_string(),
            "1 address operation failed (the rest went through: 1 added, 0 removed): adding \
             address 10.0.100.7/32 to lo: no such interface (was it deleted or renamed?)"
        );
    }
}
