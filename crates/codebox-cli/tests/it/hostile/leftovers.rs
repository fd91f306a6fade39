//! Nothing of a session is left for the next tenant: SysV IPC objects (shared memory, message
//! queues, semaphores) and files in the host's world-writable directories that a box made
//! are gone once its session is deleted, and after a server killed with them alive, once the
//! next server on the same root has started. Without that, the next session given the same
//! uid read them back, and a deleted session's shared memory stayed allocated for good.

use std::path::Path;
use std::time::Duration;

use super::{KEY_A, KEY_B, Level, Options, Serve, per_level, wait_until};

/// The host directories a box at the none level can write outside its working directory.
const HOST_DIRS: [&str; 3] = ["/var/tmp", "/tmp", "/dev/shm"];

/// Python that makes a SysV shared memory segment, message queue and semaphore set with a
/// secret in the first two (ids -1 where creating them is refused), and a 0600 file (and a
/// directory with one) in each of [`HOST_DIRS`] where it may, and a POSIX message queue;
/// prints `uid shm msg sem files-made queue` (queue `-` where refused).
fn leave_behind(tag: &str) -> String {
    format!(
        r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def made(v, what):
    if v == -1:
        raise OSError(ctypes.get_errno(), what)
    return v
IPC_CREAT_0600 = 0o1600
shm = msg = sem = -1
try:
    shm = made(libc.shmget(0, 1 << 20, IPC_CREAT_0600), "shmget")
    addr = libc.shmat(shm, None, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "shmat")
    ctypes.memmove(addr, b"secret-{tag}", 9)
    libc.shmdt(addr)
    msg = made(libc.msgget(0, IPC_CREAT_0600), "msgget")
    body = ctypes.create_string_buffer(struct.pack("l", 1) + b"secret-{tag}")
    made(libc.msgsnd(msg, body, 9, 0), "msgsnd")
    sem = made(libc.semget(0, 1, IPC_CREAT_0600), "semget")
except PermissionError:
    pass
files = 0
for d in {dirs:?}:
    try:
        fd = os.open(os.path.join(d, "codebox-leftover-{tag}-%d" % os.getpid()), os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"secret-{tag}")
        os.close(fd)
        sub = os.path.join(d, "codebox-leftover-dir-{tag}-%d" % os.getpid())
        os.mkdir(sub, 0o700)
        open(os.path.join(sub, "inner"), "w").write("secret")
        files += 1
    except OSError:
        pass
queue = "/codebox-leftover-{tag}-%d" % os.getpid()
try:
    made(libc.mq_open(queue.encode(), os.O_CREAT | os.O_RDWR, 0o600, None), "mq_open")
except PermissionError:
    queue = "-"
print(os.getuid(), shm, msg, sem, files, queue)
"#,
        dirs = HOST_DIRS,
    )
}

/// What [`leave_behind`] printed.
struct Made {
    uid: u32,
    ids: [i32; 3],
    files: usize,
    /// The POSIX message queue's name, unless refused.
    queue: Option<String>,
}

fn parse_made(out: &str) -> Made {
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{out}");
    let v: Vec<i64> = fields[..5].iter().map(|f| f.parse().unwrap_or_else(|e| panic!("{e}: {out}"))).collect();
    Made {
        uid: u32::try_from(v[0]).unwrap(),
        ids: [v[1], v[2], v[3]].map(|i| i32::try_from(i).unwrap()),
        files: usize::try_from(v[4]).unwrap(),
        queue: (fields[5] != "-").then(|| fields[5].to_owned()),
    }
}

/// Whether the POSIX message queue `name` exists in the host's IPC namespace (this test
/// runs there, as root).
fn host_has_queue(name: &str) -> bool {
    let code = format!(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.mq_open({name:?}.encode(), os.O_RDONLY)\nprint(fd >= 0 or ctypes.get_errno() != 2)"
    );
    let out = std::process::Command::new("python3").args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

/// The SysV IPC objects on the host owned or created by a uid of `uids`, as `table:id`.
fn host_ipc_of(uids: &std::ops::Range<u32>) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["shm", "msg", "sem"] {
        let text = std::fs::read_to_string(format!("/proc/sysvipc/{table}")).unwrap();
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = |n: &str| names.iter().position(|c| *c == n).unwrap();
        let (uid, cuid) = (col("uid"), col("cuid"));
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            let of = |i: usize| f[i].parse::<u32>().is_ok_and(|u| uids.contains(&u));
            if of(uid) || of(cuid) {
                found.push(format!("{table}:{}", f[1]));
            }
        }
    }
    found
}

