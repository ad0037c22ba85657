//! The soak's client, in the lab's client namespace: short connections one after the other to
//! a random announced service IP (a request, the pod's answer, close), and a few long-lived
//! connections that echo a line every 100 ms until they break. Each outcome is judged against
//! the timeline: a failure while the IP's routes were changing (or a node was excused) is
//! turbulence; one in calm is unexplained.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::timeline::Timeline;
use crate::{lab::SERVICE_PORT, netns};

/// Long enough for a SYN retransmitted once (the first goes after 1 s): a pod server with a
/// full accept queue on a loaded machine drops a SYN now and then, which is no routing fault.
const CONNECT: Duration = Duration::from_millis(3500);
const ANSWER: Duration = Duration::from_secs(3);
/// Long-lived connections kept open at once.
const LONG_LIVED: usize = 4;
const ECHO_EVERY: Duration = Duration::from_millis(100);

/// How the short connections went.
#[derive(Clone, Debug, Default)]
pub struct Short {
    pub ok: usize,
    /// Failed while the IP's routes changed (or a node was excused).
    pub failed_in_turbulence: usize,
    /// Failed in calm: with the reason, the first few.
    pub failed_in_calm: usize,
    pub calm_examples: Vec<String>,
    /// Answered by a pod on a node the router should not have sent it to, in calm.
    pub misrouted_in_calm: usize,
}

/// How the long-lived connections went.
#[derive(Clone, Debug, Default)]
pub struct Long {
    pub opened: usize,
    /// Still open at the end.
    pub survived: usize,
    /// Broken while the routes changed, by why, with their ages.
    pub broken: BTreeMap<Break, Vec<Duration>>,
    /// Broken in calm: what happened, the first few.
    pub broken_in_calm: Vec<String>,
}

/// Why a long-lived connection broke while the routes changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Break {
    /// Its node stopped announcing the IP (no ready pod there any more): the router sends its
    /// packets to another node, whose pods know nothing of it.
    Withdrawn,
    /// Its node's bgpd restarted: the router dropped the node's routes meanwhile.
    BgpdRestart,
    /// Its node still announces, but the IP's nexthops changed and the router's hash moved the
    /// flow to another node.
    Rehashed,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Break::Withdrawn => "its node withdrew the IP (no ready pod left there)",
            Break::BgpdRestart => "its node's bgpd restarted",
            Break::Rehashed => "the router rehashed it when the IP's nexthops changed",
        })
    }
}

/// Runs both kinds of clients in namespace `client` until `stop`.
pub fn run(
    client: String,
    timeline: Arc<Mutex<Timeline>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<Short>,
    std::thread::JoinHandle<Long>,
) {
    let short = {
        let (client, timeline, stop) = (client.clone(), timeline.clone(), stop.clone());
        std::thread::spawn(move || {
            netns::enter(&client);
            short_connections(&timeline, seed, &stop)
        })
    };
    let long = std::thread::spawn(move || {
        netns::enter(&client);
        long_connections(&timeline, seed.wrapping_add(1), &stop)
    });
    (short, long)
}

/// A random IP the router should route now, and its nodes.
fn target(timeline: &Mutex<Timeline>, rng: &mut fastrand::Rng) -> Option<(IpAddr, Vec<usize>)> {
    let timeline = timeline.lock().expect("the timeline");
    let routes: Vec<_> = timeline.expected().iter().collect();
    if routes.is_empty() {
        return None;
    }
    let (ip, nodes) = routes[rng.usize(0..routes.len())];
    Some((*ip, nodes.iter().copied().collect()))
}

fn short_connections(timeline: &Mutex<Timeline>, seed: u64, stop: &AtomicBool) -> Short {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut short = Short::default();
    while !stop.load(Ordering::SeqCst) {
        let Some((ip, nodes)) = target(timeline, &mut rng) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let started = Instant::now();
        let outcome = get(ip);
        let ended = Instant::now();
        let turbulent = timeline
            .lock()
            .expect("the timeline")
            .turbulent(ip, started, ended);
        let outcome_failed = outcome.is_err();
        match outcome {
            Ok(node) if node.is_none_or(|node| nodes.contains(&node)) || turbulent => {
                short.ok += 1;
            }
            Ok(node) => {
                short.ok += 1;
                short.misrouted_in_calm += 1;
                if short.calm_examples.len() < 10 {
                    short.calm_examples.push(format!(
                        "{ip}: answered on node {node:?}, expected {nodes:?}"
                    ));
                }
            }
            Err(_) if turbulent => short.failed_in_turbulence += 1,
            Err(err) => {
                short.failed_in_calm += 1;
                if short.calm_examples.len() < 10 {
                    let timeline = timeline.lock().expect("the timeline");
                    short.calm_examples.push(format!(
                        "at {:.2} s, {ip}: {err}{}",
                        timeline.since_start(started),
                        after_change(&timeline, Instant::now())
                    ));
                }
            }
        }
        if outcome_failed {
            // A refused connection fails in microseconds: pace the retries, so that the counts
            // say how long something failed rather than how fast the loop spins.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    short
}

/// "; 0.12 s after <the last change before `at`>", or nothing before the first change.
fn after_change(timeline: &Timeline, at: Instant) -> String {
    timeline
        .last_change_before(at)
        .map(|change| format!("; {change}"))
        .unwrap_or_default()
}

/// One request to `ip`: the node (index) of the pod that answered.
fn get(ip: IpAddr) -> Result<Option<usize>, String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, SERVICE_PORT), CONNECT)
        .map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(ANSWER))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|err| format!("request: {err}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|err| format!("answer: {err}"))?;
    let node = answer
        .split_whitespace()
        .find_map(|word| word.strip_prefix("node=node-"))
        .and_then(|letter| letter.bytes().next())
        .map(|letter| usize::from(letter - b'a'));
    if node.is_none() {
        return Err(format!("unexpected answer {answer:?}"));
    }
    Ok(node)
}

