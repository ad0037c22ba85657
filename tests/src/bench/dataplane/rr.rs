//! The request/response lane: netperf's `TCP_RR` on one connection, both ends on one CPU.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{RR_PORTS, rr_cpu, set_int};
use crate::{bench::sys, netns::NetNs};

/// `sockaddr_in` of `addr`.
fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: zeroed sockaddr_in is valid; fields set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

static NEXT_RR_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// netperf's `TCP_RR`: one TCP connection to `target` from a client port in [`RR_PORTS`] (so the
/// pod echoes it), a 1-byte request and the 1-byte answer, again and again for `duration`.
/// Returns (transactions, elapsed). The connection ends with a reset (no TIME_WAIT on the port).
pub(super) fn tcp_rr(
    client: &NetNs,
    target: SocketAddrV4,
    duration: Duration,
) -> Result<(u64, Duration)> {
    use std::io::{Read as _, Write as _};
    let span = RR_PORTS.end - RR_PORTS.start;
    let port = RR_PORTS.start + NEXT_RR_PORT.fetch_add(1, Ordering::Relaxed) % span;
    sys::in_netns(client.name(), move || -> Result<(u64, Duration)> {
        let cpu = rr_cpu();
        sys::pin_to_cpu(cpu).with_context(|| format!("moving the client to CPU {cpu}"))?;
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our descriptor, owned from here on.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        // A blocking connect gives up after SO_SNDTIMEO.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let local = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let remote = sockaddr(target);
        // SAFETY: a valid socket; a timeval and addresses of the sizes given.
        let (bound, connected) = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
            let bound = libc::bind(
                fd,
                &local as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as u32,
            );
            let connected = (bound == 0).then(|| {
                libc::connect(
                    fd,
                    &remote as *const libc::sockaddr_in as *const libc::sockaddr,
                    size_of::<libc::sockaddr_in>() as u32,
                )
            });
            (bound, connected)
        };
        if bound != 0 {
            bail!("binding port {port}: {}", std::io::Error::last_os_error());
        }
        if connected != Some(0) {
            bail!(
                "connecting to {target} from port {port}: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut stream = std::net::TcpStream::from(socket);
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut answer = [0u8; 1];
        let mut transactions = 0u64;
        let started = Instant::now();
        while started.elapsed() < duration {
            stream
                .write_all(b"q")
                .and_then(|()| stream.read_exact(&mut answer))
                .with_context(|| {
                    format!(
                        "transaction {} with {target} from port {port}",
                        transactions + 1
                    )
                })?;
            transactions += 1;
        }
        let elapsed = started.elapsed();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: our socket; a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                size_of::<libc::linger>() as u32,
            )
        };
        Ok((transactions, elapsed))
    })?
}