/// Entries of [`HOST_DIRS`] (three levels down, without following links) owned by a uid of
/// `uids`.
fn host_files_of(uids: &std::ops::Range<u32>) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut todo: Vec<(std::path::PathBuf, usize)> = HOST_DIRS.iter().map(|d| (Path::new(d).to_owned(), 0)).collect();
    while let Some((dir, depth)) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if uids.contains(&meta.uid()) {
                found.push(entry.path().display().to_string());
            } else if meta.is_dir() && depth < 2 {
                todo.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// Leftovers of a uid of `uids` on the host: IPC objects and files.
fn host_leftovers(uids: &std::ops::Range<u32>) -> Vec<String> {
    let mut all = host_ipc_of(uids);
    all.extend(host_files_of(uids));
    all
}

/// The tag in the names of the files A's session leaves: the server's own, since the none
/// level's boxes all see the host's `/tmp`, where other tests' servers leave theirs at the
/// same time.
fn tag_of(serve: &Serve) -> String {
    format!("a{}", serve.uids.start)
}

/// Make A's objects in a new session and check they are where the level lets them be.
fn make_objects(serve: &Serve, level: Level) -> (String, Made) {
    let a = serve.new_session(KEY_A);
    let made = parse_made(serve.exec(KEY_A, &a, &leave_behind(&tag_of(serve))).ok());
    match level {
        // Its own IPC namespace and a /tmp of its own: nothing reaches the host.
        Level::Bubblewrap => assert!(host_leftovers(&serve.uids).is_empty(), "{:?}", host_leftovers(&serve.uids)),
        // The host's IPC namespace: creating objects there is refused.
        Level::Landlock => {
            assert!(serve.uids.contains(&made.uid), "the box runs as its session uid: {}", made.uid);
            assert_eq!(made.ids, [-1; 3], "SysV IPC objects are refused at the Landlock level");
            assert_eq!(made.queue, None, "POSIX message queues are refused at the Landlock level");
            assert!(host_ipc_of(&serve.uids).is_empty(), "{:?}", host_ipc_of(&serve.uids));
        }
        Level::None => {
            assert!(serve.uids.contains(&made.uid), "the box runs as its session uid: {}", made.uid);
            assert_eq!(host_ipc_of(&serve.uids).len(), 3, "the box's objects are in the host's IPC namespace");
            assert!(host_has_queue(made.queue.as_deref().unwrap()), "the queue is in the host's IPC namespace");
        }
    }
    if level == Level::None {
        assert_eq!(made.files, HOST_DIRS.len(), "the none level writes the host's world-writable directories");
        assert_eq!(host_files_of(&serve.uids).len(), 2 * HOST_DIRS.len(), "{:?}", host_files_of(&serve.uids));
        assert!(serve.gaps(KEY_A, &a).contains(&"host_writable_dirs".to_owned()), "the gap is reported");
    } else {
        assert!(host_files_of(&serve.uids).is_empty(), "{:?}", host_files_of(&serve.uids));
    }
    (a, made)
}

/// A deletes its session with its objects alive: they are gone from the host, and B's next
/// session, under the same uid, finds neither A's segment and queue (by id) nor its files.
fn nothing_of_a_deleted_session_is_left(level: Level) {
    let serve = Serve::start(Options::new(level));
    let (a, made) = make_objects(&serve, level);
    let reply = serve.request(KEY_A, "DELETE", &format!("/v1/sessions/{a}"), None);
    assert!(reply.status == 204 || reply.status == 200, "{}", reply.text());
    wait_until("the deleted session's objects and files are gone", Duration::from_secs(10), || {
        host_leftovers(&serve.uids).is_empty()
    });
    if let Some(queue) = &made.queue {
        assert!(!host_has_queue(queue), "the deleted session's message queue is gone");
    }

    let b = serve.new_session(KEY_B);
    let [shm, msg, _] = made.ids;
    let probe = format!(
        r#"
import ctypes, glob, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
found = []
addr = libc.shmat({shm}, None, 0)
if addr is not None and addr != ctypes.c_void_p(-1).value:
    found.append("shm " + ctypes.string_at(addr, 9).decode(errors="replace"))
buf = ctypes.create_string_buffer(64)
if libc.msgrcv({msg}, buf, 32, 0, 0o4000) >= 0:
    found.append("msg")
for d in {dirs:?}:
    found += glob.glob(os.path.join(d, "codebox-leftover-*{tag}-*"))
print(os.getuid() == {uid}, found)
"#,
        uid = made.uid,
        tag = tag_of(&serve),
        dirs = HOST_DIRS,
    );
    let seen = serve.exec(KEY_B, &b, &probe);
    let seen = seen.ok();
    assert!(seen.ends_with(" []\n"), "B's session found A's leftovers: {seen}");
    if level != Level::Bubblewrap {
        assert!(seen.starts_with("True"), "B's session reuses A's uid, which makes this case bite: {seen}");
    }
    let uids = serve.uids.clone();
    serve.stop();
    assert!(host_leftovers(&uids).is_empty(), "{:?}", host_leftovers(&uids));
}

/// A server SIGKILLed with A's objects alive: the next server on the same root and uids
/// removes them in its sweep at start.
fn the_sweep_at_start_removes_what_a_killed_server_left(level: Level) {
    let mut first = Serve::start(Options::new(level));
    let (_a, made) = make_objects(&first, level);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let uids = first.uids.clone();
    if level == Level::None {
        assert!(!host_ipc_of(&uids).is_empty(), "the objects outlive the killed server");
    }
    let second = Serve::start_on(&first.root, Options::new(level), uids.clone());
    assert!(host_leftovers(&uids).is_empty(), "the sweep left {:?}", host_leftovers(&uids));
    if let Some(queue) = &made.queue {
        assert!(!host_has_queue(queue), "the sweep removed the message queue");
    }
    second.stop();
}

per_level!(nothing_of_a_deleted_session_is_left, the_sweep_at_start_removes_what_a_killed_server_left);
