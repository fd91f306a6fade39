//! The seccomp deny-list every sandboxed kernel runs under.
//!
//! A deny-list, not an allow-list: Python and its native libraries use a wide and changing set
//! of system calls, while the dangerous ones are few and stable. Denied:
//!
//! * kernel objects that namespaces do not confine: `keyctl`, `add_key`, `request_key`,
//!   `AF_VSOCK` sockets (they reach the hypervisor), `AF_PACKET` sockets, io_uring (it also
//!   hides later calls from seccomp);
//! * tracing and memory of other processes: `ptrace`, `process_vm_readv/writev`;
//! * kernel attack surface: `bpf`, `perf_event_open`, `userfaultfd`, module loading, `kexec`;
//! * mounts and namespaces: the mount family, `pivot_root`, `setns`, `unshare`, `clone` with
//!   `CLONE_NEWUSER` (and `clone3`, answered `ENOSYS` so that glibc falls back to `clone`,
//!   whose flags a filter can see);
//! * the rest of the usual list: swap, reboot, `acct`, quotas, `syslog`, handle-based opens,
//!   `TIOCSTI`/`TIOCLINUX` terminal injection.
//!
//! `AF_NETLINK` stays allowed: libzmq aborts at start without it, and the network namespace
//! already confines it. Calls from another architecture (32-bit `int 0x80`) kill the process.
//!
//! At the Landlock level, which shares the host's IPC namespace, the creation of SysV IPC
//! objects and POSIX message queues is refused as well ([`no_host_ipc_objects`]): they would
//! outlive the box.
//!
//! Where nothing else keeps the kernel off the host network (the Landlock level, which has no
//! network namespace, for a box without network), `AF_INET` and `AF_INET6` sockets are refused
//! too ([`NO_NETWORK_SOCKET_FAMILIES`]): Landlock's own network rules cover TCP only, and UDP
//! to the host's loopback services would get through.

use std::io::Write;
use std::os::fd::OwnedFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use crate::error::SandboxError;

/// System calls answered with `EPERM`, whatever their arguments.
pub(crate) const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("vhangup", libc::SYS_vhangup),
];

/// Socket families refused with `EAFNOSUPPORT`.
pub(crate) const DENIED_SOCKET_FAMILIES: &[(&str, i32)] =
    &[("AF_VSOCK", libc::AF_VSOCK), ("AF_PACKET", libc::AF_PACKET)];

/// Socket families also refused with `EAFNOSUPPORT` when the filter is asked to keep the
/// kernel off the network ([`Network::Denied`]).
pub(crate) const NO_NETWORK_SOCKET_FAMILIES: &[(&str, i32)] =
    &[("AF_INET", libc::AF_INET), ("AF_INET6", libc::AF_INET6)];

/// Whether the filter itself keeps the kernel off the IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    /// IP sockets are allowed (the box has network, or a network namespace confines them).
    Allowed,
    /// `AF_INET` and `AF_INET6` sockets are refused.
    Denied,
}

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(SandboxError::SeccompArch)
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(arg, len, op, value)?)
}

fn compile(rules: Vec<(i64, Vec<SeccompRule>)>, errno: i32) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// The deny-list as BPF programs, one per errno (seccomp answers each call with the action of
/// the filter that matched it). Load them all.
pub(crate) fn deny_list(network: Network) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut eperm: Vec<(i64, Vec<SeccompRule>)> = DENIED_SYSCALLS.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let dword = || SeccompCmpArgLen::Dword;
    let ioctl_rules = [TIOCSTI, TIOCLINUX]
        .into_iter()
        .map(|req| Ok(SeccompRule::new(vec![cond(1, dword(), SeccompCmpOp::MaskedEq(0xffff_ffff), req)?])?))
        .collect::<Result<Vec<_>, SandboxError>>()?;
    eperm.push((libc::SYS_ioctl, ioctl_rules));
    let newuser = libc::CLONE_NEWUSER as u64;
    eperm.push((
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(newuser), newuser)?])?],
    ));
    let no_network: &[(&str, i32)] = match network {
        Network::Allowed => &[],
        Network::Denied => NO_NETWORK_SOCKET_FAMILIES,
    };
    let sockets = DENIED_SOCKET_FAMILIES
        .iter()
        .chain(no_network)
        .map(|(_, fam)| Ok(SeccompRule::new(vec![cond(0, dword(), SeccompCmpOp::Eq, *fam as u64)?])?))
        .collect::<Result<Vec<_>, SandboxError>>()?;
    Ok(vec![
        compile(eperm, libc::EPERM)?,
        compile(vec![(libc::SYS_socket, sockets)], libc::EAFNOSUPPORT)?,
        compile(vec![(libc::SYS_clone3, vec![])], libc::ENOSYS)?,
    ])
}

