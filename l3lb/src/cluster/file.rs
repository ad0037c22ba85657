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
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::model::{ClusterChange, DEFAULT_LOAD_BALANCER_CLASS, NodeSpec, ServiceSpec, SliceSpec};
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
/// How often the directory is checked while no watch runs on it.
const UNWATCHED_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: reading: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {document}: {source}")]
    Parse {
        file: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The objects parsed out of one file.
#[derive(Clone, Debug, Default)]
struct Parsed {
    services: Vec<ServiceSpec>,
    slices: Vec<SliceSpec>,
    /// The Services as written, for the allocator (which needs labels and annotations the slim
    /// model drops).
    objects: Vec<Service>,
    pools: Vec<L3lbIPPool>,
    /// This node's `kind: Node` manifest, for maintenance (the exclusion label, a cordon).
    node: Option<NodeSpec>,
}

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
    load_balancer_class: String,
    /// Where the pools' state goes for `l3lb status`.
    pool_reports: Option<watch::Sender<Vec<PoolReport>>>,
    /// The directory could not be listed last time (said once until it can again).
    missing: bool,
    /// The inotify watch could not start last time (said once).
    watch_failed: bool,
}

impl FileSource {
    pub fn new(dir: PathBuf, node: String, poll_interval: Duration) -> Self {
        FileSource {
            dir,
            node,
            poll_interval,
            files: BTreeMap::new(),
            reported: BTreeMap::new(),
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.into(),
            pool_reports: None,
            missing: false,
            watch_failed: false,
        }
    }

    /// Allocates for Services of `class` from the pools in the files, reporting the pools on
    /// `reports`.
    pub fn allocating(mut self, class: String, reports: watch::Sender<Vec<PoolReport>>) -> Self {
        self.load_balancer_class = class;
        self.pool_reports = Some(reports);
        self
    }

    /// Sends the directory's contents as a relist now and after every change, until the receiver
    /// goes away.
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
            if event.is_ok() {
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

    /// Re-reads files whose stamp changed; true when anything differs from before.
    fn rescan(&mut self) -> bool {
        let present = match manifest_files(&self.dir) {
            Ok(present) => {
                self.missing = false;
                present
            }
            Err(err) => {
                // A missing directory reads as the last known state, not as "delete everything".
                if !self.missing {
                    warn!(dir = %self.dir.display(), "cannot list manifests: {err}");
                }
                self.missing = true;
                return false;
            }
        };
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|path, _| present.contains_key(path));
        changed |= self.files.len() != before;
        for (path, stamp) in present {
            if self
                .files
                .get(&path)
                .is_some_and(|(known, _)| *known == stamp)
                || self.reported.get(&path) == Some(&stamp)
            {
                continue;
            }
            match parse_file(&path, &self.node) {
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

fn manifest_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
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
        let Ok(metadata) = std::fs::metadata(&path) else {
            vanished = true;
            continue; // removed between listing and stat
        };
        if metadata.is_file() {
            let stamp = Stamp {
                modified: metadata.modified().ok(),
                len: metadata.len(),
            };
            files.insert(path, stamp);
        }
    }
    // Files vanish one by one when they are deleted, and all at once when the directory itself
    // goes away (moved, unmounted) while it is read: then this is no listing at all, not a
    // directory emptied, which would withdraw everything.
    if vanished {
        std::fs::metadata(dir)?;
    }
    Ok(files)
}

fn parse_file(path: &Path, node: &str) -> Result<Parsed, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_manifests(&text, node).map_err(|(document, source)| ManifestError::Parse {
        file: path.to_owned(),
        document,
        source,
    })
}

/// Parses a multi-document YAML (or JSON) text. Objects of other kinds are ignored; objects
/// without a namespace land in `default`, as `kubectl apply` would put them.
fn parse_manifests(text: &str, node: &str) -> Result<Parsed, (usize, serde_yaml::Error)> {
    let mut parsed = Parsed::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|err| (index + 1, err))?;
        collect(value, node, &mut parsed).map_err(|err| (index + 1, err))?;
    }
    Ok(parsed)
}

