//! `gantry demo [up|down]`: the whole platform on this machine, on
//! simulated hosts (the README's script, built in, run with this binary).

use clap::Args;

/// The demo, as `scripts/demo.sh` has it.
const SCRIPT: &str = include_str!("../../../scripts/demo.sh");

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// `up` brings it up (again, from scratch), `down` removes all of it.
    #[arg(value_parser = ["up", "down"], default_value = "up")]
    action: String,
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

pub(crate) fn demo(a: DemoArgs) -> anyhow::Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the demo makes network namespaces and containers: run it as root");
    }
    if a.action == "up" {
        let mut missing: Vec<&str> = ["docker-registry", "curl", "ip", "nsenter", "bash"]
            .into_iter()
            .filter(|t| !on_path(t))
            .collect();
        if !std::path::Path::new("/bin/busybox").is_file() {
            missing.push("/bin/busybox");
        }
        if !missing.is_empty() {
            anyhow::bail!(
                "the demo needs {}: apt install docker-registry curl iproute2 util-linux busybox-static",
                missing.join(", ")
            );
        }
    }
    let exe = std::env::current_exe()?;
    let script = std::env::temp_dir().join(format!("gantry-demo-{}.sh", std::process::id()));
    std::fs::write(&script, SCRIPT)?;
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&a.action)
        .env("GANTRY_BIN", &exe)
        .env("GANTRY_DEMO_DOWN", format!("{} demo down", exe.display()))
        .status();
    let _ = std::fs::remove_file(&script);
    Ok(status?.code().map_or(1, |c| c.clamp(0, 255) as u8))
}
