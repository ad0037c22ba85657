//! `--source file:DIR`: Services and EndpointSlices read from YAML/JSON manifests in a directory,
//! reloaded when the directory changes (inotify says when, a slow poll is the safety net). It feeds the same path as the API watch, which is what
//! the lab and the tests drive, and what serves static anycast without Kubernetes.
//!
//! `L3lbIPPool` documents in the same directory give Services without an IP one: there is no
//! leader and no memory here, so every node runs the same pure allocator over the same files and
//! arrives at the same addresses, which it hands on as the Service's `l3lb.io/allocated-ips`
//! (what a leader would have written). An allocation may move when the files change; an
//! explicit IP pins it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Service;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use super::manifest::ManifestError;
use super::{
    manifest::{Parsed, parse_file},
    model::{ClusterChange, DEFAULT_LOAD_BALANCER_CLASS, ServiceSpec, SliceSpec},
};
use crate::{
    allocator::{parse_pools, pool_reports, request_from_service},
    crd::L3lbIPPool,
    pools,
    status::PoolReport,
};

/// How often the directory is checked for changes when inotify says nothing: the safety net
/// for what it cannot see (a directory replaced or back after an outage, network filesystems,
/// a watch that failed). inotify brings every other change at once.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A parse taking longer than this is named in a warning: the limits keep every known hostile
/// shape far below it, so it means one they miss (see [`super::limits::flow_depth`]).
const SLOW_PARSE: Duration = Duration::from_secs(10);
/// How often the directory is checked while no watch runs on it.
const UNWATCHED_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A file's identity for change detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

pub struct FileSource {
    dir: PathBuf,
    node: String,
    poll_interval: Duration,
    /// Last good parse per file. A file that stops parsing (say, half written) keeps its last
    /// good objects, so a typo never withdraws what was announced.
    files: BTreeMap<PathBuf, (Stamp, Parsed)>,
    /// Stamps whose failure was already logged, so a broken file warns once per version.
    reported: BTreeMap<PathBuf, Stamp>,
    /// Entries that cannot be read or are no files, with what was logged about them: each
    /// warns once, not on every scan.
    unusable: BTreeMap<PathBuf, String>,
    load_balancer_class: String,
    /// Where the pools' state goes for `l3lb status`.
    pool_reports: Option<watch::Sender<Vec<PoolReport>>>,
    /// The directory could not be listed last time (said once until it can again).
    missing: bool,
    /// The inotify watch could not start last time (said once).
    watch_failed: bool,
    /// The file being parsed, and since when: what the watchdog looks at.
    parsing: Arc<Mutex<Option<(PathBuf, Instant)>>>,
    /// How many times the directory was read.
    scans: Arc<AtomicU64>,
}

impl FileSource {
    pub fn new(dir: PathBuf, node: String, poll_interval: Duration) -> Self {
        FileSource {
            dir,
            node,
            poll_interval,
            files: BTreeMap::new(),
            reported: BTreeMap::new(),
            unusable: BTreeMap::new(),
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.into(),
            pool_reports: None,
            missing: false,
            watch_failed: false,
            parsing: Arc::default(),
            scans: Arc::default(),
        }
    }

    /// Counts the directory's reads, from now on and after [`FileSource::run`] took the source.
    pub fn scan_counter(&self) -> Arc<AtomicU64> {
        self.scans.clone()
    }

    /// Allocates for Services of `class` from the pools in the files, reporting the pools on
    /// `reports`.
    pub fn allocating(mut self, class: String, reports: watch::Sender<Vec<PoolReport>>) -> Self {
        self.load_balancer_class = class;
        self.pool_reports = Some(reports);
        self
    }

    /// Sends the directory's contents as a relist now and after every change, until the receiver
    /// goes away. Reading and parsing block (up to a second for a hostile file at the limits):
    /// the daemon runs this on a thread of its own, see [`FileSource::spawn`].
    pub async fn run(mut self, changes: mpsc::Sender<ClusterChange>) {
        info!(dir = %self.dir.display(), "reading Services and EndpointSlices from files");
        // Whether a relist went out yet: the first one does even when nothing changed.
        let mut relisted = false;
        let (wake, mut woken) = mpsc::channel::<()>(1);
        // One inotify instance for the source's life; the directory is watched while it is
        // there (a watch follows the inode, so it goes when the directory goes).
        let mut watcher = self.watcher(wake);
        let mut watching = false;
        let mut started = false;
        loop {
            if std::mem::replace(&mut started, true) {
                // Without a watch (the directory gone, or inotify refused), poll as often as
                // before there was one.
                let pause = if watching {
                    self.poll_interval
                } else {
                    UNWATCHED_POLL_INTERVAL
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    Some(()) = woken.recv() => {}
                }
            }
            if !watching && let Some(watcher) = watcher.as_mut() {
                watching = self.watch(watcher);
            }
            let listed = self.rescan();
            if self.missing && watching {
                if let Some(watcher) = watcher.as_mut() {
                    use notify::Watcher as _;
                    let _ = watcher.unwatch(&self.dir);
                }
                watching = false;
            }
            // Never a relist from a directory that could not be read, not even the first: an
            // l3lb started during an outage keeps what an earlier run left until it can read.
            if !listed && (relisted || self.missing) {
                continue;
            }
            relisted = true;
            let (services, slices) = self.snapshot();
            let node = self
                .files
                .values()
                .find_map(|(_, parsed)| parsed.node.clone());
            debug!(
                services = services.len(),
                slices = slices.len(),
                "manifests changed"
            );
            // The Node first: a restart on an excluded node never announces for a moment.
            if changes.send(ClusterChange::NodeListed(node)).await.is_err()
                || changes
                    .send(ClusterChange::ServicesListed(services))
                    .await
                    .is_err()
                || changes
                    .send(ClusterChange::SlicesListed(slices))
                    .await
                    .is_err()
            {
                return;
            }
        }
    }

