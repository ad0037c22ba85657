//! The few system interfaces the benchmark needs beyond the fixtures: the `bpf(2)` calls for the
//! floor program and for `BPF_PROG_TEST_RUN`, a process's CPU time and memory from /proc, and
//! entering a network namespace on the current thread.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Duration,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`; the rest stays zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    rest: [u64; 8],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// One eBPF instruction: `code`, `dst`/`src` registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[0] = code;
    bytes[1] = (src << 4) | (dst & 0x0f);
    bytes[2..4].copy_from_slice(&off.to_le_bytes());
    bytes[4..].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(bytes)
}

/// The floor: a program of two instructions, `r0 = verdict; exit`, of the given type. It is
/// what any XDP (or TC) program costs before doing anything, the dispatch and the test-run
/// loop included, and is built here from raw instructions because the eBPF object carries no
/// such program (it is loaded only to be test-run or attached to the benchmark's own veth).
pub fn load_floor(prog_type: u32, verdict: i32) -> io::Result<OwnedFd> {
    load_raw(
        prog_type,
        &[insn(0xb7, 0, 0, 0, verdict), insn(0x95, 0, 0, 0, 0)],
    )
}

/// The floor plus one hash-map lookup of an all-zero 20-byte key (a `ServiceKey`) in the map
/// `map`, of the given type: what a single service lookup costs.
pub fn load_one_lookup(prog_type: u32, map: BorrowedFd<'_>, verdict: i32) -> io::Result<OwnedFd> {
    const PSEUDO_MAP_FD: u8 = 1;
    load_raw(
        prog_type,
        &[
            insn(0x18, 1, PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64, first half)
            insn(0x00, 0, 0, 0, 0),                           // (second half)
            insn(0x7a, 10, 0, -24, 0),                        // *(u64 *)(r10 - 24) = 0
            insn(0x7a, 10, 0, -16, 0),                        // *(u64 *)(r10 - 16) = 0
            insn(0x62, 10, 0, -8, 0),                         // *(u32 *)(r10 - 8) = 0
            insn(0xbf, 2, 10, 0, 0),                          // r2 = r10
            insn(0x07, 2, 0, 0, -24),                         // r2 += -24
            insn(0x85, 0, 0, 0, 1),                           // call bpf_map_lookup_elem
            insn(0xb7, 0, 0, 0, verdict),                     // r0 = verdict
            insn(0x95, 0, 0, 0, 0),                           // exit
        ],
    )
}

fn load_raw(prog_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"bench_floor");
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
        rest: [0; 8],
    };
    // SAFETY: a fully initialised attr whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the program `fd` at `path` (bpffs), so `ip link set … xdpdrv pinned PATH` can attach it.
pub fn pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        rest: [u64; 4],
    }
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = PinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        rest: [0; 4],
    };
    // SAFETY: a fully initialised attr whose path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const PinAttr,
            size_of::<PinAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `BPF_PROG_TEST_RUN`: the program's verdict and the kernel's mean time per repetition.
/// The kernel runs the program `repeat` times on the same buffer (changes persist from one
/// repetition to the next) and measures the loop alone, not the syscall.
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<(u32, Duration)> {
    let mut out = vec![0u8; data.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: the buffers live across the call and their sizes are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, Duration::from_nanos(u64::from(attr.duration))))
}

/// CPU time (user + system, all threads) of process `pid` in nanoseconds, from the scheduler's
/// per-thread accounting (`/proc/PID/task/*/schedstat`), which is exact where `utime + stime`
/// in `/proc/PID/stat` counts 10 ms ticks.
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// `utime + stime` of `pid` in nanoseconds (clock ticks of /proc/PID/stat): the coarse cross-check.
pub fn cpu_ticks_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start at the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks(14) + ticks(15)) * 1_000_000_000 / hz)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The anonymous part of `pid`'s resident set (`RssAnon`: heap, stacks; not the pages of its
/// binary and libraries, which are clean file pages the kernel can drop and reread), KiB.
pub fn anon_rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "RssAnon")
}

/// The peak resident set size of process `pid` since it started (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmHWM")
}

fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Runs `f` on a new thread inside namespace `name` (entered with [`crate::netns::enter`])
/// and returns its result; a failure to enter, or a panic in `f`, is an error.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let thread_name = name.to_owned();
    std::thread::spawn(move || {
        crate::netns::enter(&thread_name);
        f()
    })
    .join()
    .map_err(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        anyhow::anyhow!("a thread in namespace {name:?} panicked: {text}")
    })
}

/// The lowest-numbered CPU the calling thread may run on.
pub fn first_allowed_cpu() -> io::Result<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; a set of the size given.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads within the set.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .ok_or_else(|| io::Error::other("an empty CPU affinity mask"))
}

/// Moves the calling thread onto CPU `cpu` alone.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; a set of the size given.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `rx_packets` of `interface` in the calling thread's namespace (`/proc/thread-self/net/dev`).
pub fn rx_packets(interface: &str) -> io::Result<u64> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    dev.lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            (name.trim() == interface)
                .then(|| counters.split_whitespace().nth(1)?.parse().ok())
                .flatten()
        })
        .ok_or_else(|| io::Error::other(format!("no {interface} in /proc/thread-self/net/dev")))
}

/// One line of /proc/cpuinfo, /proc/meminfo and friends about the machine.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub commit: String,
    pub date: String,
    pub iptables: String,
    pub nft: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let run = |program: &str, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let mut commit = run("git", &["rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        commit = "unknown".into();
    } else if dirty {
        commit.push_str("-dirty");
    }
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        commit,
        date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        iptables: run("iptables", &["--version"]),
        nft: run("nft", &["--version"]),
    }
}
