//! Fixtures shared by the integration tests: privilege checks that refuse to skip under
//! `cargo xtask test`, network namespaces that always clean up, hand-built frames, typed
//! Kubernetes objects (`fixtures`), and the BGP lab (`lab`).
pub mod bench;
pub mod daemon;
pub mod fake_api;
pub mod fastpath;
pub mod fixtures;
pub mod frames;
pub mod frr_fabric;
pub mod fuzz;
pub mod interrupt;
pub mod lab;
pub mod netns;
pub mod programs;
pub mod soak;
pub mod traffic;

/// True when this test may touch the kernel (root). Without root it returns false after saying
/// why, unless `L3LB_REQUIRE_PRIVILEGED` is set (as `cargo xtask test` and CI do): then a test
/// that cannot run fails loudly instead of showing green having tested nothing.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("L3LB_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test} needs root, and L3LB_REQUIRE_PRIVILEGED says it must run");
    }
    eprintln!("skipping {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let give_up = std::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
