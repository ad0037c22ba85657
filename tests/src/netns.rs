//! Network namespaces owned by a test. Dropping the guard kills what runs inside and deletes the
//! namespace, so a failing test leaves nothing behind.
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    name: String,
    /// Left in place on drop (a lab kept up with `--keep`).
    keep: bool,
}

impl NetNs {
    /// A fresh namespace named after the test (and unique within this run), with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "l3t-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::named(&name)
    }

    /// A fresh namespace with exactly this name (for labs that must be found again by name),
    /// with `lo` up. Panics when it already exists.
    pub fn named(name: &str) -> Self {
        sh(Command::new("ip").args(["netns", "add", name]));
        let ns = NetNs {
            name: name.to_owned(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Takes over an existing namespace (to delete it on drop, like one created here).
    pub fn existing(name: &str) -> Self {
        NetNs {
            name: name.to_owned(),
            keep: false,
        }
    }

    /// Whether dropping the guard leaves the namespace and what runs inside it in place.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip …` inside the namespace; panics with stderr when it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = sh(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The path MTU towards `to` that this namespace's route cache holds (`ip route get`), once
    /// it learned one.
    pub fn learned_mtu(&self, to: std::net::IpAddr) -> Option<u32> {
        let route = self.ip(&["route", "get", &to.to_string()]);
        let mut words = route.split_whitespace();
        while let Some(word) = words.next() {
            if word == "mtu" {
                return words.next()?.parse().ok();
            }
        }
        None
    }

    /// A command to run inside the namespace. Only the network namespace is entered (`nsenter`,
    /// not `ip netns exec`, which would remount /sys and hide bpffs).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        command
    }

    /// Turns transmit checksum offload off on `iface` of this namespace (ethtool's `tx off`),
    /// so the stack sends complete checksums and the receiver verifies them: a wrong
    /// incremental update then shows as a dropped packet instead of hiding behind
    /// CHECKSUM_PARTIAL.
    pub fn tx_checksum_off(&self, iface: &str) {
        let iface = iface.to_owned();
        self.run_inside(move || tx_checksum_off(&iface));
    }

    /// Runs `f` on a thread that has entered this namespace, for calls (netlink, XDP attach)
    /// that act on the caller's namespace. The test's own threads stay where they are.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name);
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// `ip -n NS …` for a namespace whose guard stays elsewhere: a scenario run on another thread
/// (inside the namespace, with [`NetNs::run_inside`]) reads addresses while the test keeps the
/// guard that deletes the namespace.
pub struct IpIn(String);

impl IpIn {
    pub fn of(ns: &NetNs) -> IpIn {
        IpIn(ns.name().to_owned())
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let out = sh(Command::new("ip").args(["-n", &self.0]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `interface` carries exactly `cidr` (`10.0.100.7/32`).
    pub fn has_address(&self, interface: &str, cidr: &str) -> bool {
        self.ip(&["-o", "addr", "show", "dev", interface])
            .split_whitespace()
            .any(|word| word == cidr)
    }
}

/// [`NetNs::tx_checksum_off`] in the caller's namespace.
pub fn tx_checksum_off(iface: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        pad: [0; 16],
    };
    request.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a plain socket for the ioctl, closed below; the request outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut request);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "ETHTOOL_STXCSUM off on {iface}: {err}");
    }
}

/// Moves the calling thread (only it, and the threads and processes it starts afterwards) into
/// the named namespace. Call it on a thread of its own.
pub fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
    // SAFETY: a valid namespace fd; setns changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {path}: {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A veth pair with one end in each namespace, both up, addressed as given (CIDR strings).
pub fn veth_pair(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    sh(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", iface]);
        ns.ip(&["link", "set", iface, "up"]);
    }
}

/// The address every pod's default route points at: the node side of each pod veth holds it,
/// as a CNI's gateway would.
pub const POD_GATEWAY: &str = "10.244.1.1";

/// Plugs `pod` into `node` as a CNI would: a veth (`host_side` on the node, `eth0` in the pod),
/// the pod at `pod_ip`/24 with its default route via [`POD_GATEWAY`], and a /32 route to the pod on
/// the node.
pub fn attach_pod(node: &NetNs, pod: &NetNs, host_side: &str, pod_ip: &str) {
    sh(Command::new("ip").args([
        "link",
        "add",
        host_side,
        "netns",
        node.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]));
    node.ip(&["link", "set", host_side, "up"]);
    node.ip(&[
        "addr",
        "add",
        &format!("{POD_GATEWAY}/32"),
        "dev",
        host_side,
    ]);
    node.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", host_side]);
    pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", POD_GATEWAY, "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", POD_GATEWAY]);
}

/// The IPv6 twin of [`POD_GATEWAY`].
pub const POD_GATEWAY_V6: &str = "fd00:244::1";

/// Gives a pod plugged in by [`attach_pod`] (with `host_side` on the node) the IPv6 address
/// `pod_ip`/64, a default route via [`POD_GATEWAY_V6`], and the node a /128 route to it.
/// Addresses skip duplicate address detection, so they are usable at once.
pub fn attach_pod_v6(node: &NetNs, pod: &NetNs, host_side: &str, pod_ip: &str) {
    node.ip(&[
        "addr",
        "add",
        &format!("{POD_GATEWAY_V6}/128"),
        "dev",
        host_side,
        "nodad",
    ]);
    node.ip(&["route", "add", &format!("{pod_ip}/128"), "dev", host_side]);
    pod.ip(&[
        "addr",
        "add",
        &format!("{pod_ip}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.ip(&["route", "add", POD_GATEWAY_V6, "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", POD_GATEWAY_V6]);
}

/// Runs `command`, panicking with its stderr when it fails.
pub fn sh(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
