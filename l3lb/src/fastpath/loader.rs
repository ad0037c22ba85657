//! Loading the programs, pinning their maps and links under the pin root, and attaching them to
//! the uplinks, so that a restarted l3lb picks up the same maps and swaps its new programs into
//! the same links: forwarding never stops across a restart.
use std::{
    collections::BTreeSet,
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::MapInfo,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use l3lb_common::{
    Affinity, AffinityKey, Backend, Flow, FlowKey, PacketCounter, Reason, ReplyNat, ServiceEntry,
    ServiceKey, map_names, program_names,
};
use tracing::{info, warn};

use super::{pods, tables};

/// bpffs's magic number in `statfs.f_type`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (pins under {pin_root}): {source}")]
    Load {
        pin_root: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {interface}: {detail}")]
    Attach {
        program: &'static str,
        interface: String,
        detail: String,
    },
    #[error(transparent)]
    Tables(#[from] tables::Error),
    #[error(transparent)]
    Pods(#[from] pods::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Mount { .. } | Error::PinDir { .. } => "fastpath_pins",
            Error::Load { .. } | Error::Program { .. } => "fastpath_load",
            Error::Attach { .. } => "fastpath_attach",
            Error::Tables(err) => err.metric_label(),
            Error::Pods(err) => err.metric_label(),
        }
    }
}

/// Where the forward path runs on an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TC ingress: rewrite, then straight into the pod (`bpf_redirect_peer`), skipping the
    /// host's routing, netfilter and conntrack. Why not XDP: see the eBPF crate's tc_ingress.rs.
    Auto,
    /// Native (driver) XDP: rewrite before a socket buffer exists, then the kernel's routing
    /// (and netfilter) to the pod.
    Native,
    /// Generic (skb) XDP, as `native` otherwise: for testing.
    Generic,
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub pin_root: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub table_size: u32,
    pub max_services: u32,
}

/// What the loaded fast path holds on to: the object (its programs are attached through pinned
/// links), the maps as [`tables::Tables`], and the reply program's links on pod interfaces.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub tables: tables::Tables,
    pub pods: pods::PodLinks,
}

