//! l3lb: keeps the service IPs whose pods run on this node on `lo`, so the node's routing daemon
//! announces them and the routers ECMP across exactly the nodes that run the pods.
//!
//! The modules follow the data: [`cluster`] sources emit changes, [`desired`] turns them into
//! the addresses this node should announce (pure functions), [`reconcile`] makes the interface
//! match, [`fastpath`] steers service traffic in XDP, [`controller`] runs that loop, and [`ingress`] publishes ingress IPs from
//! one [`leader`], which also runs the [`pools`] allocator. [`weights`] says what each address weighs, [`maintenance`] when a node announces nothing. [`status`] is the report `/status` ([`http`]) serves and `l3lb status`
//! ([`status_client`]) prints.
pub mod allocator;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod crd;
pub mod daemon;
pub mod desired;
pub mod ebpf;
pub mod events;
pub mod fastpath;
pub mod http;
pub mod ingress;
pub mod leader;
pub mod maintenance;
pub mod metrics;
pub mod pools;
pub mod reconcile;
pub mod status;
pub mod status_client;
pub mod weights;
