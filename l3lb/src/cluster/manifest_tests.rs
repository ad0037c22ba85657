//! Hostile manifests: each must fail as a clear error about its file, quickly and within the
//! memory bounds, and ordinary ones must not trip the limits.
use std::{os::unix::fs::symlink, time::Instant};

use super::*;

fn parse(text: &str) -> Result<Parsed, (usize, serde_yaml::Error)> {
    parse_manifests(text, "node-a", Path::new("t.yaml"))
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("parsed, but should have failed"),
        Err((document, err)) => format!("document {document}: {err}"),
    }
}

fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("l3lb-manifest-{tag}-"))
        .tempdir()
        .unwrap()
}

fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations:\n    \
         l3lb.io/loadBalancerIPs: \"{ip}\"\nspec:\n  type: LoadBalancer\n  ports:\n  \
         - {{port: 80, targetPort: 8080, protocol: TCP}}\n"
    )
}

#[test]
fn the_classic_alias_bomb_fails_fast() {
    // Nine levels of ten: 10^9 leaves if expanded.
    let mut bomb =
        String::from("kind: Service\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    let started = Instant::now();
    let err = error_of(&bomb);
    assert!(err.contains("document 1"), "{err}");
    assert!(
        err.contains("repetition limit") || err.contains("YAML nodes"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
}

/// One anchored sequence aliased many times: few events, so serde_yaml's own limit (100
/// expansions per event) lets it through, and only the node budget stops it.
fn wide_bomb(items: usize, aliases: usize) -> String {
    let anchored = vec!["x"; items].join(", ");
    let refs = vec!["*a"; aliases].join(", ");
    format!("kind: Service\nitems: &a [{anchored}]\nbomb: [{refs}]\n")
}

#[test]
fn a_wide_alias_bomb_stops_at_the_node_budget() {
    // Just over the budget, small enough to build without the budget: serde_yaml alone
    // accepts it, which is why the budget exists.
    let small = wide_bomb(250, 1000);
    let unbounded: Value = serde_yaml::from_str(&small).expect("serde_yaml alone accepts it");
    assert_eq!(unbounded["bomb"].as_sequence().map(Vec::len), Some(1000));
    drop(unbounded);
    let err = error_of(&small);
    assert!(err.contains("more than 200000 YAML nodes"), "{err}");

    // 400 KB that would expand to 10^8 nodes (gigabytes): refused as quickly.
    let huge = wide_bomb(1000, 100_000);
    assert!(huge.len() < 500_000);
    let started = Instant::now();
    let err = error_of(&huge);
    assert!(err.contains("YAML nodes"), "{err}");
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_string_alias_bomb_stops_at_the_text_budget() {
    let megabyte = "x".repeat(512 << 10);
    let refs = vec!["*s"; 20].join(", ");
    let bomb = format!("kind: Service\ns: &s {megabyte}\nbomb: [{refs}]\n");
    let err = error_of(&bomb);
    assert!(err.contains("bytes of YAML text"), "{err}");
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    // Parsing this would take minutes (libyaml's time grows with depth times size).
    let dir = scratch("deep");
    let file = dir.path().join("deep.yaml");
    for deep in [
        format!(
            "kind: Service\nx: {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        format!("kind: Service\nx: {}", "{a: ".repeat(100_000)),
    ] {
        std::fs::write(&file, deep).unwrap();
        let started = Instant::now();
        let err = parse_file(&file, "n").unwrap_err().to_string();
        assert!(
            err.contains("deep.yaml") && err.contains("nested 100000 deep"),
            "{err}"
        );
        assert!(
            started.elapsed().as_secs() < 1,
            "took {:?}",
            started.elapsed()
        );
    }
    // Deep block nesting is cheap to parse, and refused by serde_yaml's recursion limit.
    let block = format!("kind: Service\nx:\n{}", "- ".repeat(100_000));
    assert!(error_of(&block).contains("recursion limit"));
}

#[test]
fn ordinary_manifests_parse_as_before() {
    // Thousands of objects in one (1 MiB) file stay far below the budgets.
    let many: Vec<String> = (0..4000)
        .map(|i| {
            service_yaml(
                &format!("svc-{i}"),
                &format!("10.0.{}.{}", i / 250, i % 250),
            )
        })
        .collect();
    let text = many.join("---\n");
    let parsed = parse(&text).expect("4000 Services parse");
    assert_eq!(parsed.services.len(), 4000);
    assert_eq!(parsed.services[3999].annotation_ips, ["10.0.15.249"]);

    // The bounded Value is the Value serde_yaml builds: tags, numbers, nulls, anchors.
    let odd = "a: &x {b: [1, -2, 3.5, ~, true, !tag v, 'q']}\nc: *x\nd: 18446744073709551615\n";
    let ours = Bounded(&Budget::default())
        .deserialize(serde_yaml::Deserializer::from_str(odd))
        .unwrap();
    assert_eq!(ours, serde_yaml::from_str::<Value>(odd).unwrap());
    // Lists are unpacked, as `kubectl get -o yaml` writes them.
    let list = format!(
        "kind: List\nitems:\n- {}",
        service_yaml("listed", "10.0.100.7").replace('\n', "\n  ")
    );
    assert_eq!(&*parse(&list).unwrap().services[0].key.name, "listed");
    let dup = error_of("kind: Service\nkind: Service\n");
    assert!(dup.contains("duplicate entry"), "{dup}");
}

#[test]
fn a_service_asking_for_thousands_of_ips_keeps_the_first_ones() {
    let ips: Vec<String> = (0..5000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let text = service_yaml("greedy", &ips.join(","));
    let parsed = parse(&text).unwrap();
    let spec = &parsed.services[0];
    assert_eq!(
        spec.annotation_ips.len(),
        crate::cluster::limits::MAX_IPS_PER_SERVICE
    );
    assert_eq!(spec.annotation_ips[0], "10.0.0.0");
    assert!(spec.ips_over_limit);

    // A half-megabyte annotation keeps one clipped item, not half a megabyte.
    let text = service_yaml("huge", &"9".repeat(512 << 10));
    let spec = &parse(&text).unwrap().services[0];
    assert!(spec.annotation_ips[0].len() < 100);
    assert!(!spec.ips_over_limit);
}

#[test]
fn unreadable_files_fail_with_their_name() {
    let dir = scratch("read");
    let path = |name: &str| dir.path().join(name);

    std::fs::write(
        path("latin1.yaml"),
        b"kind: Service\nmetadata: {name: caf\xe9}\n",
    )
    .unwrap();
    let err = parse_file(&path("latin1.yaml"), "n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.yaml") && err.contains("not UTF-8"),
        "{err}"
    );
    assert!(err.contains("offset 34"), "{err}");

    let whole = service_yaml("web", "10.0.100.7");
    std::fs::write(path("cut.yaml"), &whole[..whole.len() - 30]).unwrap();
    let err = parse_file(&path("cut.yaml"), "n").unwrap_err().to_string();
    assert!(
        err.contains("cut.yaml") && err.contains("document 1"),
        "{err}"
    );

    let big = std::fs::File::create(path("big.yaml")).unwrap();
    big.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
    let err = parse_file(&path("big.yaml"), "n").unwrap_err().to_string();
    assert!(
        err.contains("big.yaml") && err.contains("over the limit"),
        "{err}"
    );

    // A FIFO would block a plain open until a writer comes: it must not.
    let fifo = path("fifo.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let err = parse_file(&fifo, "n").unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");

    // A regular file whose read fails even for root: /proc/self/mem at offset 0 (unmapped).
    symlink("/proc/self/mem", path("mem.yaml")).unwrap();
    let err = parse_file(&path("mem.yaml"), "n").unwrap_err().to_string();
    assert!(err.contains("mem.yaml") && err.contains("reading"), "{err}");
}
