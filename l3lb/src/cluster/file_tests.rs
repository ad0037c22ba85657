//! The file source's scans: changes, broken files and the allocation every node agrees on.
use super::{super::manifest::parse_manifests, *};

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
    let parsed =
        parse_manifests(MANIFESTS, "node-b", Path::new("t.yaml")).expect("valid manifests");
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
fn a_broken_document_is_an_error_naming_it() {
    let (document, _) = parse_manifests(
        "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nspec: [",
        "n",
        Path::new("t.yaml"),
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
            .map(|s| (s.key.name.to_string(), s.allocated_ips))
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
async fn reading_the_manifests_does_not_wake_the_source() {
    let dir = tempfile_dir("quiet");
    std::fs::write(dir.join("web.yaml"), MANIFESTS).unwrap();
    let source = FileSource::new(dir.clone(), "node-a".into(), Duration::from_secs(3600));
    let scans = source.scan_counter();
    let (tx, mut changes) = mpsc::channel(16);
    let task = tokio::spawn(source.run(tx));
    assert_eq!(
        next_services(&mut changes, Duration::from_secs(2)).await,
        Some(1),
        "first relist"
    );
    // Someone (an operator's `cat`, a backup, the source itself) reads the files: accesses,
    // no change. Each read used to wake a rescan, whose own reads woke the next, forever.
    let before = scans.load(Ordering::Relaxed);
    for _ in 0..5 {
        std::fs::read(dir.join("web.yaml")).unwrap();
        std::fs::read_dir(&dir).unwrap().for_each(drop);
    }
    // A window to watch, not a wait for something: nothing may happen in it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rescans = scans.load(Ordering::Relaxed) - before;
    assert!(rescans <= 1, "{rescans} rescans in 500 ms of reads alone");
    task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_this_nodes_own_node_manifest() {
    let text = "kind: Node\nmetadata:\n  name: node-a\n  labels:\n    \
                node.kubernetes.io/exclude-from-external-load-balancers: \"\"\n";
    let here = parse_manifests(text, "node-a", Path::new("t.yaml")).expect("a Node");
    assert!(
        here.node
            .is_some_and(|node| node.excluded && !node.cordoned)
    );
    let elsewhere = parse_manifests(text, "node-b", Path::new("t.yaml")).expect("a Node");
    assert!(
        elsewhere.node.is_none(),
        "another node's object is not ours"
    );
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
    let readable = files
        .values()
        .filter(|entry| matches!(entry, Listed::File(_)))
        .count();
    assert_eq!(readable, 1, "{files:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("l3lb-file-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Symlink loops, a directory and a FIFO named like manifests, a dangling symlink, a file that
/// cannot be read, a non-UTF-8 one: each is named once and the good file keeps being served.
#[test]
fn a_hostile_directory_leaves_the_good_file_alone() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::Builder::new()
        .prefix("l3lb-file-hostile-")
        .tempdir()
        .unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("web.yaml"), MANIFESTS).unwrap();
    std::fs::write(path("flaky.yaml"), POOLED.replace("L3lbIPPool", "Other")).unwrap();
    let mut source = FileSource::new(dir.path().into(), "node-a".into(), DEFAULT_POLL_INTERVAL);
    assert!(source.rescan());
    assert_eq!(source.snapshot().0.len(), 4, "web and flaky's three");

    symlink("self.yaml", path("self.yaml")).unwrap();
    symlink("ping.yaml", path("pong.yaml")).unwrap();
    symlink("pong.yaml", path("ping.yaml")).unwrap();
    symlink(".", path("cycle.yaml")).unwrap();
    symlink("gone", path("dangling.yaml")).unwrap();
    std::fs::create_dir(path("dir.yaml")).unwrap();
    let fifo = std::ffi::CString::new(path("fifo.yaml").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(path("binary.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    // flaky.yaml turns into a loop: it keeps its last good contents, like a file that stops
    // parsing, rather than withdrawing its Services.
    std::fs::remove_file(path("flaky.yaml")).unwrap();
    symlink("flaky.yaml", path("flaky.yaml")).unwrap();

    source.rescan();
    let (services, slices) = source.snapshot();
    assert_eq!(services.len(), 4, "nothing withdrawn: {services:?}");
    assert_eq!(slices.len(), 1);
    let unusable: BTreeMap<&str, &str> = source
        .unusable
        .iter()
        .map(|(p, why)| (p.file_name().unwrap().to_str().unwrap(), why.as_str()))
        .collect();
    for looped in ["self.yaml", "ping.yaml", "pong.yaml", "flaky.yaml"] {
        assert!(
            unusable[looped].contains("symbolic links"),
            "{looped}: {unusable:?}"
        );
    }
    assert_eq!(unusable["cycle.yaml"], "a directory");
    assert_eq!(unusable["dir.yaml"], "a directory");
    assert_eq!(unusable["fifo.yaml"], "a FIFO");
    assert_eq!(unusable["dangling.yaml"], "a symlink to nothing");
    assert!(
        source.reported.keys().any(|p| p.ends_with("binary.yaml")),
        "the non-UTF-8 file failed and was reported"
    );
    assert!(
        !source.rescan(),
        "nothing changed: no second round of reading"
    );

    // Once the loop is gone the file's state is what is on disk: deleted means withdrawn.
    std::fs::remove_file(path("flaky.yaml")).unwrap();
    assert!(source.rescan());
    assert_eq!(source.snapshot().0.len(), 1);
    assert!(!source.unusable.keys().any(|p| p.ends_with("flaky.yaml")));
}

/// Thousands of files: each read once, then only looked at.
#[test]
fn thousands_of_files() {
    let dir = tempfile::Builder::new()
        .prefix("l3lb-file-many-")
        .tempdir()
        .unwrap();
    for i in 0..3000 {
        let text = MANIFESTS.replace("name: web", &format!("name: web-{i}"));
        std::fs::write(dir.path().join(format!("web-{i}.yaml")), text).unwrap();
    }
    let mut source = FileSource::new(dir.path().into(), "node-a".into(), DEFAULT_POLL_INTERVAL);
    assert!(source.rescan());
    assert_eq!(source.snapshot().0.len(), 3000);
    let started = std::time::Instant::now();
    assert!(!source.rescan());
    eprintln!("an idle scan of 3000 files: {:?}", started.elapsed());
    // A scan that reads nothing only stats: far below a second even in a debug build on a
    // busy machine (about 10 ms here).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an idle scan of 3000 files took {:?}",
        started.elapsed()
    );
}

/// A directory that cannot be listed is the last known state, warned about once.
#[test]
fn a_missing_directory_changes_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("l3lb-file-missing-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("web.yaml"), MANIFESTS).unwrap();
    let mut source = FileSource::new(dir.path().into(), "node-a".into(), DEFAULT_POLL_INTERVAL);
    assert!(source.rescan());
    let path = dir.path().to_owned();
    drop(dir);
    assert!(!source.rescan());
    assert!(
        source.missing,
        "the listing error is remembered, so it is said once"
    );
    assert!(!source.rescan());
    assert_eq!(source.snapshot().0.len(), 1, "nothing withdrawn");
    std::fs::create_dir(&path).unwrap();
    assert!(source.rescan(), "an empty directory is the new state");
    assert!(!source.missing);
    assert_eq!(source.snapshot().0.len(), 0);
    std::fs::remove_dir(&path).unwrap();
}

#[test]
fn a_stalled_parse_is_named_once() {
    let start = Instant::now();
    let parsing = Some((PathBuf::from("/m/slow.yaml"), start));
    let mut warned = None;
    assert_eq!(
        stalled(parsing.clone(), &mut warned, start + SLOW_PARSE / 2),
        None
    );
    let late = start + SLOW_PARSE * 2;
    assert_eq!(
        stalled(parsing.clone(), &mut warned, late),
        Some((PathBuf::from("/m/slow.yaml"), start))
    );
    assert_eq!(stalled(parsing, &mut warned, late), None, "once");
    assert_eq!(stalled(None, &mut warned, late), None, "nothing parsing");
    let next = Some((PathBuf::from("/m/slow.yaml"), start + SLOW_PARSE));
    assert!(
        stalled(next, &mut warned, late + SLOW_PARSE).is_some(),
        "a new parse of the same file is a new stall"
    );
}