    /// The inotify instance whose events wake the loop (a burst makes one wake-up: the
    /// channel holds one); `None` (polling only) when there is none to have, said once.
    fn watcher(&self, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let handler = move |event: notify::Result<notify::Event>| {
            // Not accesses: a rescan opens the directory and the files itself, and waking on
            // those would rescan forever.
            if event.is_ok_and(|event| !event.kind.is_access()) {
                let _ = wake.try_send(());
            }
        };
        notify::recommended_watcher(handler)
            .inspect_err(|err| {
                warn!(
                    dir = %self.dir.display(),
                    "cannot use inotify, polling the manifests every {:?}: {err}",
                    UNWATCHED_POLL_INTERVAL
                );
            })
            .ok()
    }

    /// Starts watching the directory; whether that worked (said once while it does not, unless
    /// the directory is simply not there).
    fn watch(&mut self, watcher: &mut notify::RecommendedWatcher) -> bool {
        use notify::Watcher as _;
        if !self.dir.is_dir() {
            return false;
        }
        match watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watch_failed = false;
                true
            }
            Err(err) => {
                if !self.watch_failed {
                    warn!(
                        dir = %self.dir.display(),
                        "cannot watch the manifests, polling every {:?}: {err}",
                        UNWATCHED_POLL_INTERVAL
                    );
                }
                self.watch_failed = true;
                false
            }
        }
    }

    /// Runs [`FileSource::run`] on a thread of its own, so a slow file never stalls the
    /// runtime's workers, and the parser's garbage stays in that one thread's malloc arena
    /// instead of being spread over (and kept by) the blocking pool's threads.
    pub fn spawn(self, changes: mpsc::Sender<ClusterChange>) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = Arc::downgrade(&self.parsing);
        std::thread::Builder::new()
            .name("l3lb-manifests".into())
            .spawn(move || runtime.block_on(self.run(changes)))?;
        // A parse that never ends would stall the source without a word: the watchdog names the
        // file. It ends with the source (the state it watches goes away).
        std::thread::Builder::new()
            .name("l3lb-manifests-watchdog".into())
            .spawn(move || {
                let mut warned = None;
                while let Some(parsing) = state.upgrade() {
                    let current = parsing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    drop(parsing);
                    if let Some((file, since)) = stalled(current, &mut warned, Instant::now()) {
                        warn!(
                            file = %file.display(),
                            "still parsing this manifest after {:?}: the file source is stalled until it finishes; what is announced stays as it is",
                            since.elapsed()
                        );
                    }
                    std::thread::sleep(SLOW_PARSE / 4);
                }
            })?;
        Ok(())
    }

    /// Re-reads files whose stamp changed; true when anything differs from before.
    fn rescan(&mut self) -> bool {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let listed = match manifest_files(&self.dir) {
            Ok(listed) => {
                self.missing = false;
                listed
            }
            Err(err) => {
                // A missing directory reads as the last known state, not as "delete everything".
                if !self.missing {
                    warn!(dir = %self.dir.display(), "cannot list manifests, keeping the last known state: {err}");
                }
                self.missing = true;
                return false;
            }
        };
        let mut changed = false;
        let before = self.files.len();
        // A file that cannot be read keeps its last good contents, as one that fails to parse.
        self.files.retain(|path, _| {
            matches!(
                listed.get(path),
                Some(Listed::File(_) | Listed::Unreadable(_))
            )
        });
        changed |= self.files.len() != before;
        self.reported.retain(|path, _| listed.contains_key(path));
        self.unusable.retain(|path, _| listed.contains_key(path));
        for (path, entry) in listed {
            let stamp = match entry {
                Listed::File(stamp) => stamp,
                Listed::Unreadable(reason) => {
                    if self.unusable.get(&path) != Some(&reason) {
                        warn!(file = %path.display(), "cannot read manifest, keeping its last good contents: {reason}");
                        self.unusable.insert(path, reason);
                    }
                    continue;
                }
                Listed::NotAFile(what) => {
                    if self.unusable.get(&path).map(String::as_str) != Some(what) {
                        warn!(file = %path.display(), "ignoring {what}, not a manifest file");
                        self.unusable.insert(path, what.to_owned());
                    }
                    continue;
                }
            };
            self.unusable.remove(&path);
            if self
                .files
                .get(&path)
                .is_some_and(|(known, _)| *known == stamp)
                || self.reported.get(&path) == Some(&stamp)
            {
                continue;
            }
            *self.parsing.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((path.clone(), Instant::now()));
            let result = parse_file(&path, &self.node);
            *self.parsing.lock().unwrap_or_else(PoisonError::into_inner) = None;
            match result {
                Ok(parsed) => {
                    self.reported.remove(&path);
                    self.files.insert(path, (stamp, parsed));
                    changed = true;
                }
                Err(err) => {
                    warn!("skipping manifest, keeping its last good contents: {err}");
                    self.reported.insert(path, stamp);
                }
            }
        }
        changed
    }

    fn snapshot(&self) -> (Vec<ServiceSpec>, Vec<SliceSpec>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut objects = Vec::new();
        let mut pool_objects = Vec::new();
        for (_, parsed) in self.files.values() {
            services.extend(parsed.services.iter().cloned());
            slices.extend(parsed.slices.iter().cloned());
            objects.extend(parsed.objects.iter());
            pool_objects.extend(parsed.pools.iter());
        }
        if !pool_objects.is_empty() {
            self.allocate(&mut services, &objects, &pool_objects);
        }
        (services, slices)
    }

    /// Gives each Service without an IP its pool address, as its `l3lb.io/allocated-ips`.
    fn allocate(
        &self,
        services: &mut [ServiceSpec],
        objects: &[&Service],
        pool_objects: &[&L3lbIPPool],
    ) {
        let (parsed_pools, broken) = parse_pools(pool_objects.iter().copied());
        for err in broken.values() {
            warn!("{err}");
        }
        let requests: Vec<pools::ServiceRequest> = objects
            .iter()
            .filter_map(|service| request_from_service(service, &self.load_balancer_class))
            .collect();
        let allocations = pools::allocate(&parsed_pools, &requests);
        for spec in services.iter_mut() {
            let Some(verdict) = allocations.services.get(&spec.key) else {
                continue;
            };
            if let Some(failure) = &verdict.failure {
                warn!(service = %spec.key, "no pool address: {failure}");
            }
            // Handed on the way the leader's allocation reaches the nodes in a cluster: as the
            // `l3lb.io/allocated-ips` request (status is no request unless another controller
            // wrote it).
            if !verdict.explicit && !verdict.ips.is_empty() {
                spec.allocated_ips = verdict.ips.iter().map(ToString::to_string).collect();
            }
        }
        if let Some(reports) = &self.pool_reports {
            reports.send_replace(pool_reports(&parsed_pools, &broken, &allocations));
        }
    }
}

