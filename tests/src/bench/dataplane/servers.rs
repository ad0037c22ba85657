//! The servers in the pods: a UDP reader and a TCP acceptor that closes the new-connections
//! lane's connections and echoes the request/response lane's.
use std::{
    net::{TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use super::{BATCH, RR_PORTS, rr_cpu, set_int};
use crate::{
    bench::{kubeproxy::TARGET_PORT, sys},
    netns::NetNs,
};

/// The pods' servers: one thread reads both pods' UDP sockets, one accepts on both pods'
/// TCP listeners (each socket was opened inside its pod's namespace). Two threads per
/// topology, whatever the number of pods, so that the servers do not crowd out the sender on
/// a small machine.
pub(super) struct Servers {
    stop: Arc<AtomicBool>,
    /// While set, the UDP reader spins on non-blocking reads instead of sleeping in the
    /// kernel: no wakeup per datagram, so the path is measured rather than the scheduler.
    pub(super) spin: Arc<AtomicBool>,
    /// Datagrams the reader received.
    pub(super) received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

pub(super) fn start_servers(pods: &[NetNs]) -> Result<Servers> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for pod in pods {
        let (u, t) = sys::in_netns(pod.name(), || -> Result<(UdpSocket, TcpListener)> {
            let udp = UdpSocket::bind(("0.0.0.0", TARGET_PORT))?;
            set_int(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                8 << 20,
            );
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let tcp = TcpListener::bind(("0.0.0.0", TARGET_PORT))?;
            // A deep accept queue: std listens with a short one, and a full queue drops SYNs.
            // SAFETY: listen(2) again on a listening socket only changes its backlog.
            unsafe { libc::listen(tcp.as_raw_fd(), 4096) };
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })??;
        udp.push(u);
        tcp.push(t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spin = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        let (stop, spin, received) = (stop.clone(), spin.clone(), received.clone());
        threads.push(std::thread::spawn(move || {
            read_udp(&udp, &stop, &spin, &received)
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || accept_tcp(&tcp, &stop)));
    }
    Ok(Servers {
        stop,
        spin,
        received,
        threads,
    })
}

/// Reads and counts the datagrams of all pods' sockets, in batches.
fn read_udp(sockets: &[UdpSocket], stop: &AtomicBool, spin: &AtomicBool, received: &AtomicU64) {
    let mut buffers = vec![[0u8; 64]; BATCH];
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid (null name, no control).
    let mut messages: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
        message.msg_hdr.msg_iov = iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        let spinning = spin.load(Ordering::Relaxed);
        for socket in sockets {
            let flags = if spinning {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITFORONE
            };
            // SAFETY: BATCH message headers, each pointing at its own buffer.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    messages.as_mut_ptr(),
                    BATCH as u32,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Accepts every pending connection on all pods' listeners. A connection from a client port
/// above the clients' ephemeral range ([`RR_PORTS`]) is the request/response lane's: a thread of
/// its own echoes it. Every other one is the new-connections lane's and is closed at once.
fn accept_tcp(listeners: &[TcpListener], stop: &Arc<AtomicBool>) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut echoes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for listener in listeners {
            while let Ok((stream, peer)) = listener.accept() {
                if peer.port() >= RR_PORTS.start {
                    let stop = stop.clone();
                    echoes.push(std::thread::spawn(move || echo(stream, &stop)));
                } else {
                    drop(stream);
                }
            }
        }
        echoes.retain(|echo: &JoinHandle<()>| !echo.is_finished());
    }
    for echo in echoes {
        let _ = echo.join();
    }
}

/// Sends back whatever arrives on `stream` until the client closes it or the servers stop.
fn echo(mut stream: std::net::TcpStream, stop: &AtomicBool) {
    use std::io::{Read as _, Write as _};
    // Accepted sockets do not inherit the listener's O_NONBLOCK; blocking reads with a timeout
    // let the thread notice `stop`.
    let _ = sys::pin_to_cpu(rr_cpu());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
