//! Hostile input to the real daemon: broken and oversized manifests in `file:DIR`, and
//! oversized objects plus a flood of watch events from the (fake) API server. Each time the good
//! Services must stay on `lo` of the test's namespace, the bad input must be named in the log,
//! the daemon must keep answering, and its memory must stay bounded.
//!
//! Each scenario runs on a thread inside its own namespace, so the daemon's HTTP endpoint (and
//! the fake API server) live on the namespace's 127.0.0.1.
use std::{
    os::unix::fs::symlink,
    process::Command,
    time::{Duration, Instant},
};

use l3lb_tests::{
    daemon::{L3lb, l3lb_binary},
    fake_api::FakeApiServer,
    fixtures::{self, endpoint, port},
    netns::{IpIn, NetNs},
    privileged, wait_until,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);
const HTTP: &str = "127.0.0.1:9474";

/// Peak resident memory allowed. An idle debug build sits near 25 MiB. The largest transient is
/// the densest possible 1 MiB manifest: the parser's events for all of it, then a YAML tree up
/// to the node budget; measured at about 120 MiB in all (the flood from the API peaks near
/// 50 MiB). 192 MiB leaves room for allocator slack and still fails on anything that grows with
/// the input: the alias bomb alone would need gigabytes.
const PEAK_RSS_LIMIT_KIB: u64 = 192 * 1024;

fn service(name: &str, ips: &str) -> fixtures::ServiceFixture {
    fixtures::service(name)
        .namespace("default")
        .annotated_ips(ips)
        .load_balancer()
        .port(port("TCP", 80))
}

/// A slice of `service` with one endpoint per address, all on node-a, ready or not.
fn slice(service: &str, addresses: &[String], ready: bool) -> fixtures::SliceFixture {
    addresses.iter().fold(
        fixtures::slice(&format!("{service}-1"), service, "IPv4")
            .namespace("default")
            .port(port("TCP", 8080)),
        |slice, address| {
            slice.endpoint(
                endpoint([address])
                    .node("node-a")
                    .conditions(ready, ready, false),
            )
        },
    )
}

fn pods(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("10.244.{}.{}", i / 250, i % 250 + 1))
        .collect()
}

/// `10.0.100.8` first, then `count - 1` IPv6 addresses in the prefix: a Service asking for far
/// more IPs than the per-Service limit.
fn greedy_ips(count: usize) -> String {
    std::iter::once("10.0.100.8".to_owned())
        .chain((1..count).map(|i| format!("2001:db8:100::{i:x}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// `VmRSS` or `VmHWM` (the peak) of `pid`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}: is l3lb still running?"))
}

fn lo_v6_count(ns: &IpIn) -> usize {
    ns.ip(&["-o", "-6", "addr", "show", "dev", "lo"])
        .matches("2001:db8:100::")
        .count()
}

fn assert_healthy(daemon: &L3lb) {
    assert_eq!(
        L3lb::get(HTTP, "/healthz").map(|r| r.0),
        Some(200),
        "l3lb answers; log:\n{}",
        daemon.log()
    );
}

#[test]
fn hostile_manifests_leave_the_good_services_announced() {
    if !privileged("hostile_manifests_leave_the_good_services_announced") {
        return;
    }
    let ns = NetNs::new("hostfile");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || file_scenario(&oracle));
}

