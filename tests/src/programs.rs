//! The fast path's programs through BPF_PROG_TEST_RUN, with the maps written by the daemon's own
//! `Tables`: what `tests/tests/tc_fastpath.rs` and the fuzzer (`fuzz`) share. Also the node
//! whose FIB the pod program's lookups see: an uplink with a resolved and an unresolved next hop.
use std::net::{IpAddr, SocketAddr};

use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use l3lb::fastpath::{
    plan::{Delivery, Target, Vip},
    tables::{self, Tables},
};
use l3lb_common::{Flow, FlowKey, PacketCounter, Reason, map_names, program_names};

use crate::{frames, netns::NetNs};

pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_PIPE: u32 = 3;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The object with all four programs loaded and the daemon's tables over its maps.
pub struct Fastpath {
    pub ebpf: Ebpf,
    pub tables: Tables,
}

impl Fastpath {
    /// Maglev tables of `table_size` entries for up to `max_services` services; the LRU maps
    /// (flows, replies, affinity, fragments) as the object declares them.
    pub fn load(table_size: u32, max_services: u32) -> Fastpath {
        Fastpath::load_with_lru(table_size, max_services, None)
    }

    /// As [`Fastpath::load`], with every LRU map shrunk to `lru_entries` when given, so that a
    /// run of many new flows makes them evict.
    pub fn load_with_lru(table_size: u32, max_services: u32, lru_entries: Option<u32>) -> Fastpath {
        let mut loader = l3lb::ebpf::loader(tables::maglev_entries(table_size, max_services));
        if let Some(entries) = lru_entries {
            for name in [
                map_names::FLOWS,
                map_names::REPLIES,
                map_names::AFFINITY,
                map_names::FRAGMENTS,
            ] {
                loader.map_max_entries(name, entries);
            }
        }
        let mut ebpf = loader
            .load(l3lb::ebpf::OBJECT)
            .expect("load the embedded object");
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP_INGRESS)
            .expect("XDP program present")
            .try_into()
            .expect("an XDP program");
        xdp.load().expect("the verifier accepts the XDP program");
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_EGRESS,
            program_names::TC_POD,
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program present")
                .try_into()
                .expect("a classifier");
            program
                .load()
                .unwrap_or_else(|err| panic!("the verifier accepts {name}: {err:?}"));
        }
        let tables = Tables::adopt(&mut ebpf, table_size, max_services).expect("tables");
        Fastpath { ebpf, tables }
    }

    /// A service with one backend, reached the way `delivery` says.
    pub fn service(&mut self, vip: (IpAddr, u16, u8), pod: (IpAddr, u16), delivery: Delivery) {
        let vip = Vip {
            ip: vip.0,
            port: vip.1,
            proto: vip.2,
        };
        let target = Target {
            ip: pod.0,
            port: pod.1,
            terminating: false,
            delivery,
        };
        self.tables
            .set(vip, &[target], None)
            .expect("install the service");
    }

    /// Runs the program `name` (XDP or TC) on `frame`: verdict and output frame, or the
    /// kernel's refusal (a frame shorter than an Ethernet header).
    pub fn try_run(&self, name: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let program = self
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name} present"));
        let result = if name == program_names::XDP_INGRESS {
            let xdp: &Xdp = program.try_into().expect("an XDP program");
            xdp.test_run(options)?
        } else {
            let tc: &SchedClassifier = program.try_into().expect("a classifier");
            tc.test_run(options)?
        };
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// [`Fastpath::try_run`] that must succeed.
    pub fn run(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(name, frame)
            .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN of {name}: {err}"))
    }

    /// The entry `L3LB_FLOWS` holds under `key`.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        let flows: aya::maps::HashMap<_, FlowKey, Flow> =
            aya::maps::HashMap::try_from(self.ebpf.map(map_names::FLOWS).expect("flows map"))
                .expect("a hash map");
        flows.get(key, 0).ok()
    }

    /// Whether the flow of `frame` (client → service) left an entry in `L3LB_FLOWS`.
    pub fn has_flow(&self, frame: &[u8]) -> bool {
        let (src, dst) = (frames::source(frame), frames::destination(frame));
        let key = FlowKey::new(
            SocketAddr::new(src.0, src.1),
            SocketAddr::new(dst.0, dst.1),
            frames::layout(frame).proto,
        );
        self.flow(&key).is_some()
    }

    pub fn reasons(&self) -> [PacketCounter; Reason::COUNT as usize] {
        l3lb::ebpf::reason_counters(&self.ebpf).expect("read the reason counters")
    }

    /// The reasons counted while `f` ran, with their packet counts.
    pub fn counted(&self, f: impl FnOnce()) -> Vec<(Reason, u64)> {
        let before = self.reasons();
        f();
        let after = self.reasons();
        Reason::ALL
            .iter()
            .map(|&r| (r, after[r as usize].packets - before[r as usize].packets))
            .filter(|&(_, n)| n != 0)
            .collect()
    }
}

/// A node namespace whose FIB the pod program's lookups see (BPF_PROG_TEST_RUN runs on the
/// namespace's `lo`): forwarding on; an `uplink` (MTU 1500, 10.9.0.1/24, fd09::1/64) with a resolved next
/// hop (10.9.0.2 and fd09::2 at [`FibNode::gateway_mac`]) for 192.0.2.0/24 and 2001:db8::/64,
/// an unresolved one (10.9.0.3) for 198.18.0.0/24, and no route to anything else.
pub struct FibNode {
    pub ns: NetNs,
    pub gateway_mac: [u8; 6],
    pub uplink_mac: [u8; 6],
}

impl FibNode {
    /// The uplink's MTU, which the FIB lookup checks the frame against.
    pub const UPLINK_MTU: usize = 1500;

    pub fn new(tag: &str) -> FibNode {
        let node = NetNs::new(tag);
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            crate::netns::sh(node.command("sysctl").args(["-qw", setting]));
        }
        node.ip(&[
            "link", "add", "uplink", "type", "veth", "peer", "name", "far",
        ]);
        let mtu = FibNode::UPLINK_MTU.to_string();
        for iface in ["uplink", "far"] {
            node.ip(&["link", "set", iface, "mtu", &mtu, "up"]);
        }
        node.ip(&["addr", "add", "10.9.0.1/24", "dev", "uplink"]);
        node.ip(&["addr", "add", "fd09::1/64", "dev", "uplink", "nodad"]);
        let mac = "02:00:00:00:00:09";
        for gateway in ["10.9.0.2", "fd09::2"] {
            node.ip(&[
                "neigh",
                "add",
                gateway,
                "lladdr",
                mac,
                "dev",
                "uplink",
                "nud",
                "permanent",
            ]);
        }
        node.ip(&["route", "add", "192.0.2.0/24", "via", "10.9.0.2"]);
        node.ip(&["route", "add", "198.18.0.0/24", "via", "10.9.0.3"]);
        node.ip(&["-6", "route", "add", "2001:db8::/64", "via", "fd09::2"]);
        let out = node.ip(&["-j", "link", "show", "uplink"]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j is JSON");
        let text = links[0]["address"].as_str().expect("the uplink's MAC");
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("a hex byte"))
            .collect();
        FibNode {
            ns: node,
            gateway_mac: [0x02, 0, 0, 0, 0, 0x09],
            uplink_mac: bytes.try_into().expect("6 bytes"),
        }
    }
}
