//! Address events on `lo`, as they happen: a raw `NETLINK_ROUTE` socket subscribed to
//! `RTMGRP_IPV4_IFADDR`, read on its own thread, each event stamped the moment it arrives.
//! The kernel sends the event while l3lb's `RTM_NEWADDR`/`RTM_DELADDR` request is processed,
//! so the stamp is when the address appeared or vanished, give or take a wakeup.
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLMSG_HDR: usize = 16;
const IFADDRMSG: usize = 8;
/// `lo` is interface 1 in every network namespace.
const LO_INDEX: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressEvent {
    pub at: Instant,
    pub added: bool,
    pub addr: Ipv4Addr,
}

/// Stops and joins the reader thread when dropped.
pub struct Monitor {
    pub events: mpsc::Receiver<AddressEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Set when the kernel dropped events (receive buffer overrun): the record is incomplete.
    pub overrun: Arc<AtomicBool>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Subscribes (in namespace `netns`) before returning, so no event after this call is missed.
pub fn monitor(netns: &str) -> Result<Monitor> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let stop = Arc::new(AtomicBool::new(false));
    let overrun = Arc::new(AtomicBool::new(false));
    let (netns, thread_stop, thread_overrun) = (netns.to_owned(), stop.clone(), overrun.clone());
    let thread = std::thread::spawn(move || {
        // Panics (and so reports "did not start") when the namespace cannot be entered.
        crate::netns::enter(&netns);
        let fd = match subscribe() {
            Ok(fd) => fd,
            Err(err) => {
                let _ = ready_tx.send(Err(err));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        read_events(fd, &tx, &thread_stop, &thread_overrun);
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(fd) };
    });
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(Monitor {
            events: rx,
            stop,
            thread: Some(thread),
            overrun,
        }),
        Ok(Err(err)) => bail!("netlink monitor: {err}"),
        Err(_) => bail!("netlink monitor did not start"),
    }
}

fn subscribe() -> Result<i32, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: zeroed sockaddr_nl is valid; family and groups set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_IPV4_IFADDR;
    // SAFETY: a valid socket and address of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        return Err(format!("bind: {err}"));
    }
    let size: libc::c_int = 16 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a valid socket; int and timeval options of the sizes given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            4,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

fn read_events(fd: i32, tx: &mpsc::Sender<AddressEvent>, stop: &AtomicBool, overrun: &AtomicBool) {
    let mut buffer = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: a buffer of the length given.
        let n = unsafe {
            libc::recv(
                fd,
                buffer.as_mut_ptr() as *mut libc::c_void,
                buffer.len(),
                0,
            )
        };
        let at = Instant::now();
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                overrun.store(true, Ordering::Relaxed);
            }
            continue;
        }
        for (added, addr) in parse(&buffer[..n as usize]) {
            let _ = tx.send(AddressEvent { at, added, addr });
        }
    }
}

/// The IPv4 addresses added to or removed from `lo` in one netlink datagram.
fn parse(mut data: &[u8]) -> Vec<(bool, Ipv4Addr)> {
    let u16_at = |d: &[u8], i: usize| u16::from_ne_bytes([d[i], d[i + 1]]);
    let u32_at = |d: &[u8], i: usize| u32::from_ne_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    let mut events = Vec::new();
    while data.len() >= NLMSG_HDR {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDR || len > data.len() {
            break;
        }
        let kind = u16_at(data, 4);
        let message = &data[NLMSG_HDR..len];
        if (kind == RTM_NEWADDR || kind == RTM_DELADDR)
            && message.len() >= IFADDRMSG
            && message[0] == libc::AF_INET as u8
            && u32_at(message, 4) == LO_INDEX
        {
            let mut attrs = &message[IFADDRMSG..];
            let mut found = None;
            while attrs.len() >= 4 {
                let attr_len = u16_at(attrs, 0) as usize;
                if attr_len < 4 || attr_len > attrs.len() {
                    break;
                }
                let attr_type = u16_at(attrs, 2);
                if (attr_type == IFA_LOCAL || (attr_type == IFA_ADDRESS && found.is_none()))
                    && attr_len >= 8
                {
                    found = Some(Ipv4Addr::new(attrs[4], attrs[5], attrs[6], attrs[7]));
                }
                attrs = &attrs[((attr_len + 3) & !3).min(attrs.len())..];
            }
            if let Some(addr) = found {
                events.push((kind == RTM_NEWADDR, addr));
            }
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    events
}