/// The file of a parse running longer than [`SLOW_PARSE`] at `now`, and when it started; once
/// per parse (`warned` remembers the start of the last one reported).
fn stalled(
    parsing: Option<(PathBuf, Instant)>,
    warned: &mut Option<Instant>,
    now: Instant,
) -> Option<(PathBuf, Instant)> {
    let (file, since) = parsing?;
    if now.saturating_duration_since(since) < SLOW_PARSE || *warned == Some(since) {
        return None;
    }
    *warned = Some(since);
    Some((file, since))
}

/// A directory entry named like a manifest.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    File(Stamp),
    /// It exists but cannot be looked at: a symlink loop, a permission error.
    Unreadable(String),
    /// A directory, FIFO, socket or device (reading a FIFO would block), or a dangling symlink.
    NotAFile(&'static str),
}

fn manifest_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Listed>> {
    let mut files = BTreeMap::new();
    let mut vanished = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"));
        // Editors and `kubectl`-style writers create dotfiles and temporaries next to the real one.
        let hidden = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with('.'));
        if !is_manifest || hidden {
            continue;
        }
        let listed = match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => Listed::File(Stamp {
                modified: metadata.modified().ok(),
                len: metadata.len(),
            }),
            Ok(metadata) => Listed::NotAFile(file_kind(&metadata)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    Listed::NotAFile("a symlink to nothing")
                } else {
                    vanished = true;
                    continue; // removed between listing and stat
                }
            }
            Err(err) => Listed::Unreadable(err.to_string()),
        };
        files.insert(path, listed);
    }
    // Files vanish one by one when they are deleted, and all at once when the directory itself
    // goes away (moved, unmounted) while it is read: then this is no listing at all, not a
    // directory emptied, which would withdraw everything.
    if vanished {
        std::fs::metadata(dir)?;
    }
    Ok(files)
}

fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
