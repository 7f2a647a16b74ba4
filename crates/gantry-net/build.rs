//! Builds the BPF programs (`bpf/fastpath.c`, the overlay's fast path;
//! `bpf/vip.c`, services' virtual IPs) into bytecode with clang, for
//! `src/fastpath.rs` and `src/vip.rs` to embed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    for name in ["fastpath", "vip"] {
        build(name);
    }
}

fn build(name: &str) {
    let src = format!("bpf/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join(format!("{name}.o"));
    // <asm/types.h>, which <linux/bpf.h> includes, lives under the host's
    // multiarch directory on Debian.
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", &src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to build {src} ({s})"),
        Err(e) => {
            panic!("cannot run clang to build {src}: {e} (scripts/install-deps.sh installs it)")
        }
    }
}