fn file_scenario(ns: &IpIn) {
    let scratch = tempfile::Builder::new()
        .prefix("l3lb-hostile-file-")
        .tempdir()
        .unwrap();
    let dir = scratch.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let write = |name: &str, text: &str| {
        // Renamed into place, as careful writers do, so no scan sees half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    let good = |name: &str, ip: &str| {
        fixtures::documents([service(name, ip).yaml(), slice(name, &pods(1), true).yaml()])
    };
    write("web.yaml", &good("web", "10.0.100.7"));

    let mut command = Command::new(l3lb_binary());
    command.args(["run", "--node-name", "node-a", "--interface", "lo"]);
    command.args(["--prefix", "10.0.100.0/24,2001:db8:100::/64"]);
    command.args(["--metrics-addr", HTTP, "--source"]);
    command.arg(format!("file:{}", dir.display()));
    let daemon = L3lb::spawn(command, scratch.path().join("l3lb.log"));
    let converged =
        |cidr: &str, present: bool| wait_until(CONVERGE, || ns.has_address("lo", cidr) == present);
    assert!(
        converged("10.0.100.7/32", true),
        "web announced; log:\n{}",
        daemon.log()
    );
    let idle_kib = memory_kib(daemon.pid(), "VmRSS");

    // The hostile neighbours, all at once.
    let wide_bomb = format!(
        "kind: Service\nitems: &a [{}]\nbomb: [{}]\n",
        vec!["x"; 1000].join(","),
        vec!["*a"; 100_000].join(",")
    );
    write("bomb.yaml", &wide_bomb);
    let mut laughs =
        String::from("kind: Service\na0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for level in 1..=9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        laughs.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    write("laughs.yaml", &laughs);
    // The parser's time grows with nesting depth times size: hours for this one.
    write(
        "deep.yaml",
        &format!("kind: Service\nx: {}", "[".repeat(1_000_000)),
    );
    // Just under the size limit and as dense as YAML gets: the parser's worst case for memory.
    write(
        "dense.yaml",
        &format!("kind: Service\nx: [{}]\n", "a,".repeat((1 << 20) / 2 - 20)),
    );
    let huge = std::fs::File::create(dir.join("huge.yaml")).unwrap();
    huge.set_len(5 << 20).unwrap();
    std::fs::write(
        dir.join("latin1.yaml"),
        b"kind: Service\nmetadata: {name: caf\xe9}\n",
    )
    .unwrap();
    // Cut in the middle of a JSON object. (A cut between block-style YAML lines often still
    // parses: manifests are best written to a temporary name and renamed.)
    let cut = service("cut", "10.0.100.11").json().to_string();
    write("truncated.json", &cut[..cut.len() / 2]);
    symlink("loop.yaml", dir.join("loop.yaml")).unwrap();
    symlink(".", dir.join("cycle.yaml")).unwrap();
    std::fs::create_dir(dir.join("dir.yaml")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("fifo.yaml"))
            .status()
            .unwrap()
            .success()
    );
    // A regular file whose read fails even for root.
    symlink("/proc/self/mem", dir.join("mem.yaml")).unwrap();
    // Oversized but well-formed objects: announced within the limits.
    write(
        "greedy.yaml",
        &fixtures::documents([
            service("greedy", &greedy_ips(5000)).yaml(),
            slice("greedy", &pods(1), true).yaml(),
        ]),
    );
    write("megabyte.yaml", &good("megabyte", &"9".repeat(512 << 10)));
    write(
        "fat.yaml",
        &fixtures::documents([
            service("fat", "10.0.100.9").yaml(),
            slice("fat", &pods(5000), true).yaml(),
        ]),
    );
    // A good Service added after all that: the source still follows the directory.
    write("late.yaml", &good("late", "10.0.100.10"));

    for (cidr, what) in [
        ("10.0.100.10/32", "late"),
        ("10.0.100.8/32", "greedy's first IP"),
        ("2001:db8:100::1/128", "greedy's second IP"),
        ("10.0.100.9/32", "fat, whose slice has 5000 endpoints here"),
    ] {
        assert!(
            converged(cidr, true),
            "{what} announced; log:\n{}",
            daemon.log()
        );
    }
    assert!(ns.has_address("lo", "10.0.100.7/32"), "web never withdrawn");
    assert!(
        !ns.has_address("lo", "10.0.100.11/32"),
        "the truncated file announces nothing"
    );
    assert_eq!(
        lo_v6_count(ns),
        63,
        "greedy: 64 IPs honoured, the first IPv4 and 63 IPv6; lo:\n{}",
        ns.ip(&["-o", "-6", "addr", "show", "dev", "lo"])
    );

    for (file, reason) in [
        ("bomb.yaml", "YAML nodes with aliases expanded"),
        ("huge.yaml", "over the limit of 1048576 bytes"),
        ("deep.yaml", "nested 1000000 deep"),
        ("dense.yaml", "YAML nodes with aliases expanded"),
        ("latin1.yaml", "not UTF-8"),
        ("truncated.json", "document 1"),
        ("loop.yaml", "symbolic links"),
        ("cycle.yaml", "a directory"),
        ("dir.yaml", "a directory"),
        ("fifo.yaml", "a FIFO"),
        ("mem.yaml", "reading"),
    ] {
        let log = daemon.log();
        assert!(
            log.lines().any(|l| l.contains(file) && l.contains(reason)),
            "{file}: no line with {reason:?}; log:\n{log}"
        );
    }
    daemon.wait_for_log("laughs.yaml", CONVERGE);
    daemon.wait_for_log("not announcing IPs beyond the first 64", CONVERGE);
    daemon.wait_for_log("EndpointSlice over the limits: 5000 endpoints", CONVERGE);
    daemon.wait_for_log("is not an IP address", CONVERGE);

    // Every write above woke a scan (inotify), and a safety poll runs every 2 s: through more
    // scans the daemon keeps answering and the broken files are still named only once each.
    write("noise.yaml", "kind: ConfigMap\n");
    wait_until(Duration::from_millis(2500), || {
        assert_healthy(&daemon);
        false
    });
    for file in ["bomb.yaml", "loop.yaml", "fifo.yaml", "mem.yaml"] {
        assert_eq!(
            daemon.log_count(file),
            1,
            "{file} logged once; log:\n{}",
            daemon.log()
        );
    }
    let log_bytes = daemon.log().len();
    assert!(
        log_bytes < 64 * 1024,
        "the megabyte annotation and 5000 IPs stay out of the log: {log_bytes} bytes"
    );
    let peak = memory_kib(daemon.pid(), "VmHWM");
    eprintln!(
        "file:DIR: idle RSS {idle_kib} KiB, peak {peak} KiB, now {} KiB, log {log_bytes} bytes",
        memory_kib(daemon.pid(), "VmRSS")
    );
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
}

