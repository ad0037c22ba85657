//! l3lb: keeps the service IPs whose pods run on this node on `lo`, so the node's routing daemon
//! announces them and the routers ECMP across exactly the nodes that run the pods.
pub mod ebpf;
