//! The address reconciler against the real kernel, each test in a network namespace of its own.
//! `ip` is the independent oracle for what is on `lo`; for the IFA_PROTO mark, which iproute2
//! before 6.3 can neither set nor show, a minimal raw netlink client below (libc only, no
//! rtnetlink) is.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use l3lb::reconcile::{AddressReconciler, Changes, Error, IpNet, L3LB_ADDR_PROTO};
use l3lb_tests::{netns::NetNs, privileged, wait_until};

fn prefixes() -> Vec<IpNet> {
    vec![
        "10.0.100.0/24".parse().unwrap(),
        "2001:db8:100::/64".parse().unwrap(),
    ]
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

/// Runs an async test body on a current-thread runtime in a thread inside `ns`, so every
/// netlink socket the reconciler opens belongs to the namespace.
fn in_ns<T, F>(ns: &NetNs, body: impl FnOnce(String) -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let name = ns.name().to_owned();
    ns.run_inside(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(body(name))
    })
}

async fn reconciler() -> AddressReconciler {
    AddressReconciler::new("lo", prefixes(), L3LB_ADDR_PROTO)
        .await
        .expect("a reconciler for lo")
}

/// The addresses on `lo` as `ip -j addr show dev lo` lists them, as "ip/len" strings.
fn lo_addresses(ns_name: &str) -> BTreeSet<String> {
    let out = l3lb_tests::netns::sh(
        Command::new("ip").args(["-n", ns_name, "-j", "addr", "show", "dev", "lo"]),
    );
    parse_ip_json(&out.stdout)
}

