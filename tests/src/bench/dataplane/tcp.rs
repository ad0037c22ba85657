//! The new-connections lane: non-blocking connects kept in flight, each reset once established.
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::IN_FLIGHT;
use crate::{bench::sys, netns::NetNs};

/// Opens TCP connections to `service:80` from one client thread keeping `IN_FLIGHT`
/// non-blocking connects outstanding, and resets each one as soon as its handshake completes
/// (`SO_LINGER` 0: no TIME_WAIT), until `duration` or `max`. Returns (completed, failed,
/// elapsed); a connect not done within a second counts as failed.
pub(super) fn tcp_connects(
    client: &NetNs,
    target: SocketAddrV4,
    duration: Duration,
    max: u64,
) -> Result<(u64, u64, Duration)> {
    sys::in_netns(client.name(), move || -> Result<(u64, u64, Duration)> {
        // SAFETY: plain epoll_create1(2); the descriptor is owned below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, closed when this drops.
        let _epoll_guard =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll) };
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_port = target.port().to_be();
        addr.sin_addr.s_addr = u32::from(*target.ip()).to_be();
        let mut pending: std::collections::HashMap<i32, Instant> = std::collections::HashMap::new();
        let (mut ok, mut failed, mut opened) = (0u64, 0u64, 0u64);
        let finish = |fd: i32| {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: our socket; a linger struct of the size given; closed once.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    size_of::<libc::linger>() as u32,
                );
                libc::close(fd);
            }
        };
        let started = Instant::now();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; IN_FLIGHT];
        loop {
            let running = started.elapsed() < duration && opened < max;
            if !running && pending.is_empty() {
                break;
            }
            while running && pending.len() < IN_FLIGHT && opened < max {
                // SAFETY: plain socket(2).
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                if fd < 0 {
                    bail!("socket: {}", std::io::Error::last_os_error());
                }
                // SAFETY: a valid socket and address of the size given.
                let rc = unsafe {
                    libc::connect(
                        fd,
                        &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                if rc != 0 && errno != Some(libc::EINPROGRESS) {
                    failed += 1;
                    finish(fd);
                    continue;
                }
                let mut event = libc::epoll_event {
                    events: libc::EPOLLOUT as u32,
                    u64: fd as u64,
                };
                // SAFETY: valid descriptors and event.
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
                pending.insert(fd, Instant::now());
                opened += 1;
            }
            // SAFETY: an event array of the length given.
            let n =
                unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 10) };
            for event in &events[..n.max(0) as usize] {
                let fd = event.u64 as i32;
                let mut error: libc::c_int = 0;
                let mut len = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: our socket; an int of the size given.
                unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut error as *mut libc::c_int as *mut libc::c_void,
                        &mut len,
                    )
                };
                if error == 0 {
                    ok += 1
                } else {
                    failed += 1
                }
                pending.remove(&fd);
                finish(fd);
            }
            let now = Instant::now();
            let stale: Vec<i32> = pending
                .iter()
                .filter(|(_, at)| now.duration_since(**at) > Duration::from_secs(1))
                .map(|(fd, _)| *fd)
                .collect();
            for fd in stale {
                pending.remove(&fd);
                failed += 1;
                finish(fd);
            }
        }
        Ok((ok, failed, started.elapsed()))
    })?
}
