//! A pod of the lab: answers every HTTP request on `[::]:PORT` (IPv4 too) with its own name, its
//! node, and the client address it saw, so a test can tell where a connection landed.
//!
//! `lab-pod --name web-a --node node-a [--port 80] [--ready FILE]` (FILE is created once it
//! listens).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let mut name = None;
    let mut node = None;
    let mut port = 80u16;
    let mut ready = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--name", Some(value)) => name = Some(value),
            ("--node", Some(value)) => node = Some(value),
            ("--port", Some(value)) => match value.parse() {
                Ok(value) => port = value,
                Err(_) => return usage(&format!("bad port {value:?}")),
            },
            ("--ready", Some(value)) => ready = Some(value),
            _ => return usage(&format!("unexpected argument {flag:?}")),
        }
    }
    let (Some(name), Some(node)) = (name, node) else {
        return usage("--name and --node are required");
    };
    // [::] with IPV6_V6ONLY off (the Linux default) takes IPv4 connections too.
    let listener = match TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("lab-pod {name}: listening on port {port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(ready) = ready
        && let Err(err) = std::fs::write(&ready, b"")
    {
        eprintln!("lab-pod {name}: writing {ready}: {err}");
        return ExitCode::FAILURE;
    }
    eprintln!("lab-pod {name} on {node}: listening on port {port}");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let (name, node) = (name.clone(), node.clone());
                std::thread::spawn(move || serve(stream, &name, &node));
            }
            Err(err) => eprintln!("lab-pod {name}: accept: {err}"),
        }
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "lab-pod: {problem}\nusage: lab-pod --name POD --node NODE [--port 80] [--ready FILE]"
    );
    ExitCode::from(2)
}

/// Reads the request head (whatever it asks for) and answers `pod=… node=… peer=…`.
fn serve(mut stream: TcpStream, name: &str, node: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|err| err.to_string(), |peer| unmapped(peer).to_string());
    let body = format!("pod={name} node={node} peer={peer}\n");
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// IPv4 clients show up as `::ffff:a.b.c.d` on a dual-stack socket; report them as IPv4.
fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), peer.port()),
            None => peer,
        },
        IpAddr::V4(_) => peer,
    }
}
