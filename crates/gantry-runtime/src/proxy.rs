//! Published ports for one host: a userland TCP forwarder per container, as
//! Docker's `docker-proxy`. The monitor binds the host ports itself (so a
//! port already in use fails the start with a clear error), then forks one
//! forwarder process that copies each accepted connection to the
//! container's address. The forwarder dies with its monitor
//! (`PR_SET_PDEATHSIG`) and is killed when the container stops.
//!
//! Kernel DNAT (nftables over netlink) replaces this in the network issue;
//! this keeps `-p` working on one host until then, hairpin included.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use crate::spec::PortMapping;

/// The forwarder of one container.
pub(crate) struct Forwarder {
    pid: Pid,
}

impl Forwarder {
    /// Binds every host port, then forks the forwarding process.
    pub(crate) fn start(ports: &[PortMapping], target: Ipv4Addr) -> Result<Option<Self>, String> {
        if ports.is_empty() {
            return Ok(None);
        }
        let mut listeners = Vec::new();
        for p in ports {
            let at = SocketAddr::new(
                p.host_ip
                    .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                p.host_port,
            );
            let l = TcpListener::bind(at).map_err(|e| {
                format!(
                    "publish port {}: bind {at}: {e} (is the port already allocated?)",
                    p.host_port
                )
            })?;
            listeners.push((l, SocketAddr::from((target, p.container_port))));
        }
        // SAFETY: the monitor is single-threaded; the child only runs the
        // forwarding loop below and never returns.
        match unsafe { fork() }.map_err(|e| format!("fork port forwarder: {e}"))? {
            ForkResult::Child => {
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                // Hold nothing of the monitor's: its pipes must see EOF
                // when their other ends close.
                use std::os::fd::AsRawFd;
                let keep: Vec<i32> = listeners.iter().map(|(l, _)| l.as_raw_fd()).collect();
                close_all_but(&keep);
                serve(listeners);
                // SAFETY: leaving the forked forwarder.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => Ok(Some(Self { pid: child })),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

fn close_all_but(keep: &[i32]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for i in 0..3 {
            // SAFETY: dup2 onto the standard fds, owned by no Rust object.
            unsafe { libc::dup2(null.as_raw_fd(), i) };
        }
    }
}

fn serve(listeners: Vec<(TcpListener, SocketAddr)>) {
    let mut handles = Vec::new();
    for (l, target) in listeners {
        handles.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = forward(conn, target);
                });
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}

fn forward(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let backend = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (mut c2, mut b2) = (client.try_clone()?, backend.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let (mut c, mut b) = (client, backend);
    let _ = io::copy(&mut b, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
