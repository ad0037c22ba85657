//! The address reconciler: keeps the service IPs that this node should announce as host
//! addresses (/32 and /128) on one interface, `lo` by default.
//!
//! Those addresses are the whole interface between l3lb and the node's routing daemon: FRR's
//! `redistribute connected` turns every address on `lo` into a BGP announcement, and withdraws it
//! when the address goes. l3lb never talks to FRR; adding an address here *is* announcing the
//! service from this node, and removing it is withdrawing it. That is also why the ownership rule
//! in [`addresses`] is strict: anything on `lo` that l3lb did not put there (127.0.0.1, ::1, the
//! node's own router-id /32, an address an operator added by hand) is routing state that belongs
//! to someone else, and is never removed or changed.
pub mod addresses;
pub mod netlink;
mod view;

pub use addresses::{
    AddressEvents, AddressReconciler, ApplyError, Changes, DEFAULT_INTERFACE, L3LB_ADDR_PROTO,
};
/// Re-exported so callers (and the integration tests) can build the managed prefixes without
/// depending on `ipnet` themselves.
pub use ipnet::IpNet;
pub use netlink::{Error, Interface, InterfaceAddress};
