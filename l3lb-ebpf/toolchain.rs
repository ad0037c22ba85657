// Reading the eBPF toolchain pin, shared (through `include!`) by `l3lb/build.rs`, which builds
// the object, and `xtask`, which installs the toolchain: neither may depend on the other, and
// both must agree on what rust-toolchain.toml says.

/// The `channel = "…"` value of a rust-toolchain.toml.
fn toolchain_channel(toml: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}
