//! A pod of the lab: answers every HTTP request on `[::]:PORT` (IPv4 too) with its own name, its
//! node, and the client address it saw, so a test can tell where a connection landed; `GET
//! /bytes/N` gets N bytes instead (up to 64 MiB), a download large enough to need path MTU
//! discovery; a connection that opens with `ECHO\r\n\r\n` hears `node=<node>` and then gets
//! everything it sends back until it closes (a long-lived connection).
//!
//! `lab-pod --name web-a --node node-a [--port 80] [--ready FILE]` (FILE is created once it
//! listens).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;

/// A lab pod's HTTP server: answers every request with its name, node and the client it saw.
#[derive(Parser)]
#[command(name = "lab-pod")]
struct Args {
    /// The pod's name.
    #[arg(long)]
    name: String,
    /// The node it runs on.
    #[arg(long)]
    node: String,
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Created once it listens.
    #[arg(long, value_name = "FILE")]
    ready: Option<String>,
}

fn main() -> ExitCode {
    let Args {
        name,
        node,
        port,
        ready,
    } = Args::parse();
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

/// A connection that starts with this is a long-lived one: it hears `node=<node>` and then
/// everything it sends comes back.
const ECHO: &[u8] = b"ECHO\r\n\r\n";

/// Says the node, then echoes what the client sends (starting with `already`, read with the
/// request head) until it closes: the soak's long-lived connections, which must survive what
/// goes on around them.
fn echo(mut stream: TcpStream, node: &str, already: &[u8]) {
    let _ = stream.set_read_timeout(None);
    let hello = format!("node={node}\n");
    if stream.write_all(hello.as_bytes()).is_err() || stream.write_all(already).is_err() {
        return;
    }
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// The largest `GET /bytes/N` served.
const MAX_DOWNLOAD: usize = 64 << 20;

/// Reads the request head and answers `pod=… node=… peer=…`, or N bytes for `GET /bytes/N`.
fn serve(mut stream: TcpStream, name: &str, node: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    if let Some(rest) = request.strip_prefix(ECHO) {
        echo(stream, node, rest);
        return;
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|err| err.to_string(), |peer| unmapped(peer).to_string());
    let body = match download_size(&request) {
        Some(size) => vec![b'x'; size],
        None => format!("pod={name} node={node} peer={peer}\n").into_bytes(),
    };
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body));
}

/// N of a `GET /bytes/N` request line, if that is what it asks for.
fn download_size(request: &[u8]) -> Option<usize> {
    let line = request.split(|&b| b == b'\r').next()?;
    let path = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
    let size: usize = path.strip_prefix("/bytes/")?.parse().ok()?;
    Some(size.min(MAX_DOWNLOAD))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_bytes_n_asks_for_a_download() {
        assert_eq!(
            download_size(b"GET /bytes/1048576 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(1 << 20)
        );
        assert_eq!(
            download_size(b"GET /bytes/999999999999 HTTP/1.1\r\n\r\n"),
            Some(MAX_DOWNLOAD)
        );
        for other in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET /bytes/x HTTP/1.1\r\n",
            b"",
        ] {
            assert_eq!(download_size(other), None);
        }
    }
}
