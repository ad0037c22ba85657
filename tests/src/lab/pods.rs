//! Pods: a namespace behind its node (a veth, a /30 and a /64) running `lab-pod`, which answers
//! HTTP on port 80 with its own name.
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::AtomicBool,
    time::Duration,
};

use super::{
    LabError, SERVICE_PORT,
    process::{poll, spawn_logged},
    topology::{self, PodAddresses, node_name},
};
use crate::netns::NetNs;

pub(super) struct Pod {
    pub node: usize,
    pub ns: NetNs,
    pub addresses: PodAddresses,
    pub server: Child,
    /// Appears once the server listens.
    ready: PathBuf,
}

/// The lab's pods by name.
pub(super) struct Pods {
    lab: String,
    /// Logs and readiness files.
    dir: PathBuf,
    server: PathBuf,
    cancel: Option<&'static AtomicBool>,
    by_name: BTreeMap<String, Pod>,
    /// Pods created per node so far (their index picks their subnets).
    per_node: BTreeMap<usize, u8>,
}

impl Pods {
    /// Pods of lab `lab`, keeping their files in `dir` and running `server`.
    pub fn new(
        lab: &str,
        dir: PathBuf,
        server: PathBuf,
        cancel: Option<&'static AtomicBool>,
    ) -> Pods {
        Pods {
            lab: lab.to_owned(),
            dir,
            server,
            cancel,
            by_name: BTreeMap::new(),
            per_node: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Pod> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pod> {
        self.by_name.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Pod> {
        self.by_name.values_mut()
    }

    /// Starts pod `name` on node `node` (namespace `node_ns`) unless it exists; returns whether
    /// it is new. Then [`Pods::wait_ready`].
    pub fn start(&mut self, name: &str, node: usize, node_ns: &NetNs) -> bool {
        if let Some(pod) = self.by_name.get(name) {
            assert_eq!(
                pod.node,
                node,
                "pod {name} runs on {}, not {}",
                node_name(pod.node),
                node_name(node)
            );
            return false;
        }
        assert!(
            !name.is_empty()
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "pod names are short DNS labels, not {name:?}"
        );
        let count = self.per_node.entry(node).or_default();
        let k = *count;
        let addresses = PodAddresses::of(node, k);
        *count += 1;

        let ns = NetNs::named(&format!("{}-pod-{name}", self.lab));
        topology::wire_pod(node_ns, &ns, k, addresses);

        fs::create_dir_all(&self.dir).expect("creating the pods directory");
        let ready = self.dir.join(format!("{name}.ready"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("opening the pod log");
        let mut command = ns.command(&self.server.to_string_lossy());
        command
            .args(["--name", name, "--node", &node_name(node)])
            .arg("--port")
            .arg(SERVICE_PORT.to_string())
            .arg("--ready")
            .arg(&ready);
        let server = spawn_logged(&mut command, &log);
        self.by_name.insert(
            name.to_owned(),
            Pod {
                node,
                ns,
                addresses,
                server,
                ready,
            },
        );
        true
    }

    /// Waits until pod `name`'s server listens.
    pub fn wait_ready(&mut self, name: &str) -> Result<(), LabError> {
        let pod = self.by_name.get_mut(name).expect("a started pod");
        let result = poll(self.cancel, Duration::from_secs(10), || {
            if let Ok(Some(status)) = pod.server.try_wait() {
                return Some(Err(LabError::Failed(format!(
                    "pod {name}'s server exited ({status})"
                ))));
            }
            Path::new(&pod.ready).exists().then_some(Ok(()))
        });
        match result {
            Ok(inner) => inner,
            Err(LabError::Timeout(_)) => Err(LabError::Timeout(format!(
                "pod {name}'s server did not start listening within 10 s"
            ))),
            Err(other) => Err(other),
        }
    }
}
