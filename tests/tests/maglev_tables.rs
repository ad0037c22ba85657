//! The Maglev tables in the kernel's maps, as `Tables::set` leaves them over a long run of
//! changes: each write touches only the entries that differ from what the half held, so the
//! oracle here reads the whole active table back and compares it, entry by entry, with a table
//! built from scratch for the backends that take new flows.
use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData};
use l3lb::fastpath::{
    maglev::build_table,
    plan::{Delivery, Target, Vip},
};
use l3lb_common::{Backend, PROTO_TCP, ServiceEntry, ServiceKey, addr, map_names, program_names};
use l3lb_tests::{privileged, programs::Fastpath};

const TABLE_SIZE: u32 = 251;

/// One of the maps the daemon's `Tables` own, opened again by id (found through the XDP
/// program that uses it), so the test reads what the kernel holds.
fn kernel_map(lb: &Fastpath, name: &str) -> MapData {
    let program = lb
        .ebpf
        .program(program_names::XDP_INGRESS)
        .expect("the XDP program");
    let ids = program
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("the kernel lists map ids");
    ids.into_iter()
        .map(|id| MapData::from_id(id).expect("open a map by id"))
        .find(|map| {
            map.info()
                .ok()
                .and_then(|i| i.name_as_str().map(str::to_owned))
                .as_deref()
                == Some(name)
        })
        .unwrap_or_else(|| panic!("{name} is not among the XDP program's maps"))
}

/// The backend each entry of `vip`'s active table names, as (address, port); empty when the
/// service has no table.
fn kernel_table(lb: &Fastpath, vip: &Vip) -> Vec<(IpAddr, u16)> {
    let services: HashMap<_, ServiceKey, ServiceEntry> =
        HashMap::try_from(Map::HashMap(kernel_map(lb, map_names::SERVICES))).unwrap();
    let maglev: Array<_, u32> =
        Array::try_from(Map::Array(kernel_map(lb, map_names::MAGLEV))).unwrap();
    let backends: Array<_, Backend> =
        Array::try_from(Map::Array(kernel_map(lb, map_names::BACKENDS))).unwrap();
    let entry = services
        .get(&ServiceKey::new(vip.ip, vip.port, vip.proto), 0)
        .expect("the service is installed");
    (0..entry.table_size)
        .map(|i| {
            let slot = maglev
                .get(&(entry.table_base + i), 0)
                .expect("a table entry");
            let backend = backends.get(&slot, 0).expect("a backend slot");
            assert_ne!(backend.in_use, 0, "entry {i} names the empty slot {slot}");
            let ip = addr::from_bytes(&backend.addr, backend.family).expect("an address");
            (ip, u16::from_be(backend.port_be))
        })
        .collect()
}

/// What the table must be: built from scratch for the targets that take new flows.
fn expected_table(targets: &[Target]) -> Vec<(IpAddr, u16)> {
    let live: Vec<&Target> = targets.iter().filter(|t| !t.terminating).collect();
    let names: Vec<Vec<u8>> = live.iter().map(|t| t.name()).collect();
    build_table(&names, TABLE_SIZE)
        .into_iter()
        .map(|i| (live[i as usize].ip, live[i as usize].port))
        .collect()
}

fn same_table(lb: &Fastpath, vip: &Vip, targets: &[Target], step: usize) {
    let (kernel, expected) = (kernel_table(lb, vip), expected_table(targets));
    assert_eq!(
        kernel.len(),
        expected.len(),
        "step {step}: {vip}'s table size"
    );
    let wrong: Vec<usize> = (0..kernel.len())
        .filter(|&i| kernel[i] != expected[i])
        .collect();
    assert!(
        wrong.is_empty(),
        "step {step}: {} of {vip}'s entries differ from a table built from scratch, the first \
         at {}: {:?} instead of {:?}",
        wrong.len(),
        wrong[0],
        kernel[wrong[0]],
        expected[wrong[0]]
    );
}

#[test]
fn tables_stay_exact_over_a_long_run_of_changes() {
    if !privileged("tables_stay_exact_over_a_long_run_of_changes") {
        return;
    }
    let mut lb = Fastpath::load(TABLE_SIZE, 8);
    let vips: Vec<Vip> = [80, 443]
        .iter()
        .map(|&port| Vip {
            ip: IpAddr::from([10, 0, 100, 20]),
            port,
            proto: PROTO_TCP,
        })
        .collect();
    // Ten pods; the two services share them, so slots are shared, released and reused.
    let pods: Vec<Target> = (1..=10u8)
        .map(|i| Target {
            ip: IpAddr::from([10, 244, 0, i]),
            port: 8080,
            terminating: false,
            delivery: Delivery::Stack,
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(20261207);
    for step in 0..300 {
        let vip = vips[rng.usize(..vips.len())];
        let mut targets = Vec::new();
        for pod in &pods {
            if rng.u8(..4) != 0 {
                targets.push(Target {
                    terminating: rng.u8(..6) == 0,
                    ..*pod
                });
            }
        }
        targets.sort();
        lb.tables
            .set(vip, &targets, None)
            .unwrap_or_else(|err| panic!("step {step}: {err}"));
        same_table(&lb, &vip, &targets, step);
        // Now and then a service goes and comes back: its region is reused unknown.
        if rng.u8(..10) == 0 {
            lb.tables.remove(&vip).expect("remove");
            lb.tables.set(vip, &targets, None).expect("set again");
            same_table(&lb, &vip, &targets, step);
        }
    }
}