/// Mounts bpffs at `/sys/fs/bpf` when nothing is mounted there (fresh hosts, test machines).
pub fn ensure_bpffs(pin_root: &Path) -> Result<(), Error> {
    let mount_point = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(mount_point) && !is_bpffs(mount_point) {
        let mount_error = |source| Error::Mount {
            path: mount_point.to_owned(),
            source,
        };
        std::fs::create_dir_all(mount_point).map_err(mount_error)?;
        let (source, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(mount_error(std::io::Error::last_os_error()));
        }
        info!("mounted bpffs at /sys/fs/bpf");
    }
    for dir in [pin_root.to_owned(), pin_root.join("links")] {
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir { path: dir, source })?;
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// The expected (key size, value size, max entries) of each pinned map, to tell whether pins
/// from an earlier run (possibly another version, or another table size) can be reused.
fn expected_shape(name: &str, maglev_entries: u32) -> Option<(u32, u32, Option<u32>)> {
    let size = |n: usize| n as u32;
    Some(match name {
        map_names::SERVICES => (
            size(size_of::<ServiceKey>()),
            size(size_of::<ServiceEntry>()),
            None,
        ),
        map_names::BACKENDS => (4, size(size_of::<Backend>()), None),
        map_names::MAGLEV => (4, 4, Some(maglev_entries)),
        map_names::FLOWS => (size(size_of::<FlowKey>()), size(size_of::<Flow>()), None),
        map_names::REPLIES => (
            size(size_of::<FlowKey>()),
            size(size_of::<ReplyNat>()),
            None,
        ),
        map_names::SERVICE_STATS => (4, size(size_of::<PacketCounter>()), None),
        map_names::REASONS => (4, size(size_of::<PacketCounter>()), Some(Reason::COUNT)),
        map_names::FRAGMENTS => (size(size_of::<FlowKey>()), size(size_of::<Backend>()), None),
        map_names::AFFINITY => (
            size(size_of::<AffinityKey>()),
            size(size_of::<Affinity>()),
            None,
        ),
        _ => return None,
    })
}

/// Removes map pins whose shape does not match this build and configuration. Their state
/// cannot be carried over; the next sync rebuilds it (established flows are re-hashed).
fn discard_incompatible_pins(pin_root: &Path, maglev_entries: u32) {
    for name in map_names::ALL {
        let path = pin_root.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let Some((key, value, entries)) = expected_shape(name, maglev_entries) else {
            continue;
        };
        let matches = info.key_size() == key
            && info.value_size() == value
            && entries.is_none_or(|n| info.max_entries() == n);
        if !matches {
            warn!(
                "pinned map {} does not match this l3lb (key {}B, value {}B, {} entries): starting it afresh",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries()
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Loads (or re-uses) the fast path and attaches it to `config.interfaces`.
pub fn load(config: &LoadConfig) -> Result<Loaded, Error> {
    ensure_bpffs(&config.pin_root)?;
    let maglev_entries = tables::maglev_entries(config.table_size, config.max_services);
    discard_incompatible_pins(&config.pin_root, maglev_entries);

    let mut loader = crate::ebpf::loader(maglev_entries);
    let pins: Vec<(&'static str, PathBuf)> = map_names::ALL
        .iter()
        .map(|name| (*name, config.pin_root.join(name)))
        .collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(crate::ebpf::OBJECT)
        .map_err(|source| Error::Load {
            pin_root: config.pin_root.clone(),
            source: Box::new(source),
        })?;

    let links = config.pin_root.join("links");
    let wanted: BTreeSet<String> = config.interfaces.iter().cloned().collect();
    remove_links_except(&links, &wanted);
    for name in [
        program_names::TC_INGRESS,
        program_names::TC_EGRESS,
        program_names::TC_POD,
    ] {
        let program: &mut SchedClassifier = program(&mut ebpf, name)?;
        program.load().map_err(|source| Error::Program {
            program: name,
            source,
        })?;
    }
    for interface in &config.interfaces {
        let ingress = links.join(format!("tcin-{interface}"));
        if config.mode == AttachMode::Auto {
            unpin_link(&links.join(format!("xdp-{interface}")));
            attach_tc(
                &mut ebpf,
                &links,
                interface,
                program_names::TC_INGRESS,
                TcAttachType::Ingress,
            )?;
        } else {
            // One forward path per interface: XDP's rewritten packets are no service packets
            // any more, and TC ingress would only count them again.
            unpin_link(&ingress);
            attach_xdp(&mut ebpf, &links, interface, config.mode)?;
        }
        attach_tc(
            &mut ebpf,
            &links,
            interface,
            program_names::TC_EGRESS,
            TcAttachType::Egress,
        )?;
    }

    let tables = tables::Tables::adopt(&mut ebpf, config.table_size, config.max_services)?;
    let pods = pods::PodLinks::adopt(&mut ebpf, &links);
    Ok(Loaded { ebpf, tables, pods })
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(Error::Program {
        program: name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| Error::Program {
        program: name,
        source,
    })
}

/// Attaches XDP to `interface` in `mode` (native or generic), or swaps it into the link an
/// earlier run pinned there.
fn attach_xdp(
    ebpf: &mut Ebpf,
    links: &Path,
    interface: &str,
    mode: AttachMode,
) -> Result<(), Error> {
    let name = program_names::XDP_INGRESS;
    let xdp: &mut Xdp = program(ebpf, name)?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| Error::Program {
            program: name,
            source,
        })?;
    }
    let pin = links.join(format!("xdp-{interface}"));
    let attach_error = |detail: String| Error::Attach {
        program: name,
        interface: interface.to_owned(),
        detail,
    };
    if let Some(link) = pinned::<XdpLink>(&pin) {
        // Swap the new program into the existing link: no packet goes unprocessed.
        let id = xdp
            .attach_to_link(link)
            .map_err(|e| attach_error(e.to_string()))?;
        let link = xdp.take_link(id).map_err(|e| attach_error(e.to_string()))?;
        drop(link); // the pin keeps it
        info!(interface, "fast path (XDP) updated in place");
        return Ok(());
    }
    let xdp_mode = if mode == AttachMode::Generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    let id = xdp
        .attach(interface, xdp_mode)
        .map_err(|e| attach_error(e.to_string()))?;
    let link = xdp.take_link(id).map_err(|e| attach_error(e.to_string()))?;
    pin_link(FdLink::try_from(link).ok(), &pin, interface);
    info!(interface, ?xdp_mode, "fast path (XDP) attached");
    Ok(())
}

/// Attaches the TC program `name` (loaded) at `direction` of `interface`, or swaps it into the
/// link an earlier run pinned there.
fn attach_tc(
    ebpf: &mut Ebpf,
    links: &Path,
    interface: &str,
    name: &'static str,
    direction: TcAttachType,
) -> Result<(), Error> {
    let tc: &mut SchedClassifier = program(ebpf, name)?;
    let hook = match direction {
        TcAttachType::Ingress => "tcin",
        _ => "tc",
    };
    let pin = links.join(format!("{hook}-{interface}"));
    let attach_error = |detail: String| Error::Attach {
        program: name,
        interface: interface.to_owned(),
        detail,
    };
    if let Some(link) = pinned::<SchedClassifierLink>(&pin) {
        let id = tc
            .attach_to_link(link)
            .map_err(|e| attach_error(e.to_string()))?;
        drop(tc.take_link(id).map_err(|e| attach_error(e.to_string()))?);
        return Ok(());
    }
    // Kernels before 6.6 attach through a clsact qdisc, which needs to exist.
    let _ = aya::programs::tc::qdisc_add_clsact(interface);
    let id = tc
        .attach(interface, direction)
        .map_err(|e| attach_error(e.to_string()))?;
    let link = tc.take_link(id).map_err(|e| attach_error(e.to_string()))?;
    pin_link(FdLink::try_from(link).ok(), &pin, interface);
    info!(interface, program = name, "fast path (TC) attached");
    Ok(())
}

/// A link pinned by an earlier run, if it is still there and of the right kind.
fn pinned<L: TryFrom<FdLink>>(path: &Path) -> Option<L> {
    let link = PinnedLink::from_pin(path).ok()?;
    match L::try_from(FdLink::from(link)) {
        Ok(link) => Some(link),
        Err(_) => {
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Pins a link so it outlives this process. A netlink attachment (old kernels) has no link to
/// pin; it stays attached on its own, so it is forgotten rather than detached.
fn pin_link(link: Option<FdLink>, path: &Path, interface: &str) {
    match link {
        Some(link) => {
            if let Err(err) = link.pin(path) {
                warn!(
                    interface,
                    "pinning {}: {err}; a restart will re-attach",
                    path.display()
                );
            }
        }
        None => warn!(
            interface,
            "attached without a bpf link; it stays until `l3lb run` without --xdp removes it"
        ),
    }
}

/// Detaches links pinned for interfaces that are no longer configured (the pod interfaces'
/// links, in their own directory, are left to [`pods::PodLinks`]).
fn remove_links_except(links: &Path, wanted: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(links) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let interface = name
            .split_once('-')
            .map(|(_, iface)| iface.to_owned())
            .unwrap_or_default();
        if !wanted.contains(&interface) {
            unpin_link(&entry.path());
            info!(
                interface,
                "fast path detached (interface no longer configured)"
            );
        }
    }
}

pub(super) fn unpin_link(path: &Path) {
    if let Ok(link) = PinnedLink::from_pin(path) {
        // Unpinned and with the last descriptor closed, the kernel detaches the link.
        let _ = link.unpin();
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes every pinned link and map under `pin_root`: the fast path of an earlier run (when
/// running without `--xdp`), or ours on a clean exit. Returns whether anything was there.
pub fn remove(pin_root: &Path) -> bool {
    if !pin_root.exists() {
        return false;
    }
    for dir in [pin_root.join("links").join("pods"), pin_root.join("links")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                unpin_link(&entry.path());
            }
        }
    }
    for name in map_names::ALL {
        let _ = std::fs::remove_file(pin_root.join(name));
    }
    let _ = std::fs::remove_dir(pin_root.join("links").join("pods"));
    let _ = std::fs::remove_dir(pin_root.join("links"));
    let _ = std::fs::remove_dir(pin_root);
    true
}

/// The interfaces that carry a default route (IPv4 or IPv6): the uplinks, unless configured.
pub fn default_route_interfaces() -> Vec<String> {
    let mut interfaces = BTreeSet::new();
    // /proc/net/route: Iface Destination Gateway ... Mask (hex); default = destination and mask 0.
    if let Ok(routes) = std::fs::read_to_string("/proc/net/route") {
        for line in routes.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" {
                interfaces.insert(fields[0].to_owned());
            }
        }
    }
    // /proc/net/ipv6_route: dest prefixlen src srclen nexthop metric refcnt use flags iface.
    if let Ok(routes) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in routes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 10
                && fields[0].bytes().all(|b| b == b'0')
                && fields[1] == "00"
                && fields[9] != "lo"
            {
                interfaces.insert(fields[9].to_owned());
            }
        }
    }
    interfaces.into_iter().collect()
}