struct Open {
    ip: IpAddr,
    /// The node of the pod it reached.
    node: usize,
    opened: Instant,
    /// When its last echo came back (or it opened).
    last_ok: Instant,
    reader: BufReader<TcpStream>,
    sent: u64,
}

fn long_connections(timeline: &Mutex<Timeline>, seed: u64, stop: &AtomicBool) -> Long {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut long = Long::default();
    let mut open: BTreeMap<usize, Open> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        for slot in 0..LONG_LIVED {
            if let std::collections::btree_map::Entry::Vacant(entry) = open.entry(slot)
                && let Some((ip, _)) = target(timeline, &mut rng)
                && let Ok(connection) = connect_echo(ip)
            {
                long.opened += 1;
                entry.insert(connection);
            }
        }
        let mut broken = Vec::new();
        for (&slot, connection) in &mut open {
            if let Err(err) = ping(connection) {
                broken.push((slot, err));
            }
        }
        for (slot, err) in broken {
            let connection = open.remove(&slot).expect("just pinged");
            let now = Instant::now();
            let age = now - connection.opened;
            // It broke after its last good echo: judge that whole stretch (the pings of the
            // other connections may have held this thread for a while).
            let turbulent = timeline.lock().expect("the timeline").turbulent(
                connection.ip,
                connection.last_ok,
                now,
            );
            let timeline = timeline.lock().expect("the timeline");
            let at = timeline.since_start(now);
            let why = if timeline.excused_during(connection.node, connection.last_ok, now) {
                Some(Break::BgpdRestart)
            } else if !turbulent {
                None
            } else if timeline
                .expected()
                .get(&connection.ip)
                .is_none_or(|nodes| !nodes.contains(&connection.node))
            {
                Some(Break::Withdrawn)
            } else {
                Some(Break::Rehashed)
            };
            let context = after_change(&timeline, now);
            drop(timeline);
            if let Some(why) = why {
                long.broken.entry(why).or_default().push(age);
            } else if long.broken_in_calm.len() < 20 {
                long.broken_in_calm.push(format!(
                    "at {at:.2} s, {} after {:.1} s: {err}{context}",
                    connection.ip,
                    age.as_secs_f64(),
                ));
            }
        }
        std::thread::sleep(ECHO_EVERY);
    }
    long.survived = open.len();
    long
}

fn connect_echo(ip: IpAddr) -> Result<Open, String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, SERVICE_PORT), CONNECT)
        .map_err(|err| err.to_string())?;
    stream
        .set_read_timeout(Some(ANSWER))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"ECHO\r\n\r\n")
        .map_err(|err| err.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut hello = String::new();
    reader
        .read_line(&mut hello)
        .map_err(|err| err.to_string())?;
    let node = hello
        .trim()
        .strip_prefix("node=node-")
        .and_then(|letter| letter.bytes().next())
        .map(|letter| usize::from(letter - b'a'))
        .ok_or_else(|| format!("unexpected hello {hello:?}"))?;
    Ok(Open {
        ip,
        node,
        opened: Instant::now(),
        last_ok: Instant::now(),
        reader,
        sent: 0,
    })
}

fn ping(connection: &mut Open) -> Result<(), String> {
    connection.sent += 1;
    let line = format!("ping {}\n", connection.sent);
    connection
        .reader
        .get_mut()
        .write_all(line.as_bytes())
        .map_err(|err| format!("send: {err}"))?;
    let mut back = String::new();
    match connection.reader.read_line(&mut back) {
        Ok(0) => Err("closed".to_owned()),
        Ok(_) if back == line => {
            connection.last_ok = Instant::now();
            Ok(())
        }
        Ok(_) => Err(format!("echoed {back:?} for {line:?}")),
        Err(err) => Err(format!("echo: {err}")),
    }
}