fn collect(
    value: serde_yaml::Value,
    node: &str,
    parsed: &mut Parsed,
) -> Result<(), serde_yaml::Error> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    match kind {
        "Service" => {
            let mut service: Service = serde_yaml::from_value(value)?;
            service
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            parsed.services.extend(ServiceSpec::from_service(&service));
            parsed.objects.push(service);
        }
        "L3lbIPPool" => parsed.pools.push(serde_yaml::from_value(value)?),
        "Node" => {
            let spec = NodeSpec::from_node(&serde_yaml::from_value(value)?);
            if let Some(spec) = spec.filter(|spec| spec.name == node) {
                parsed.node = Some(spec);
            }
        }
        "EndpointSlice" => {
            let mut slice: EndpointSlice = serde_yaml::from_value(value)?;
            slice
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            parsed
                .slices
                .extend(SliceSpec::from_endpoint_slice(&slice, node));
        }
        "List" | "ServiceList" | "EndpointSliceList" | "NodeList" => {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    collect(item, node, parsed)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    l3lb.io/loadBalancerIPs: "10.0.100.7, 2001:db8:100::7"
spec:
  type: LoadBalancer
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.5]
    nodeName: node-a
    conditions: {ready: true}
  - addresses: [10.244.2.5]
    nodeName: node-b
    conditions: {ready: false, serving: true, terminating: true}
ports: [{port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;

    #[test]
    fn parses_services_and_slices_for_this_node() {
        let parsed = parse_manifests(MANIFESTS, "node-b").expect("valid manifests");
        assert_eq!(parsed.services.len(), 1);
        let service = &parsed.services[0];
        assert_eq!(service.key.to_string(), "default/web");
        assert_eq!(service.annotation_ips, ["10.0.100.7", "2001:db8:100::7"]);
        assert!(service.is_load_balancer);

        assert_eq!(parsed.slices.len(), 1);
        let slice = &parsed.slices[0];
        assert_eq!(slice.service.as_ref().unwrap().to_string(), "default/web");
        assert!(slice.any_ready, "node-a's endpoint is ready");
        assert_eq!(slice.local.len(), 1, "only node-b's endpoint is kept");
        assert!(!slice.local[0].ready && slice.local[0].serving && slice.local[0].terminating);
        assert_eq!(slice.ports[0].port, 8080);
    }

    #[test]
    fn reads_this_nodes_own_node_manifest() {
        let text = "kind: Node\nmetadata:\n  name: node-a\n  labels:\n    \
                    node.kubernetes.io/exclude-from-external-load-balancers: \"\"\n";
        let here = parse_manifests(text, "node-a").expect("a Node");
        assert!(
            here.node
                .is_some_and(|node| node.excluded && !node.cordoned)
        );
        let elsewhere = parse_manifests(text, "node-b").expect("a Node");
        assert!(
            elsewhere.node.is_none(),
            "another node's object is not ours"
        );
    }

    #[test]
    fn a_broken_document_is_an_error_naming_it() {
        let (document, _) = parse_manifests(
            "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nspec: [",
            "n",
        )
        .expect_err("second document is broken");
        assert_eq!(document, 2);
    }

    #[test]
    fn broken_file_keeps_its_last_good_contents() {
        let dir = std::env::temp_dir().join(format!("l3lb-file-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yaml");
        std::fs::write(&file, MANIFESTS).unwrap();
        let mut source = FileSource::new(dir.clone(), "node-a".into(), DEFAULT_POLL_INTERVAL);
        assert!(source.rescan());
        assert_eq!(source.snapshot().0.len(), 1);

        std::fs::write(&file, "kind: Service\nspec: [\n").unwrap();
        source.rescan();
        assert_eq!(
            source.snapshot().0.len(),
            1,
            "the typo does not withdraw the service"
        );

        std::fs::remove_file(&file).unwrap();
        assert!(source.rescan());
        assert_eq!(
            source.snapshot().0.len(),
            0,
            "a deleted file removes its objects"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const POOLED: &str = r#"
apiVersion: l3lb.io/v1alpha1
kind: L3lbIPPool
metadata: {name: small}
spec:
  blocks: [10.0.100.32/31]
---
apiVersion: v1
kind: Service
metadata: {name: zeta}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: alpha}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: pinned
  annotations: {l3lb.io/loadBalancerIPs: 10.0.100.32}
spec: {type: LoadBalancer, ports: [{port: 80}]}
"#;

    #[test]
    fn pools_in_the_files_give_every_node_the_same_addresses() {
        let dir = tempfile_dir("pools");
        std::fs::write(dir.join("all.yaml"), POOLED).unwrap();
        let allocated_on = |node: &str| {
            let (reports_tx, reports_rx) = watch::channel(Vec::new());
            let mut source = FileSource::new(dir.clone(), node.into(), DEFAULT_POLL_INTERVAL)
                .allocating(DEFAULT_LOAD_BALANCER_CLASS.into(), reports_tx);
            source.rescan();
            let services: BTreeMap<String, Vec<String>> = source
                .snapshot()
                .0
                .into_iter()
                .map(|s| (s.key.name.clone(), s.allocated_ips))
                .collect();
            (services, reports_rx.borrow().clone())
        };
        let (on_a, reports) = allocated_on("node-a");
        let (on_b, _) = allocated_on("node-b");
        assert_eq!(on_a, on_b, "every node computes the same");
        // The pinned IP is reserved, so alpha (first by name) gets the other one and zeta none.
        assert_eq!(on_a["alpha"], ["10.0.100.33"]);
        assert!(on_a["zeta"].is_empty(), "the pool is exhausted");
        assert!(
            on_a["pinned"].is_empty(),
            "a hand-picked IP is not written as an allocation"
        );
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].usage, "IPv4 2 used, 0 free of 2");
        assert_eq!(reports[0].allocations, ["default/alpha 10.0.100.33"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The Services of the next relist the source sends, waiting at most `within`.
    async fn next_services(
        changes: &mut mpsc::Receiver<ClusterChange>,
        within: Duration,
    ) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Some(ClusterChange::ServicesListed(services))) => return Some(services.len()),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn changes_arrive_through_inotify_also_after_the_directory_was_away() {
        let dir = tempfile_dir("inotify");
        // An hour between polls: whatever arrives sooner came through the watch.
        let source = FileSource::new(dir.clone(), "node-a".into(), Duration::from_secs(3600));
        let (tx, mut changes) = mpsc::channel(16);
        let task = tokio::spawn(source.run(tx));
        let quick = Duration::from_secs(2);
        assert_eq!(
            next_services(&mut changes, quick).await,
            Some(0),
            "first relist"
        );

        std::fs::write(dir.join("web.yaml"), MANIFESTS).unwrap();
        assert_eq!(
            next_services(&mut changes, quick).await,
            Some(1),
            "a new file"
        );

        // An outage: the directory goes away and comes back. Nothing changes meanwhile (the
        // last known state stands), and the watch starts again on the directory that returned.
        let away = dir.with_extension("away");
        std::fs::rename(&dir, &away).unwrap();
        assert_eq!(
            next_services(&mut changes, Duration::from_millis(500)).await,
            None,
            "a missing directory changes nothing"
        );
        // Changed as soon as it is back: without a watch the source polls every 100 ms, and
        // with the new one it hears of it.
        std::fs::rename(&away, &dir).unwrap();
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert_eq!(
            next_services(&mut changes, quick).await,
            Some(0),
            "a change after the outage"
        );
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn no_relist_until_the_directory_can_be_read() {
        let dir = tempfile_dir("late");
        std::fs::remove_dir(&dir).unwrap();
        let source = FileSource::new(dir.clone(), "node-a".into(), Duration::from_secs(3600));
        let (tx, mut changes) = mpsc::channel(16);
        let task = tokio::spawn(source.run(tx));
        assert_eq!(
            next_services(&mut changes, Duration::from_millis(500)).await,
            None,
            "a missing directory is no empty cluster: it would withdraw what an earlier run left"
        );
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), MANIFESTS).unwrap();
        assert_eq!(
            next_services(&mut changes, Duration::from_secs(2)).await,
            Some(1)
        );
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dangling_manifest_is_skipped_while_the_directory_stays() {
        let dir = tempfile_dir("dangling");
        std::fs::write(dir.join("web.yaml"), MANIFESTS).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("gone.yaml")).unwrap();
        let files = manifest_files(&dir).expect("the directory is there");
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("l3lb-file-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