#[test]
fn a_flood_of_watch_events_converges_with_bounded_memory() {
    if !privileged("a_flood_of_watch_events_converges_with_bounded_memory") {
        return;
    }
    let ns = NetNs::new("hostflood");
    let oracle = IpIn::of(&ns);
    ns.run_inside(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(flood_scenario(oracle));
    });
}

fn has_event(server: &FakeApiServer, service: &str, reason: &str) -> bool {
    server.events().iter().any(|event| {
        event.pointer("/regarding/name").and_then(Value::as_str) == Some(service)
            && event.get("reason").and_then(Value::as_str) == Some(reason)
    })
}

async fn flood_scenario(ns: IpIn) {
    let scratch = tempfile::Builder::new()
        .prefix("l3lb-hostile-flood-")
        .tempdir()
        .unwrap();
    let server = FakeApiServer::start().await;
    let kubeconfig = scratch.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    server.apply(service("web", "10.0.100.7").json());
    server.apply(slice("web", &pods(1), true).json());
    let daemon = L3lb::kube(
        "node-a",
        "lo",
        &kubeconfig,
        HTTP,
        scratch.path().join("l3lb.log"),
    );
    let converged =
        |cidr: &str, present: bool| wait_until(CONVERGE, || ns.has_address("lo", cidr) == present);
    assert!(
        converged("10.0.100.7/32", true),
        "web; log:\n{}",
        daemon.log()
    );
    let idle_kib = memory_kib(daemon.pid(), "VmRSS");

    // Oversized objects, which this API server (unlike a real one) does not refuse.
    server.apply(service("greedy", &greedy_ips(5000)).json());
    server.apply(slice("greedy", &pods(1), true).json());
    server.apply(service("megabyte", &"9".repeat(1 << 20)).json());
    server.apply(service("fat", "10.0.100.9").json());

    // The flood: a slice flapping 20 000 times, which outruns the server's watch buffer
    // (16 384 events: the watch is closed with 410 and relisted, as upstream does), with a
    // 5000-endpoint slice rewritten every 500 events. The last word is "ready".
    server.apply(service("churn", "10.0.100.12").json());
    let fat_pods = pods(5000);
    let started = Instant::now();
    const FLAPS: usize = 20_000;
    let mut web_gone = 0;
    for i in 0..FLAPS {
        let ready = i % 2 == 1;
        server.apply(slice("churn", &pods(1), ready).json());
        if i % 500 == 0 {
            server.apply(slice("fat", &fat_pods, i % 1000 == 0).json());
            web_gone += usize::from(!ns.has_address("lo", "10.0.100.7/32"));
            let answered = tokio::task::spawn_blocking(|| L3lb::get(HTTP, "/healthz"));
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(5), answered)
                    .await
                    .expect("/healthz within 5 s during the flood")
                    .unwrap()
                    .map(|r| r.0),
                Some(200)
            );
        }
    }
    server.apply(slice("fat", &fat_pods, true).json());
    let flooded = started.elapsed();
    assert!(
        converged("10.0.100.12/32", true),
        "churn ends ready; log:\n{}",
        daemon.log()
    );
    assert!(converged("10.0.100.9/32", true), "fat ends ready");
    let settled = started.elapsed();
    assert_eq!(web_gone, 0, "web stayed announced through the flood");
    assert!(converged("10.0.100.8/32", true), "greedy's first IP");
    assert!(
        wait_until(CONVERGE, || lo_v6_count(&ns) == 63),
        "greedy: 64 IPs honoured"
    );
    assert!(ns.has_address("lo", "10.0.100.7/32"));
    assert_healthy(&daemon);

    // Reported once, by name, on the Service (this node leads).
    daemon.wait_for_log("not announcing IPs beyond the first 64", CONVERGE);
    daemon.wait_for_log("EndpointSlice over the limits: 5000 endpoints", CONVERGE);
    assert!(
        wait_until(CONVERGE, || has_event(&server, "greedy", "TooManyIPs")
            && has_event(&server, "megabyte", "InvalidIP")),
        "Warnings on the Services: {:?}",
        server.events()
    );
    assert_eq!(daemon.log_count("EndpointSlice over the limits"), 1);
    let log_bytes = daemon.log().len();
    assert!(
        log_bytes < 256 * 1024,
        "the log stays small: {log_bytes} bytes"
    );

    let peak = memory_kib(daemon.pid(), "VmHWM");
    eprintln!(
        "flood: {FLAPS} flaps + {} fat rewrites applied in {flooded:?}, converged after {settled:?}; \
         {} relists; idle RSS {idle_kib} KiB, peak {peak} KiB, now {} KiB; log {log_bytes} bytes",
        FLAPS / 500 + 1,
        daemon.log_count("relisted"),
        memory_kib(daemon.pid(), "VmRSS")
    );
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
}