fn parse_ip_json(json: &[u8]) -> BTreeSet<String> {
    let links: serde_json::Value = serde_json::from_slice(json).expect("ip -j output");
    links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Polls `ip` (without blocking the runtime) until `condition` holds of lo's addresses.
async fn poll_lo(
    ns_name: &str,
    deadline: Duration,
    condition: impl Fn(&BTreeSet<String>) -> bool,
) -> bool {
    let give_up = Instant::now() + deadline;
    loop {
        let out = tokio::process::Command::new("ip")
            .args(["-n", ns_name, "-j", "addr", "show", "dev", "lo"])
            .output()
            .await
            .expect("running ip");
        if condition(&parse_ip_json(&out.stdout)) {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// IFA_PROTO of every address on lo, read with raw netlink from inside the namespace.
fn lo_protos(ns: &NetNs) -> Vec<(String, Option<u8>)> {
    ns.run_inside(|| raw::addresses("lo"))
}

fn proto_of(protos: &[(String, Option<u8>)], cidr: &str) -> Option<u8> {
    protos
        .iter()
        .find(|(c, _)| c == cidr)
        .unwrap_or_else(|| panic!("{cidr} not on lo: {protos:?}"))
        .1
}

/// What an l3lb from a previous run (or a 6.3+ `ip addr add … proto 76`) leaves on lo.
fn add_marked(ns: &NetNs, cidr: &'static str, proto: u8) {
    ns.run_inside(move || raw::add_address("lo", cidr.parse().unwrap(), proto));
}

#[test]
fn adds_only_inside_the_prefixes() {
    if !privileged("adds_only_inside_the_prefixes") {
        return;
    }
    let ns = NetNs::new("addr-add");
    let (changes, owned) = in_ns(&ns, |_| async {
        let r = reconciler().await;
        let desired = ips(&["10.0.100.7", "10.0.100.8", "2001:db8:100::7", "192.0.2.1"]);
        let changes = r.apply(&desired).await.expect("apply");
        (changes, r.owned().await.expect("owned"))
    });
    let ours = ips(&["10.0.100.7", "10.0.100.8", "2001:db8:100::7"]);
    assert_eq!(
        changes,
        Changes {
            added: ours.clone(),
            ..Changes::default()
        }
    );
    assert_eq!(owned, ours);

    assert_eq!(
        lo_addresses(ns.name()),
        set(&[
            "127.0.0.1/8",
            "::1/128",
            "10.0.100.7/32",
            "10.0.100.8/32",
            "2001:db8:100::7/128"
        ]),
        "192.0.2.1 is outside the prefixes and must be refused"
    );
    let shown = ns.ip(&["-d", "addr", "show", "dev", "lo"]);
    for cidr in ["10.0.100.7/32", "10.0.100.8/32", "2001:db8:100::7/128"] {
        let line = shown
            .lines()
            .find(|l| l.contains(&format!(" {cidr} ")))
            .unwrap_or_else(|| panic!("{cidr} in {shown}"));
        assert!(line.contains("scope global"), "{line}");
        // iproute2 6.3+ prints the mark itself; older ones print no `proto` at all.
        if shown.contains("proto kernel_lo") {
            assert!(
                line.contains("proto 76") || line.contains("proto l3lb"),
                "{line}"
            );
        }
    }
    let protos = lo_protos(&ns);
    for cidr in ["10.0.100.7/32", "10.0.100.8/32", "2001:db8:100::7/128"] {
        assert_eq!(proto_of(&protos, cidr), Some(L3LB_ADDR_PROTO), "{cidr}");
    }
}

#[test]
fn removes_surplus_and_leaves_foreign_addresses_alone() {
    if !privileged("removes_surplus_and_leaves_foreign_addresses_alone") {
        return;
    }
    let ns = NetNs::new("addr-foreign");
    // Outside the prefix; inside but another program's mark; inside but not a host address (a
    // /25, not a /24: that would make the whole /24 local); unmarked inside (l3lb's by the
    // prefix rule); and marked ours.
    for cidr in ["10.0.0.20/32", "10.0.100.50/32", "10.0.100.128/25"] {
        ns.ip(&["addr", "add", cidr, "dev", "lo"]);
    }
    ns.ip(&["addr", "add", "2001:db8:100::50/128", "dev", "lo"]);
    add_marked(&ns, "10.0.100.51/32", 99);
    add_marked(&ns, "10.0.100.9/32", L3LB_ADDR_PROTO);
    add_marked(&ns, "2001:db8:100::9/128", L3LB_ADDR_PROTO);
    let foreign = set(&[
        "127.0.0.1/8",
        "::1/128",
        "10.0.0.20/32",
        "10.0.100.51/32",
        "10.0.100.128/25",
    ]);

    let (owned_before, first, second) = in_ns(&ns, |_| async {
        let r = reconciler().await;
        let owned = r.owned().await.expect("owned");
        // .50 is desired too: it is there already, unmarked, so it is adopted as it is...
        let first = r.apply(&ips(&["10.0.100.7", "10.0.100.50"])).await;
        // ...and withdrawn once no Service needs it: the prefix is l3lb's.
        let second = r.apply(&ips(&["10.0.100.7"])).await;
        (
            owned,
            first.expect("first apply"),
            second.expect("second apply"),
        )
    });
    assert_eq!(
        owned_before,
        ips(&[
            "10.0.100.9",
            "10.0.100.50",
            "2001:db8:100::9",
            "2001:db8:100::50"
        ])
    );
    assert_eq!(
        first,
        Changes {
            added: ips(&["10.0.100.7"]),
            removed: ips(&["10.0.100.9", "2001:db8:100::9", "2001:db8:100::50"]),
            unowned_removed: ips(&["2001:db8:100::50"]),
            ..Changes::default()
        }
    );
    assert_eq!(
        second,
        Changes {
            removed: ips(&["10.0.100.50"]),
            unowned_removed: ips(&["10.0.100.50"]),
            ..Changes::default()
        }
    );

    let mut expected = foreign.clone();
    expected.insert("10.0.100.7/32".into());
    assert_eq!(lo_addresses(ns.name()), expected);
    let protos = lo_protos(&ns);
    assert_eq!(proto_of(&protos, "10.0.100.51/32"), Some(99));
}

#[test]
fn migrates_from_an_unmarked_set_of_addresses() {
    if !privileged("migrates_from_an_unmarked_set_of_addresses") {
        return;
    }
    let ns = NetNs::new("addr-migrate");
    // What the original l3lb (or an older kernel, or a hand) left: no IFA_PROTO mark at all.
    for cidr in ["10.0.100.7/32", "10.0.100.8/32", "10.0.100.66/32"] {
        ns.ip(&["addr", "add", cidr, "dev", "lo"]);
    }
    ns.ip(&["addr", "add", "2001:db8:100::7/128", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.0.0.20/32", "dev", "lo"]);

    let monitor = Monitor::start(&ns);
    monitor.wait_subscribed(&ns);
    let changes = in_ns(&ns, |_| async {
        reconciler()
            .await
            .apply(&ips(&["10.0.100.7", "2001:db8:100::7", "10.0.100.9"]))
            .await
            .expect("apply")
    });
    monitor.barrier(&ns);
    let lines = monitor.lines();
    drop(monitor);

    assert_eq!(
        changes,
        Changes {
            added: ips(&["10.0.100.9"]),
            removed: ips(&["10.0.100.8", "10.0.100.66"]),
            unowned_removed: ips(&["10.0.100.8", "10.0.100.66"]),
            ..Changes::default()
        },
        "the needed ones adopted, the rest withdrawn, the one missing added"
    );
    for adopted in ["10.0.100.7/32", "2001:db8:100::7/128"] {
        assert!(
            !lines.iter().any(|l| l.contains(adopted)),
            "{adopted} was adopted without a flap: {lines:?}"
        );
    }
    assert_eq!(
        lo_addresses(ns.name()),
        set(&[
            "127.0.0.1/8",
            "::1/128",
            "10.0.0.20/32",
            "10.0.100.7/32",
            "10.0.100.9/32",
            "2001:db8:100::7/128"
        ]),
        "outside the prefix stays untouched"
    );
}

#[test]
fn restores_a_hand_deleted_address() {
    if !privileged("restores_a_hand_deleted_address") {
        return;
    }
    let ns = NetNs::new("addr-restore");
    let (restored, v6_restored, settled, applies) = in_ns(&ns, |name| async move {
        let r = reconciler().await;
        let desired = ips(&["10.0.100.7", "2001:db8:100::7"]);
        let mut events = r.address_events().expect("subscribe");
        r.apply(&desired).await.expect("initial apply");

        // The controller's loop, reduced to what matters here.
        let applies = Arc::new(AtomicUsize::new(0));
        let counter = applies.clone();
        let reconcile_loop = tokio::spawn(async move {
            while events.recv().await.is_some() {
                r.apply(&desired).await.expect("re-apply");
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });

        let mut restored = Vec::new();
        for cidr in ["10.0.100.7/32", "2001:db8:100::7/128"] {
            let out = tokio::process::Command::new("ip")
                .args(["-n", &name, "addr", "del", cidr, "dev", "lo"])
                .output()
                .await
                .expect("ip addr del");
            assert!(out.status.success(), "ip addr del {cidr}: {out:?}");
            let deleted = Instant::now();
            let back = poll_lo(&name, Duration::from_secs(5), |a| a.contains(cidr)).await;
            restored.push(back.then(|| deleted.elapsed()));
        }

        // Our own re-adds fire events too; that must settle, not loop: wait until no apply
        // has happened for a while (bounded by a deadline).
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut last = (applies.load(Ordering::SeqCst), Instant::now());
        let settled = loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = applies.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(300) {
                break true;
            }
            if Instant::now() >= give_up {
                break false;
            }
        };
        reconcile_loop.abort();
        (
            restored[0],
            restored[1],
            settled,
            applies.load(Ordering::SeqCst),
        )
    });
    let restored = restored.expect("10.0.100.7 came back within 5 s");
    let v6_restored = v6_restored.expect("2001:db8:100::7 came back within 5 s");
    eprintln!(
        "hand-deleted addresses restored after {restored:?} (IPv4) and {v6_restored:?} (IPv6), \
         {applies} re-applies in all"
    );
    assert!(settled, "the reconcile loop kept firing: {applies} applies");
    assert!(applies <= 6, "{applies} re-applies for two deletions");
    assert!(lo_addresses(ns.name()).contains("10.0.100.7/32"));
}

/// `ip -o monitor address` inside a namespace, its lines collected; killed on drop.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(ns: &NetNs) -> Self {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-o", "monitor", "address"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ip monitor");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Monitor { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn saw(&self, sentinel: &str) -> bool {
        self.lines().iter().any(|l| l.contains(sentinel))
    }

    /// Returns once the monitor is subscribed: it starts asynchronously, so a change made too
    /// early goes unseen. Toggles an address outside the prefixes until it is reported.
    fn wait_subscribed(&self, ns: &NetNs) {
        let sentinel = "192.0.2.200/32";
        let subscribed = wait_until(Duration::from_secs(5), || {
            ns.ip(&["addr", "add", sentinel, "dev", "lo"]);
            let seen = wait_until(Duration::from_millis(200), || self.saw(sentinel));
            ns.ip(&["addr", "del", sentinel, "dev", "lo"]);
            seen
        });
        assert!(subscribed, "ip monitor never reported anything");
    }

    /// Makes a change outside the prefixes and waits until the monitor has reported it: every
    /// event before it has been reported too (the kernel delivers them in order).
    fn barrier(&self, ns: &NetNs) {
        let sentinel = "192.0.2.201/32";
        ns.ip(&["addr", "add", sentinel, "dev", "lo"]);
        let seen = wait_until(Duration::from_secs(5), || self.saw(sentinel));
        ns.ip(&["addr", "del", sentinel, "dev", "lo"]);
        assert!(
            seen,
            "ip monitor never reported {sentinel}: {:?}",
            self.lines()
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn adopts_preexisting_owned_addresses_without_flapping() {
    if !privileged("adopts_preexisting_owned_addresses_without_flapping") {
        return;
    }
    let ns = NetNs::new("addr-adopt");
    // Left by a previous run, an unmarked one inside the prefix, and one outside.
    add_marked(&ns, "10.0.100.7/32", L3LB_ADDR_PROTO);
    ns.ip(&["addr", "add", "10.0.100.50/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.0.0.20/32", "dev", "lo"]);

    let monitor = Monitor::start(&ns);
    monitor.wait_subscribed(&ns);
    let changes = in_ns(&ns, |_| async {
        reconciler()
            .await
            .apply(&ips(&["10.0.100.7", "10.0.100.8"]))
            .await
            .expect("apply")
    });
    monitor.barrier(&ns);
    let lines = monitor.lines();
    drop(monitor);

    assert_eq!(
        changes,
        Changes {
            added: ips(&["10.0.100.8"]),
            removed: ips(&["10.0.100.50"]),
            unowned_removed: ips(&["10.0.100.50"]),
            ..Changes::default()
        }
    );
    assert!(
        lines.iter().any(|l| l.contains("10.0.100.8/32")),
        "the monitor saw .8 being added: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("10.0.100.7/32")),
        "10.0.100.7 was adopted, so it must not have been touched: {lines:?}"
    );

    let withdrawn = in_ns(&ns, |_| async {
        reconciler().await.withdraw_all().await.expect("withdraw")
    });
    assert_eq!(
        withdrawn,
        Changes {
            removed: ips(&["10.0.100.7", "10.0.100.8"]),
            ..Changes::default()
        }
    );
    assert_eq!(
        lo_addresses(ns.name()),
        set(&["127.0.0.1/8", "::1/128", "10.0.0.20/32"])
    );
}

#[test]
fn applying_the_same_set_twice_changes_nothing() {
    if !privileged("applying_the_same_set_twice_changes_nothing") {
        return;
    }
    let ns = NetNs::new("addr-idem");
    let (first, second, after_restart) = in_ns(&ns, |_| async {
        let desired = ips(&["10.0.100.7", "10.0.100.8", "2001:db8:100::7"]);
        let r = reconciler().await;
        let first = r.apply(&desired).await.expect("first");
        let second = r.apply(&desired).await.expect("second");
        drop(r);
        let after_restart = reconciler().await.apply(&desired).await.expect("third");
        (first, second, after_restart)
    });
    assert_eq!(first.added.len(), 3);
    assert_eq!(second, Changes::default());
    assert_eq!(after_restart, Changes::default());
}

#[test]
fn one_failing_address_does_not_block_the_others() {
    if !privileged("one_failing_address_does_not_block_the_others") {
        return;
    }
    let ns = NetNs::new("addr-partial");
    let sysctl = ns
        .command("sysctl")
        .args(["-qw", "net.ipv6.conf.lo.disable_ipv6=1"])
        .status()
        .expect("sysctl");
    assert!(sysctl.success());
    let result = in_ns(&ns, |_| async {
        reconciler()
            .await
            .apply(&ips(&["10.0.100.7", "2001:db8:100::7"]))
            .await
    });
    let err = result.expect_err("IPv6 is disabled on lo");
    assert_eq!(err.changes.added, ips(&["10.0.100.7"]));
    assert_eq!(err.failures.len(), 1, "{err}");
    assert!(
        matches!(err.failures[0], Error::Ipv6Disabled { .. }),
        "{:?}",
        err.failures[0]
    );
    let message = err.to_string();
    assert!(
        message.contains("adding address 2001:db8:100::7/128 to lo")
            && message.contains("disable_ipv6"),
        "{message}"
    );
    assert!(lo_addresses(ns.name()).contains("10.0.100.7/32"));
}

/// A minimal NETLINK_ROUTE client on libc, independent of the code under test. It acts on the
/// calling thread's network namespace.
mod raw {
    use std::{
        ffi::CString,
        net::IpAddr,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWADDR: u16 = 20;
    const RTM_GETADDR: u16 = 22;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_DUMP: u16 = 0x300;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_PROTO: u16 = 11;

    fn ifindex(name: &str) -> u32 {
        let name = CString::new(name).unwrap();
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "{name:?}: {}", std::io::Error::last_os_error());
        index
    }

    fn align(len: usize) -> usize {
        (len + 3) & !3
    }

    fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
        buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(value);
        buf.resize(align(buf.len()), 0);
    }

    /// Sends one request and returns the payloads of the replies, panicking on a netlink error.
    fn transact(kind: u16, flags: u16, body: &[u8]) -> Vec<(u16, Vec<u8>)> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        assert!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut request = Vec::new();
        request.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        request.extend_from_slice(&kind.to_ne_bytes());
        request.extend_from_slice(&flags.to_ne_bytes());
        request.extend_from_slice(&1u32.to_ne_bytes()); // seq
        request.extend_from_slice(&0u32.to_ne_bytes()); // pid
        request.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; zeroed is "the kernel".
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid buffer and address for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert_eq!(sent, request.len() as isize, "netlink send");

        let mut replies = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: valid buffer of the given length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "netlink recv: {}", std::io::Error::last_os_error());
            let mut data = &buf[..n as usize];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
                let payload = &data[16..len];
                match kind {
                    NLMSG_DONE => return replies,
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                        assert_eq!(
                            code,
                            0,
                            "netlink request {kind}: {}",
                            std::io::Error::from_raw_os_error(-code)
                        );
                        return replies;
                    }
                    _ => replies.push((kind, payload.to_vec())),
                }
                data = &data[align(len).min(data.len())..];
            }
        }
    }

    fn ifaddrmsg(family: i32, prefix_len: u8, index: u32) -> Vec<u8> {
        let mut body = vec![family as u8, prefix_len, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body
    }

    /// `ip addr add CIDR dev IFACE proto PROTO`, which iproute2 6.1 cannot do.
    pub fn add_address(iface: &str, cidr: super::IpNet, proto: u8) {
        let (family, octets) = match cidr.addr() {
            IpAddr::V4(v4) => (libc::AF_INET, v4.octets().to_vec()),
            IpAddr::V6(v6) => (libc::AF_INET6, v6.octets().to_vec()),
        };
        let mut body = ifaddrmsg(family, cidr.prefix_len(), ifindex(iface));
        attr(&mut body, IFA_LOCAL, &octets);
        attr(&mut body, IFA_ADDRESS, &octets);
        attr(&mut body, IFA_PROTO, &[proto]);
        transact(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &body,
        );
    }

    /// Every address on `iface` as ("ip/len", IFA_PROTO).
    pub fn addresses(iface: &str) -> Vec<(String, Option<u8>)> {
        let index = ifindex(iface);
        let mut out = Vec::new();
        for (kind, payload) in transact(
            RTM_GETADDR,
            NLM_F_REQUEST | NLM_F_DUMP,
            &ifaddrmsg(libc::AF_UNSPEC, 0, 0),
        ) {
            if kind != RTM_NEWADDR || u32::from_ne_bytes(payload[4..8].try_into().unwrap()) != index
            {
                continue;
            }
            let (family, prefix_len) = (payload[0], payload[1]);
            let (mut local, mut address, mut proto) = (None, None, None);
            let mut attrs = &payload[8..];
            while attrs.len() >= 4 {
                let len = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(attrs[2..4].try_into().unwrap());
                let value = &attrs[4..len];
                let ip = || -> IpAddr {
                    if i32::from(family) == libc::AF_INET {
                        <[u8; 4]>::try_from(value).unwrap().into()
                    } else {
                        <[u8; 16]>::try_from(value).unwrap().into()
                    }
                };
                match kind {
                    IFA_LOCAL => local = Some(ip()),
                    IFA_ADDRESS => address = Some(ip()),
                    IFA_PROTO => proto = Some(value[0]),
                    _ => {}
                }
                attrs = &attrs[align(len).min(attrs.len())..];
            }
            let ip = local.or(address).expect("an address attribute");
            out.push((format!("{ip}/{prefix_len}"), proto));
        }
        out
    }
}

/// With its address events followed, the reconciler reads `lo` from the kernel once and then
/// keeps its own view: changes, and addresses added or deleted by hand, still converge, and
/// only a resync reads the interface whole again.
#[test]
fn follows_the_interface_from_its_events_instead_of_reading_it_each_time() {
    if !privileged("follows_the_interface_from_its_events_instead_of_reading_it_each_time") {
        return;
    }
    let ns = NetNs::new("addr-view");
    let (converged, dumps_during, dumps_after_resync) = in_ns(&ns, |name| async move {
        let r = Arc::new(reconciler().await);
        let mut events = r.address_events().expect("subscribe");
        let (want, mut wanted) = tokio::sync::watch::channel(ips(&["10.0.100.1"]));
        // The controller's loop: apply on every desired change and every address event.
        let looped = r.clone();
        let reconcile_loop = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { break },
                    event = events.recv() => if event.is_none() { break },
                }
                let desired = wanted.borrow_and_update().clone();
                looped.apply(&desired).await.expect("apply");
            }
        });
        let shows = |set: BTreeSet<IpAddr>| {
            let name = name.clone();
            async move {
                poll_lo(&name, Duration::from_secs(5), |lo| {
                    let ours: BTreeSet<String> = lo
                        .iter()
                        .filter(|a| a.starts_with("10.0.100.") || a.starts_with("2001:db8:100:"))
                        .cloned()
                        .collect();
                    ours == set
                        .iter()
                        .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
                        .collect()
                })
                .await
            }
        };
        want.send_modify(|_| {});
        let mut converged = shows(ips(&["10.0.100.1"])).await;
        let warm = r.dumps();

        // Twenty changes, each a different set in both families.
        for i in 0..20u8 {
            let set = ips(&[
                &format!("10.0.100.{}", 1 + i % 3),
                &format!("10.0.100.{}", 10 + i % 5),
                &format!("2001:db8:100::{}", 1 + i % 2),
            ]);
            want.send(set.clone()).expect("the loop runs");
            converged &= shows(set).await;
        }
        let last = want.borrow().clone();
        // By hand: an unmarked address inside the prefix (withdrawn), a wanted one deleted
        // (restored), both seen only through the events.
        let run = |args: &[&str]| {
            let mut command = tokio::process::Command::new("ip");
            command.args(["-n", &name]).args(args);
            command
        };
        let out = run(&["addr", "add", "10.0.100.99/32", "dev", "lo"])
            .output()
            .await
            .expect("ip addr add");
        assert!(out.status.success(), "{out:?}");
        converged &= shows(last.clone()).await;
        let gone = last.iter().next().copied().unwrap();
        let cidr = format!("{gone}/{}", if gone.is_ipv4() { 32 } else { 128 });
        let out = run(&["addr", "del", &cidr, "dev", "lo"])
            .output()
            .await
            .expect("ip addr del");
        assert!(out.status.success(), "{out:?}");
        converged &= shows(last.clone()).await;
        let dumps_during = r.dumps() - warm;

        r.forget_view();
        want.send_modify(|_| {});
        let resynced = Instant::now() + Duration::from_secs(5);
        while r.dumps() == warm + dumps_during && Instant::now() < resynced {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dumps_after_resync = r.dumps() - warm - dumps_during;
        reconcile_loop.abort();
        (converged, dumps_during, dumps_after_resync)
    });
    assert!(converged, "lo did not follow the desired sets");
    assert_eq!(
        dumps_during, 0,
        "lo was read whole {dumps_during} times over 22 changes while its events were followed"
    );
    assert_eq!(dumps_after_resync, 1, "a resync reads lo once");
}
