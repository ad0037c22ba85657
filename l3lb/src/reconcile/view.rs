//! The reconciler's own view of its interface's addresses, kept current by the kernel's address
//! events, so that a reconcile reads memory instead of dumping the interface (a link look-up and
//! an address dump, two netlink round trips and a parse of every address, on every change).
//!
//! The view is trusted only while the events are followed and nothing can have been missed:
//! - it is built from a dump, and a dump during which an event arrived is not installed (the
//!   event may or may not be in it);
//! - events are applied in the kernel's order, so whatever the reconciler also writes into the
//!   view directly, the last event for an address leaves it as the kernel has it; every event that
//!   matters is followed by a notification, hence by a reconcile that reads the settled view;
//! - an overrun of the event socket, the events' end, any failed operation, an answer that
//!   contradicts the view (EEXIST on an add, ENOENT on a delete) and the periodic resync all
//!   drop it, and the next reconcile dumps again.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Mutex, MutexGuard},
};

use super::netlink::{Interface, InterfaceAddress};

#[derive(Debug, Default)]
pub(super) struct AddressView {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The interface index whose events are being applied; `None` while nobody follows them
    /// (then every reconcile dumps, as without a view).
    followed: Option<u32>,
    /// Counts the events applied, so a dump can tell whether one raced it.
    generation: u64,
    snapshot: Option<Snapshot>,
}

#[derive(Debug)]
struct Snapshot {
    interface: Interface,
    /// Every address on the interface, by address and prefix length (the same IP may sit there
    /// as a host address and inside a wider one).
    addresses: BTreeMap<(IpAddr, u8), InterfaceAddress>,
}

/// A point in the event stream, taken before a dump.
#[derive(Debug, Clone, Copy)]
pub(super) struct Generation(u64);

/// One address event for the followed interface.
pub(super) enum Event {
    New(InterfaceAddress),
    Del(InterfaceAddress),
}

impl AddressView {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a view that is merely stale.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.snapshot = None;
            inner
        })
    }

    /// From now on the events of interface `index` are applied.
    pub(super) fn follow(&self, index: u32) {
        let mut inner = self.lock();
        inner.followed = Some(index);
        inner.snapshot = None;
    }

    /// The events stopped (socket error, or the subscription was dropped).
    pub(super) fn unfollow(&self) {
        let mut inner = self.lock();
        inner.followed = None;
        inner.snapshot = None;
    }

    /// Drops the view: the next reconcile dumps.
    pub(super) fn forget(&self) {
        self.lock().snapshot = None;
    }

    pub(super) fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// Applies one event on interface `index` (ignored for other interfaces).
    pub(super) fn apply(&self, index: u32, event: Event) {
        let mut inner = self.lock();
        if inner.followed != Some(index) {
            return;
        }
        inner.generation += 1;
        if let Some(snapshot) = inner.snapshot.as_mut() {
            match event {
                Event::New(address) => {
                    snapshot
                        .addresses
                        .insert((address.ip, address.prefix_len), address);
                }
                Event::Del(address) => {
                    snapshot.addresses.remove(&(address.ip, address.prefix_len));
                }
            }
        }
    }

    /// Events may have been lost: nothing about the followed interface is known any more.
    pub(super) fn overrun(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.snapshot = None;
    }

    /// The interface and its addresses, when the view can be trusted.
    pub(super) fn current(&self) -> Option<(Interface, Vec<InterfaceAddress>)> {
        let inner = self.lock();
        let snapshot = inner.snapshot.as_ref()?;
        (inner.followed == Some(snapshot.interface.index)).then(|| {
            (
                snapshot.interface.clone(),
                snapshot.addresses.values().cloned().collect(),
            )
        })
    }

    /// Installs a dump taken after `before`, unless an event arrived since or the events are
    /// not followed for this interface. Returns whether it was installed.
    pub(super) fn install(
        &self,
        before: Generation,
        interface: &Interface,
        addresses: &[InterfaceAddress],
    ) -> bool {
        let mut inner = self.lock();
        if inner.followed != Some(interface.index) || inner.generation != before.0 {
            return false;
        }
        inner.snapshot = Some(Snapshot {
            interface: interface.clone(),
            addresses: addresses
                .iter()
                .map(|address| ((address.ip, address.prefix_len), address.clone()))
                .collect(),
        });
        true
    }

    /// The reconciler's own add (or re-weight) went through.
    pub(super) fn added(&self, address: InterfaceAddress) {
        if let Some(snapshot) = self.lock().snapshot.as_mut() {
            snapshot
                .addresses
                .insert((address.ip, address.prefix_len), address);
        }
    }

    /// The reconciler's own delete went through.
    pub(super) fn removed(&self, ip: IpAddr, prefix_len: u8) {
        if let Some(snapshot) = self.lock().snapshot.as_mut() {
            snapshot.addresses.remove(&(ip, prefix_len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::netlink::test_lo as lo, *};

    fn address(ip: &str) -> InterfaceAddress {
        let ip: IpAddr = ip.parse().unwrap();
        InterfaceAddress {
            ip,
            prefix_len: if ip.is_ipv4() { 32 } else { 128 },
            proto: Some(76),
            metric: 0,
        }
    }

    fn ips(view: &AddressView) -> Option<Vec<String>> {
        view.current()
            .map(|(_, addresses)| addresses.iter().map(|a| a.ip.to_string()).collect())
    }

    #[test]
    fn is_trusted_only_while_followed_and_installed_from_an_unraced_dump() {
        let view = AddressView::default();
        let before = view.generation();
        assert!(
            !view.install(before, &lo(), &[address("10.0.100.1")]),
            "not followed: a dump alone is not kept"
        );
        assert_eq!(ips(&view), None);

        view.follow(1);
        let before = view.generation();
        view.apply(1, Event::Del(address("10.0.100.1")));
        assert!(
            !view.install(before, &lo(), &[address("10.0.100.1")]),
            "an event during the dump: the dump may predate it"
        );
        let before = view.generation();
        assert!(view.install(before, &lo(), &[address("10.0.100.1")]));
        assert_eq!(ips(&view), Some(vec!["10.0.100.1".into()]));

        view.overrun();
        assert_eq!(ips(&view), None, "an overrun drops the view");
        let before = view.generation();
        assert!(view.install(before, &lo(), &[]));
        view.unfollow();
        assert_eq!(ips(&view), None, "the events ended");
    }

    #[test]
    fn events_in_the_kernels_order_settle_whatever_was_written_directly() {
        let view = AddressView::default();
        view.follow(1);
        assert!(view.install(view.generation(), &lo(), &[]));
        // The reconciler adds then deletes 10.0.100.1 before the events are read.
        view.added(address("10.0.100.1"));
        view.removed("10.0.100.1".parse().unwrap(), 32);
        // The stale "new" event puts it back for a moment; the "del" that follows settles it.
        view.apply(1, Event::New(address("10.0.100.1")));
        assert_eq!(ips(&view), Some(vec!["10.0.100.1".into()]));
        view.apply(1, Event::Del(address("10.0.100.1")));
        assert_eq!(ips(&view), Some(vec![]));
        // Another interface's events change nothing.
        view.apply(2, Event::New(address("10.0.100.2")));
        assert_eq!(ips(&view), Some(vec![]));
    }
}
