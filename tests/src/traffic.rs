//! Real traffic for the fast path's end-to-end tests: pods that answer with who they are and
//! whom they saw, and a client that asks through a service address over TCP and UDP.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::netns::{self, NetNs};

/// How long a client waits for an answer.
const ANSWER: Duration = Duration::from_secs(2);

/// Runs TCP and UDP servers on `port` (both families) inside `pod` until `stop`: each answers
/// a request with `"{name} saw {peer address}"`. A TCP connection stays open and answers every
/// request on it, so a test can hold one across changes.
pub fn serve_pod(pod: &NetNs, name: String, port: u16, stop: Arc<AtomicBool>) {
    let pod = pod.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&pod);
        let tcp = TcpListener::bind(("::", port)).expect("pod TCP listener (dual-stack)");
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind(("::", port)).expect("pod UDP socket (dual-stack)");
        udp.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((stream, peer)) = tcp.accept() {
                let name = name.clone();
                let stop = stop.clone();
                std::thread::spawn(move || answer_connection(stream, peer, &name, &stop));
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(identity(&name, peer).as_bytes(), peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("pod server started");
}

fn identity(name: &str, peer: SocketAddr) -> String {
    let ip = peer.ip().to_canonical();
    format!("{name} saw {ip}")
}

fn answer_connection(mut stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buffer = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {
                if stream.write_all(identity(name, peer).as_bytes()).is_err() {
                    return;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One TCP request (a fresh connection) and one UDP datagram from `source_port` to `service`,
/// from inside `client`; the pods' answers. A UDP answer counts only when it came from the
/// service address: the reply was translated back.
pub fn ask(
    client: &NetNs,
    service: SocketAddr,
    source_port: u16,
) -> (Option<String>, Option<String>) {
    client.run_inside(move || {
        let tcp = (|| {
            let mut stream = Connection::open(service)?;
            stream.request()
        })();
        let udp = (|| {
            let local: SocketAddr = if service.is_ipv4() {
                ([0, 0, 0, 0], source_port).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, source_port).into()
            };
            let socket = UdpSocket::bind(local).ok()?;
            socket.set_read_timeout(Some(ANSWER)).ok()?;
            socket.send_to(b"who?", service).ok()?;
            let mut buffer = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buffer).ok()?;
            (from == service).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
        })();
        (tcp, udp)
    })
}

/// A TCP connection held open across a test's changes.
pub struct Connection {
    stream: TcpStream,
}

impl Connection {
    /// Connects from the calling thread's namespace (see [`NetNs::run_inside`]); the socket
    /// keeps that namespace afterwards, whichever thread uses it.
    pub fn open(service: SocketAddr) -> Option<Connection> {
        let stream = TcpStream::connect_timeout(&service, ANSWER).ok()?;
        stream.set_read_timeout(Some(ANSWER)).ok()?;
        Some(Connection { stream })
    }

    /// Opens a connection from inside `client`.
    pub fn open_from(client: &NetNs, service: SocketAddr) -> Option<Connection> {
        client.run_inside(move || Connection::open(service))
    }

    /// One request and its answer on this connection.
    pub fn request(&mut self) -> Option<String> {
        self.stream.write_all(b"who?").ok()?;
        let mut buffer = [0u8; 512];
        let n = self.stream.read(&mut buffer).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
    }
}
