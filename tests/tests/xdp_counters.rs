//! The XDP program with no service installed, on the real kernel: verdicts and per-reason
//! counters, first through BPF_PROG_TEST_RUN on crafted frames, then attached to a veth in a
//! namespace with real traffic (which must flow as before). The object's BTF is checked too.
//! The steering itself is tested in xdp_fastpath.rs.
use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions, Xdp, XdpMode};
use l3lb_common::{Reason, program_names};
use l3lb_tests::{frames, netns, privileged, wait_until};

const XDP_PASS: u32 = 2;
/// Two tables of the smallest prime size the daemon uses; these tests install no service.
const MAGLEV_ENTRIES: u32 = 2 * 1021;

fn load_xdp() -> aya::Ebpf {
    let mut ebpf = l3lb::ebpf::load(MAGLEV_ENTRIES).expect("load the embedded object");
    let program: &mut Xdp = ebpf
        .program_mut(program_names::XDP_INGRESS)
        .expect("program present")
        .try_into()
        .expect("an XDP program");
    program
        .load()
        .expect("the verifier accepts the XDP program");
    ebpf
}

#[test]
fn test_run_verdicts_and_counters() {
    if !privileged("test_run_verdicts_and_counters") {
        return;
    }
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let service = Ipv4Addr::new(10, 0, 100, 7);
    let v4_tcp = frames::ipv4(6, client, service, 40000, 80, b"GET /");
    let v6_udp = frames::ipv6(
        17,
        "2001:db8::10".parse().unwrap(),
        "2001:db8:100::7".parse().unwrap(),
        5353,
        53,
        b"q",
    );
    let arp = frames::arp_request(client, service);
    // An IPv4 EtherType with only half an IP header behind it.
    let truncated = v4_tcp[..frames::ETH_LEN + 10].to_vec();

    let cases: [(&str, &[u8], Reason); 4] = [
        ("IPv4/TCP", &v4_tcp, Reason::NotService),
        ("IPv6/UDP", &v6_udp, Reason::NotService),
        ("ARP", &arp, Reason::NotIp),
        ("truncated IPv4", &truncated, Reason::Truncated),
    ];

    let mut ebpf = load_xdp();
    for (description, frame, bucket) in cases {
        let before = l3lb::ebpf::reason_counters(&ebpf).expect("read counters")[bucket as usize];
        let mut out = vec![0u8; frame.len() + 256];
        let program: &mut Xdp = ebpf
            .program_mut(program_names::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|err| panic!("{description}: BPF_PROG_TEST_RUN: {err}"));
        assert_eq!(result.return_value, XDP_PASS, "{description}: verdict");
        assert_eq!(
            &out[..result.data_size_out as usize],
            frame,
            "{description}: frame untouched"
        );

        let after = l3lb::ebpf::reason_counters(&ebpf).expect("read counters")[bucket as usize];
        assert_eq!(
            after.packets,
            before.packets + 1,
            "{description}: counted in {}",
            bucket.label()
        );
        assert_eq!(
            after.bytes,
            before.bytes + frame.len() as u64,
            "{description}: bytes"
        );
    }
    let totals = l3lb::ebpf::reason_counters(&ebpf).unwrap();
    let counted: u64 = totals.iter().map(|c| c.packets).sum();
    assert_eq!(counted, 4, "each frame counted exactly once: {totals:?}");
}

#[test]
fn attached_to_a_veth_counts_real_traffic() {
    if !privileged("attached_to_a_veth_counts_real_traffic") {
        return;
    }
    let node = netns::NetNs::new("xdpnode");
    let client = netns::NetNs::new("xdpclient");
    netns::veth_pair(
        &node,
        "uplink",
        "10.201.0.1/24",
        &client,
        "eth0",
        "10.201.0.2/24",
    );

    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let node_name = node.name().to_owned();
    let reader = std::thread::spawn(move || {
        netns::enter(&node_name);
        let mut ebpf = load_xdp();
        let program: &mut Xdp = ebpf
            .program_mut(program_names::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let link = program
            .attach("uplink", XdpMode::Driver)
            .expect("native XDP attaches to a veth");
        attached_tx.send(()).unwrap();
        // Counters are read until the sender says the traffic is done, then once more.
        let _ = done_rx.recv();
        let counters = l3lb::ebpf::reason_counters(&ebpf).expect("read counters");
        let program: &mut Xdp = ebpf
            .program_mut(program_names::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        program.detach(link).expect("detach");
        counters
    });
    attached_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("XDP attached in the node namespace");
    assert!(
        node.ip(&["link", "show", "uplink"]).contains("xdp"),
        "ip link shows the program on the uplink"
    );

    const PINGS: &str = "5";
    netns::sh(
        client
            .command("ping")
            .args(["-c", PINGS, "-i", "0.05", "-W", "1", "10.201.0.1"]),
    );
    // UDP: a datagram to a closed port still crosses the uplink.
    netns::sh(
        client
            .command("bash")
            .args(["-c", "echo hi > /dev/udp/10.201.0.1/9"]),
    );
    done_tx.send(()).unwrap();
    let counters = reader.join().expect("reader thread");

    let get = |bucket: Reason| counters[bucket as usize].packets;
    assert!(
        get(Reason::NotTcpUdp) >= 5,
        "5 ICMP echo requests counted: {counters:?}"
    );
    assert!(
        get(Reason::NotService) >= 1,
        "the UDP datagram counted: {counters:?}"
    );
    assert!(get(Reason::NotIp) >= 1, "ARP counted: {counters:?}");
    assert_eq!(
        get(Reason::Truncated),
        0,
        "no truncated frames: {counters:?}"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || !node
            .ip(&["link", "show", "uplink"])
            .contains("prog/xdp")),
        "detached"
    );
}

#[test]
fn object_carries_btf_for_the_map_types() {
    let dir = std::env::temp_dir().join(format!("l3lb-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let object = dir.join("l3lb.bpf.o");
    std::fs::write(&object, l3lb::ebpf::OBJECT).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&object)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("bpftool is installed by `cargo xtask test`");
    assert!(
        out.status.success(),
        "bpftool btf dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let btf = String::from_utf8_lossy(&out.stdout);
    for (value, size) in [
        ("PacketCounter", 16),
        ("ServiceKey", 20),
        ("ServiceEntry", 20),
        ("Backend", 28),
        ("FlowKey", 40),
        ("Flow", 28),
        ("ReplyNat", 20),
        ("AffinityKey", 24),
        ("Affinity", 32),
    ] {
        assert!(
            btf.contains(&format!("STRUCT '{value}' size={size}")),
            "{value} in BTF:\n{btf}"
        );
    }
    for map in l3lb_common::map_names::ALL {
        assert!(
            btf.contains(&format!("VAR '{map}'")),
            "map {map} in BTF:\n{btf}"
        );
    }
}
