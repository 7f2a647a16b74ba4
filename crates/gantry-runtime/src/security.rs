//! What a container's process may do: Docker's default capability set, and a
//! seccomp filter that refuses the system calls Docker's default profile
//! refuses to a container without `CAP_SYS_ADMIN`.

use std::collections::BTreeMap;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Docker's default capabilities.
pub(crate) const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The default set as a hash set.
pub(crate) fn default_caps() -> CapsHashSet {
    DEFAULT_CAPS.into_iter().collect()
}

/// A capability by Docker's name (`NET_ADMIN`, `CAP_NET_ADMIN`, any case).
fn capability(name: &str) -> Result<Capability, String> {
    let short = gantry_units::capability(name)?;
    format!("CAP_{short}")
        .parse::<Capability>()
        .map_err(|_| format!("capability {name:?} is not known to this build"))
}

/// Docker's default set with `add` added and `drop` removed (`ALL` in
/// either means every capability), as Docker applies them: drops first,
/// then adds.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<CapsHashSet, String> {
    let all = |l: &[String]| l.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set = if all(drop) {
        CapsHashSet::new()
    } else {
        default_caps()
    };
    for c in drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        set.remove(&capability(c)?);
    }
    if all(add) {
        set.extend(caps::all());
    }
    for c in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        set.insert(capability(c)?);
    }
    Ok(set)
}

/// The kernel parameters a container may set (see
/// [`gantry_units::namespaced_sysctl`]).
pub fn namespaced_sysctl(key: &str, host_network: bool) -> Result<(), String> {
    gantry_units::namespaced_sysctl(key, host_network)
}

/// The resource of a `ulimits` name (`nofile`, `nproc`, ...).
pub fn ulimit_resource(name: &str) -> Result<nix::sys::resource::Resource, String> {
    use nix::sys::resource::Resource as R;
    Ok(match name {
        "as" => R::RLIMIT_AS,
        "core" => R::RLIMIT_CORE,
        "cpu" => R::RLIMIT_CPU,
        "data" => R::RLIMIT_DATA,
        "fsize" => R::RLIMIT_FSIZE,
        "locks" => R::RLIMIT_LOCKS,
        "memlock" => R::RLIMIT_MEMLOCK,
        "msgqueue" => R::RLIMIT_MSGQUEUE,
        "nice" => R::RLIMIT_NICE,
        "nofile" => R::RLIMIT_NOFILE,
        "nproc" => R::RLIMIT_NPROC,
        "rss" => R::RLIMIT_RSS,
        "rtprio" => R::RLIMIT_RTPRIO,
        "rttime" => R::RLIMIT_RTTIME,
        "sigpending" => R::RLIMIT_SIGPENDING,
        "stack" => R::RLIMIT_STACK,
        _ => {
            return Err(format!(
                "unknown ulimit {name:?}: use nofile, nproc, core, memlock, stack, ..."
            ))
        }
    })
}

/// Checks a container's security settings before it is recorded.
pub fn check(s: &crate::spec::Security, host_network: bool) -> Result<(), String> {
    capabilities(&s.cap_add, &s.cap_drop)?;
    for k in s.sysctls.keys() {
        namespaced_sysctl(k, host_network)?;
    }
    for (k, v) in &s.sysctls {
        if v.chars().any(char::is_control) {
            return Err(format!("sysctl {k}: the value holds a control character"));
        }
    }
    for (name, (soft, hard)) in &s.ulimits {
        ulimit_resource(name)?;
        if soft > hard {
            return Err(format!(
                "ulimit {name}: the soft limit {soft} is above the hard limit {hard}"
            ));
        }
    }
    Ok(())
}

/// Removes every capability outside `keep` from the bounding set, so that
/// neither this process nor anything it executes can regain it.
pub(crate) fn drop_bounding(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to `keep` (for a
/// process that stays root after `setuid`).
pub(crate) fn set_caps(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    caps::set(None, CapSet::Inheritable, keep)?;
    caps::set(None, CapSet::Effective, keep)?;
    caps::set(None, CapSet::Permitted, keep)?;
    Ok(())
}

/// System calls Docker's default profile denies to an unprivileged container.
const DENIED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_get_mempolicy,
    libc::SYS_init_module,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_kcmp,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_lookup_dcookie,
    libc::SYS_mbind,
    libc::SYS_mount,
    libc::SYS_move_pages,
    libc::SYS_name_to_handle_at,
    libc::SYS_nfsservctl,
    libc::SYS_open_by_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_set_mempolicy,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_ustat,
];

/// Builds the default filter: every denied call fails with `EPERM`, all
/// others are allowed.
pub(crate) fn default_seccomp() -> Result<BpfProgram, seccompiler::BackendError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_added_and_dropped_as_docker_does() {
        let s = capabilities(&["net_admin".into()], &["CAP_CHOWN".into()]).unwrap();
        assert!(s.contains(&Capability::CAP_NET_ADMIN));
        assert!(!s.contains(&Capability::CAP_CHOWN));
        assert!(s.contains(&Capability::CAP_KILL));
        let s = capabilities(&["NET_BIND_SERVICE".into()], &["ALL".into()]).unwrap();
        assert_eq!(s.len(), 1);
        assert!(capabilities(&["NOPE".into()], &[]).is_err());
        assert!(ulimit_resource("nofile").is_ok());
        assert!(ulimit_resource("files").is_err());
    }

    #[test]
    fn default_profile_compiles() {
        let prog = default_seccomp().unwrap();
        assert!(prog.len() > DENIED.len());
    }
}
