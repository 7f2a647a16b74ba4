//! Which device nodes a container may use: Docker's default rules, written
//! to the v1 `devices` controller or compiled into a cgroup v2 device
//! program (v2 has no devices controller: the kernel asks a BPF program of
//! type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup instead).
//!
//! Everything is denied but the rules in [`DEFAULT_ALLOWED`]: creating any
//! device node (`mknod` is harmless once using it is refused) and using the
//! pseudo-devices every program expects (`null`, `zero`, `full`, `random`,
//! `urandom`, `tty`, `console`, `ptmx`, the pty slaves). A task that makes
//! `/dev/x` as block 7:0 (a host loop device) can create it, not open it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The kind of device a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
    /// Both (`a`).
    All,
}

/// What a rule allows: reading, writing, creating (`mknod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
    /// Create a node.
    pub mknod: bool,
}

/// One allowed device range (`c 1:3 rwm`); `None` is any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Char, block or both.
    pub kind: DeviceKind,
    /// Major number, or any.
    pub major: Option<u32>,
    /// Minor number, or any.
    pub minor: Option<u32>,
    /// What it allows.
    pub access: Access,
}

const RWM: Access = Access {
    read: true,
    write: true,
    mknod: true,
};
const M: Access = Access {
    read: false,
    write: false,
    mknod: true,
};

const fn char_dev(major: u32, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        kind: DeviceKind::Char,
        major: Some(major),
        minor,
        access: RWM,
    }
}

/// Docker's (runc's) default device rules for an unprivileged container.
pub const DEFAULT_ALLOWED: &[DeviceRule] = &[
    DeviceRule {
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: M,
    },
    DeviceRule {
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: M,
    },
    char_dev(1, Some(3)), // null
    char_dev(1, Some(5)), // zero
    char_dev(1, Some(7)), // full
    char_dev(1, Some(8)), // random
    char_dev(1, Some(9)), // urandom
    char_dev(5, Some(0)), // tty
    char_dev(5, Some(1)), // console
    char_dev(5, Some(2)), // ptmx
    char_dev(136, None),  // pty slaves (/dev/pts/N)
];

impl DeviceRule {
    /// The rule as the v1 controller's `devices.allow` takes it (`c 1:3 rwm`).
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
            DeviceKind::All => 'a',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        let mut access = String::new();
        for (on, c) in [
            (self.access.read, 'r'),
            (self.access.write, 'w'),
            (self.access.mknod, 'm'),
        ] {
            if on {
                access.push(c);
            }
        }
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }

    /// The `BPF_DEVCG_ACC_*` bits it allows.
    fn access_bits(&self) -> i32 {
        [
            (self.access.mknod, ACC_MKNOD),
            (self.access.read, ACC_READ),
            (self.access.write, ACC_WRITE),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit)
    }
}

// From <linux/bpf.h>.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used below.
const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;

/// The device program for `rules`: it returns 1 (allow) for the first rule
/// that covers the access and 0 (deny) when none does.
///
/// The context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
/// u32 minor; }`, where `access_type` is the access bits shifted left 16
/// over the device type. Registers: r2 type, r3 access, r4 major, r5 minor.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each check jumps past the rest of the block when it fails; the
        // offsets are patched once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        match rule.kind {
            DeviceKind::Char | DeviceKind::Block => {
                let t = if rule.kind == DeviceKind::Char {
                    DEV_CHAR
                } else {
                    DEV_BLOCK
                };
                jumps.push(block.len());
                block.push(insn(JNE_K, 2, 0, 0, t));
            }
            DeviceKind::All => {}
        }
        let bits = rule.access_bits();
        if bits != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The access asked for must be a subset of the rule's.
            block.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU64_AND_K, 1, 0, 0, bits));
            jumps.push(block.len());
            block.push(insn(JNE_X, 1, 3, 0, 0));
        }
        for (reg, n) in [(4, rule.major), (5, rule.minor)] {
            if let Some(n) = n {
                jumps.push(block.len());
                // Device numbers fit in 32 bits; the kernel's are 12 + 20.
                block.push(insn(JNE_K, reg, 0, 0, n as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Loads the device program for `rules` and attaches it to the cgroup v2
/// directory `dir`. The attachment lasts as long as the cgroup, whatever
/// happens to this process (the program's fd is closed on return).
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| {
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            ..Default::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix whose pointers (insns,
        // license, log) outlive the call; the size passed is its own.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>(),
            )
        }
    };
    let fd = load(&mut []);
    if fd < 0 {
        let e = io::Error::last_os_error();
        // Again with the verifier's log, for the message.
        let mut log = vec![0u8; 1 << 20];
        load(&mut log);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        return Err(io::Error::new(
            e.kind(),
            format!(
                "load device program: {e}: {}",
                String::from_utf8_lossy(&log[..end])
            ),
        ));
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new fd that we own.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cgroup = std::fs::File::open(dir)?;
    let att = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // As runc: programs of parents (systemd's) still run too.
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: `att` is a valid bpf_attr prefix for BPF_PROG_ATTACH; both fds
    // are open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &att as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("attach device program: {e}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_dockers() {
        let lines: Vec<String> = DEFAULT_ALLOWED.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(
            lines,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm"
            ]
        );
    }

    /// Runs `prog` the way the kernel would on one access: a tiny
    /// interpreter for the instructions `program` emits.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU64_AND_K => r[dst] &= i.imm as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i.imm as u64,
                JNE_K if r[dst] != i.imm as u64 => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn program_allows_exactly_the_default_rules() {
        let p = program(DEFAULT_ALLOWED);
        let rw = ACC_READ | ACC_WRITE;
        // Pseudo-devices: read, write, create.
        for (maj, min) in [(1, 3), (1, 5), (1, 9), (5, 0), (5, 2), (136, 7)] {
            assert_eq!(run(&p, DEV_CHAR, rw, maj, min), 1, "c {maj}:{min}");
            assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, maj, min), 1);
        }
        // A host loop device, kvm, a console tty, hwrng: created, never used.
        for (kind, maj, min) in [(DEV_BLOCK, 7, 0), (DEV_CHAR, 10, 232), (DEV_CHAR, 4, 1)] {
            assert_eq!(run(&p, kind, ACC_MKNOD, maj, min), 1);
            assert_eq!(run(&p, kind, ACC_READ, maj, min), 0, "{maj}:{min}");
            assert_eq!(run(&p, kind, ACC_WRITE, maj, min), 0);
            assert_eq!(run(&p, kind, ACC_MKNOD | ACC_READ, maj, min), 0);
        }
        // Block devices by the pseudo-devices' numbers are not them.
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 1, 3), 0);
        // Nothing allowed: everything denied.
        assert_eq!(run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    }
}
