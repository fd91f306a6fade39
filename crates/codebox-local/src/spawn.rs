//! Spawning kernel processes from one long-lived thread, so none outlives its owner.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! Kernels are therefore forked by a single dedicated thread that lives as long as the
//! process; when the process dies (even by SIGKILL) the kernel gets SIGKILL. Each kernel also
//! leads its own process group so that killing it takes its children along.
#![allow(unsafe_code, reason = "forking with pre_exec and prctl: see the SAFETY notes")]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use rustix::process::Signal;

enum Job {
    Spawn(Box<Command>, mpsc::Sender<std::io::Result<Child>>),
    Reap(Child),
}

struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn spawner() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("codebox-kernel-spawner".into())
            .spawn(move || {
                // This thread never returns while the process lives: the sender sits in a
                // static, so `recv` only fails at process exit.
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Spawn(mut cmd, reply) => {
                            let _ = reply.send(spawn_here(&mut cmd));
                        }
                        Job::Reap(mut child) => {
                            let _ = child.wait();
                        }
                    }
                }
            })
            .expect("the kernel spawner thread starts");
        Spawner { jobs: Mutex::new(tx) }
    })
}

fn spawn_here(cmd: &mut Command) -> std::io::Result<Child> {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe system calls (prctl, getppid, kill); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The owner may have died between fork and prctl: then nobody would kill us.
            if rustix::process::getppid() != Some(parent) {
                let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
            }
            Ok(())
        });
    }
    cmd.process_group(0).spawn()
}

/// Spawn `cmd` from the dedicated spawner thread.
pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Job::Spawn(Box::new(cmd), tx))
        .map_err(|_| std::io::Error::other("the kernel spawner thread is gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("the kernel spawner thread is gone"))?
}

/// Wait for a killed child on the spawner thread, so no zombie stays behind and no async
/// thread blocks.
pub(crate) fn reap(child: Child) {
    let _ = spawner().jobs.lock().unwrap_or_else(|e| e.into_inner()).send(Job::Reap(child));
}