/// For an installer that may reach only its proxy over TCP (Landlock level): every IPv4 and
/// IPv6 socket but a stream one is refused with `EPERM`, since Landlock rules cover TCP only
/// and UDP (or ICMP, or raw) would reach host loopback and the network around the proxy.
pub(crate) fn stream_sockets_only() -> Result<BpfProgram, SandboxError> {
    let mut rules = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for kind in (0..16u64).filter(|k| *k != libc::SOCK_STREAM as u64) {
            let on = vec![
                cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64)?,
                cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0xf), kind)?,
            ];
            rules.push(SeccompRule::new(on)?);
        }
    }
    compile(vec![(libc::SYS_socket, rules)], libc::EPERM)
}

/// Calls that create IPC objects in the IPC namespace the box shares with the host (Landlock
/// level): SysV shared memory, message queues and semaphore sets, and POSIX message queues.
/// Such objects outlive every process of the box; the SysV ones are removed when the session
/// ends, but POSIX queues can be found only through a mounted `/dev/mqueue`. Bubblewrap gives
/// the box an IPC namespace of its own, which dies with it.
pub(crate) const HOST_IPC_SYSCALLS: &[(&str, i64)] = &[
    ("shmget", libc::SYS_shmget),
    ("msgget", libc::SYS_msgget),
    ("semget", libc::SYS_semget),
    ("mq_open", libc::SYS_mq_open),
];

/// For a box in the host's IPC namespace: the calls of [`HOST_IPC_SYSCALLS`] are refused
/// with `EPERM`. Python's multiprocessing, numpy and matplotlib use none of them (POSIX
/// semaphores and shared memory are files in `/dev/shm`).
pub(crate) fn no_host_ipc_objects() -> Result<BpfProgram, SandboxError> {
    compile(HOST_IPC_SYSCALLS.iter().map(|(_, nr)| (*nr, vec![])).collect(), libc::EPERM)
}

/// A program in the kernel's binary form (`struct sock_filter[]`), as `bwrap --seccomp` reads it.
pub(crate) fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

/// The filters of a bubblewrap box (the deny-list with the network allowed: the box's own
/// namespace keeps IP sockets off the host), each in a memory file: what bubblewrap loads
/// for an executed kernel and a forked kernel loads itself.
pub(crate) fn bubblewrap_filters() -> Result<Vec<OwnedFd>, SandboxError> {
    deny_list(Network::Allowed)?
        .iter()
        .map(memfd)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(SandboxError::SeccompMemfd)
}

/// A sealed-in-practice memory file holding `program`, positioned at its start, close-on-exec
/// (the spawn clears that flag in the child only).
pub(crate) fn memfd(program: &BpfProgram) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("codebox-seccomp", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&to_bytes(program))?;
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deny_list_compiles_to_three_programs() {
        let programs = deny_list(Network::Allowed).unwrap();
        assert_eq!(programs.len(), 3);
        for p in &programs {
            assert!(!p.is_empty() && p.len() < 4096, "a BPF program has at most 4096 instructions");
            assert_eq!(to_bytes(p).len(), p.len() * 8);
        }
        // Every syscall of the list has its own comparison in the first program.
        assert!(programs[0].len() > DENIED_SYSCALLS.len());
    }

    #[test]
    fn the_list_names_what_the_design_requires() {
        let names: Vec<&str> = DENIED_SYSCALLS.iter().map(|(n, _)| *n).collect();
        for required in ["io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "bpf", "ptrace", "unshare"]
        {
            assert!(names.contains(&required), "{required} missing");
        }
        let families: Vec<&str> = DENIED_SOCKET_FAMILIES.iter().map(|(n, _)| *n).collect();
        assert_eq!(families, ["AF_VSOCK", "AF_PACKET"]);
        assert!(!DENIED_SOCKET_FAMILIES.iter().any(|(_, f)| *f == libc::AF_NETLINK), "libzmq needs netlink");
        let no_network: Vec<&str> = NO_NETWORK_SOCKET_FAMILIES.iter().map(|(n, _)| *n).collect();
        assert_eq!(no_network, ["AF_INET", "AF_INET6"]);
    }

    #[test]
    fn denying_the_network_adds_the_ip_families_to_the_socket_program() {
        let allowed = deny_list(Network::Allowed).unwrap();
        let denied = deny_list(Network::Denied).unwrap();
        assert!(denied[1].len() > allowed[1].len());
        assert_eq!(denied[0].len(), allowed[0].len(), "the other programs do not change");
    }

    #[test]
    fn the_stream_only_filter_has_a_rule_per_family_and_other_type() {
        let p = stream_sockets_only().unwrap();
        // Two families times fifteen socket types, each a comparison or more.
        assert!(p.len() > 30 && p.len() < 4096, "{}", p.len());
    }

    #[test]
    fn the_host_ipc_filter_names_the_creating_calls() {
        let names: Vec<&str> = HOST_IPC_SYSCALLS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["shmget", "msgget", "semget", "mq_open"]);
        let p = no_host_ipc_objects().unwrap();
        assert!(p.len() > HOST_IPC_SYSCALLS.len() && p.len() < 4096, "{}", p.len());
    }

    #[test]
    fn the_memfd_holds_the_program_from_its_start() {
        use std::io::Read;
        let p = &deny_list(Network::Allowed).unwrap()[1];
        let mut f = std::fs::File::from(memfd(p).unwrap());
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, to_bytes(p));
    }
}
