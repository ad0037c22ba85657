//! The address reconciler's weights (`--weights endpoints`) against the real kernel, in a
//! network namespace: each address carries its weight as its metric (IFA_RT_PRIORITY), a changed
//! weight deletes and re-adds the address (never an in-place change zebra would miss), addresses
//! l3lb does not own keep their metrics, and without weights a metric is never a reason to touch
//! an address. `ip -j addr` is the oracle.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use l3lb::reconcile::{AddressReconciler, Changes, IpNet, L3LB_ADDR_PROTO};
use l3lb_tests::{netns::NetNs, privileged, wait_until};

fn weights(list: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
    list.iter()
        .map(|(ip, weight)| (ip.parse().unwrap(), *weight))
        .collect()
}

/// Every address on `lo` in `ns` ("ip/len") with its metric (0 without one).
fn lo_metrics(ns: &str) -> BTreeMap<String, u64> {
    let out = l3lb_tests::netns::sh(
        Command::new("ip").args(["-n", ns, "-j", "addr", "show", "dev", "lo"]),
    );
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    links[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]),
                a["metric"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn weights_are_metrics_and_a_change_re_adds_only_owned_addresses() {
    if !privileged("weights_are_metrics_and_a_change_re_adds_only_owned_addresses") {
        return;
    }
    let ns = NetNs::new("w8-addr");
    let name = ns.name().to_owned();
    // Not l3lb's: outside the prefixes, and not a host address; both with a metric.
    ns.ip(&["addr", "add", "192.0.2.5/32", "dev", "lo", "metric", "9"]);
    ns.ip(&["addr", "add", "10.0.100.128/25", "dev", "lo", "metric", "5"]);
    // Unmarked inside the prefixes (left by hand or an older l3lb): adopted, and re-weighted.
    ns.ip(&["addr", "add", "10.0.100.50/32", "dev", "lo", "metric", "7"]);

    // Every address event on lo, to see how a weight changes.
    let mut monitor = Command::new("ip")
        .args(["-n", &name, "monitor", "address"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting ip monitor");
    let stdout = monitor.stdout.take().expect("piped");
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let events = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                events.lock().unwrap().push(line);
            }
        })
    };

    let results = ns.run_inside(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async {
                let prefixes: Vec<IpNet> = vec![
                    "10.0.100.0/24".parse().unwrap(),
                    "2001:db8:100::/64".parse().unwrap(),
                ];
                let r = AddressReconciler::new("lo", prefixes, L3LB_ADDR_PROTO)
                    .await
                    .expect("a reconciler for lo");
                let first = r
                    .apply_weighted(&weights(&[
                        ("10.0.100.7", 2),
                        ("2001:db8:100::7", 2),
                        ("10.0.100.50", 2),
                    ]))
                    .await
                    .expect("first apply");
                let after_first = lo_metrics(&name);
                let second = r
                    .apply_weighted(&weights(&[
                        ("10.0.100.7", 3),
                        ("2001:db8:100::7", 2),
                        ("10.0.100.50", 2),
                    ]))
                    .await
                    .expect("second apply");
                let after_second = lo_metrics(&name);
                // Without weights a metric is no reason to touch an address.
                let unweighted = r
                    .apply(
                        &["10.0.100.7", "2001:db8:100::7", "10.0.100.50"]
                            .iter()
                            .map(|ip| ip.parse().unwrap())
                            .collect(),
                    )
                    .await
                    .expect("unweighted apply");
                let owned = r.owned().await.expect("owned");
                (first, after_first, second, after_second, unweighted, owned)
            })
    });
    let (first, after_first, second, after_second, unweighted, owned) = results;

    assert_eq!(
        first,
        Changes {
            added: ["10.0.100.7", "2001:db8:100::7"]
                .iter()
                .map(|ip| ip.parse().unwrap())
                .collect(),
            reweighted: weights(&[("10.0.100.50", 2)]),
            ..Changes::default()
        }
    );
    for (address, metric) in [
        ("10.0.100.7/32", 2),
        ("2001:db8:100::7/128", 2),
        ("10.0.100.50/32", 2),
        ("192.0.2.5/32", 9),
        ("10.0.100.128/25", 5),
    ] {
        assert_eq!(
            after_first.get(address),
            Some(&metric),
            "{address}: {after_first:?}"
        );
    }
    assert_eq!(
        second,
        Changes {
            reweighted: weights(&[("10.0.100.7", 3)]),
            ..Changes::default()
        },
        "only the changed weight is re-added"
    );
    assert_eq!(
        after_second.get("10.0.100.7/32"),
        Some(&3),
        "{after_second:?}"
    );
    assert_eq!(after_second.get("192.0.2.5/32"), Some(&9));
    assert_eq!(after_second.get("10.0.100.128/25"), Some(&5));
    assert_eq!(
        unweighted,
        Changes::default(),
        "metrics ignored without weights"
    );
    assert_eq!(
        owned,
        ["10.0.100.7", "2001:db8:100::7", "10.0.100.50"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect::<BTreeSet<IpAddr>>()
    );

    // The re-weighting was a delete and an add of 10.0.100.7 (what zebra takes), the add
    // carrying the new metric; addresses l3lb does not own saw no event at all.
    let readded = wait_until(Duration::from_secs(5), || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("10.0.100.7/32") && line.contains("metric 3"))
    });
    let _ = monitor.kill();
    let _ = monitor.wait();
    reader.join().expect("the monitor's reader panicked");
    let events = events.lock().unwrap().clone();
    assert!(
        readded,
        "no event re-added 10.0.100.7 with metric 3: {events:#?}"
    );
    let about = |needle: &str| -> Vec<&String> {
        events.iter().filter(|line| line.contains(needle)).collect()
    };
    let v4 = about("10.0.100.7/32");
    assert!(
        v4.len() >= 2
            && v4[v4.len() - 2].starts_with("Deleted")
            && v4[v4.len() - 2].contains("metric 2")
            && !v4[v4.len() - 1].starts_with("Deleted")
            && v4[v4.len() - 1].contains("metric 3"),
        "10.0.100.7 was deleted and re-added with the new metric: {events:#?}"
    );
    assert!(
        about("192.0.2.5").is_empty() && about("10.0.100.128").is_empty(),
        "addresses l3lb does not own were touched: {events:#?}"
    );
}
