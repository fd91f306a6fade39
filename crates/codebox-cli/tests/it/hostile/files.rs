//! Hostile-tenant cases: files and trees. A box's code shapes its working directory and
//! TMPDIR (FIFOs, links, trees thousands of levels deep); downloads, listings, HEAD,
//! session deletion and the sweep at the next start must stay bounded whatever it made,
//! for every tenant of the server.

use super::*;

/// How long a request here may take before it counts as hanging.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Python that builds a chain of directories `links` thousand levels deep beneath `base`
/// (created), comes back, and prints how deep it got (a size-limited working directory
/// may run out of room first). Each thousand levels are made with `mkdir` and `chdir`
/// near the top, then the chain so far is renamed to the bottom of the new one: Landlock
/// checks every access against each directory up to the root, so a chain made at its
/// full depth would take time quadratic in it.
fn deep_tree_code(base: &str, links: usize) -> String {
    format!(
        "import os\n\
         top = os.getcwd()\n\
         base = os.path.abspath({base})\n\
         os.makedirs(base, exist_ok=True)\n\
         made = 0\n\
         try:\n\
         \x20   for i in range({links}):\n\
         \x20       os.chdir(base)\n\
         \x20       os.mkdir('c%d' % i)\n\
         \x20       os.chdir('c%d' % i)\n\
         \x20       for _ in range(1000):\n\
         \x20           os.mkdir('a')\n\
         \x20           os.chdir('a')\n\
         \x20       os.chdir(base)\n\
         \x20       if i:\n\
         \x20           os.rename('c%d' % (i - 1), 'c%d' % i + '/a' * 1000 + '/c%d' % (i - 1))\n\
         \x20       made += 1001\n\
         except OSError as e:\n\
         \x20   print('stopped:', e)\n\
         os.chdir(top)\n\
         print('depth', made)\n"
    )
}

/// The depth [`deep_tree_code`] reached, from its output.
fn depth_reached(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("depth "))
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or_else(|| panic!("no depth in {stdout:?}"))
}

/// The id of a new session started through the codebox-api 0.1 protocol (a decimal
/// integer up to 2^128, read from the body as text: it does not fit a JSON number type).
fn start_v1_session(serve: &Serve, key: &str) -> String {
    let reply = serve.request(key, "GET", "/api/v1/codebox/start", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let id: String = text.chars().filter(char::is_ascii_digit).collect();
    assert!(!id.is_empty(), "{text}");
    id
}

/// Downloads of FIFOs, many at once and through every protocol, are refused at once: no
/// open waits for a writer, so `/health` answers, the box works, and SIGTERM stops the
/// server.
fn fifo_downloads_are_refused_and_the_server_keeps_answering(level: Level) {
    let serve = Serve::start(Options::new(level));
    let id = start_v1_session(&serve, KEY_A);
    let b = serve.new_session(KEY_B);
    serve.exec(KEY_A, &id, "import os\nfor n in ('p', 'q', 'r', 's'):\n    os.mkfifo(n)").ok();
    let paths = [
        format!("/v1/sessions/{id}/files/p"),
        format!("/v1/sessions/{id}/files/q"),
        format!("/api/v1/codebox/{id}/download?file_name=r"),
        format!("/api/v2/codebox/{id}/files/download/s"),
    ];
    // Twice each, at once: more requests than the server has async workers.
    let replies: Vec<(String, std::io::Result<Reply>)> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .chain(paths.iter())
            .map(|path| {
                let serve = &serve;
                s.spawn(move || (path.clone(), serve.request_with(Some(KEY_A), "GET", path, &[], b"", ANSWER_WITHIN)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (path, reply) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("GET {path} got no answer: {e}"));
        assert_eq!(reply.status, 400, "GET {path}: {}", reply.text());
        assert!(reply.text().contains("not a regular file"), "GET {path}: {}", reply.text());
    }
    assert!(serve.healthy_within(Duration::from_secs(5)), "/health answers");
    assert_eq!(serve.exec(KEY_B, &b, "print(6 * 7)").ok(), "42\n");
    // The FIFOs are still there, untouched (`.codebox/` is the box's own HOME and TMPDIR).
    let names = serve.exec(KEY_A, &id, "print(sorted(n for n in os.listdir('.') if n != '.codebox'))");
    assert_eq!(names.ok(), "['p', 'q', 'r', 's']\n");
    serve.stop();
}

/// A recursive listing of a tree deeper than the cap answers 413 saying what to do
/// instead; the server, and every session on it, stays up.
fn a_deep_recursive_listing_is_refused(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    let b = serve.new_session(KEY_B);
    let made = serve.exec(KEY_A, &a, &deep_tree_code("'deep'", 2));
    assert_eq!(depth_reached(made.ok()), 2002);
    let reply = serve.request(KEY_A, "GET", &format!("/v1/sessions/{a}/files?recursive=true"), None);
    assert_eq!(reply.status, 413, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("deeper than 128 levels") && text.contains("list a subdirectory"), "{text}");
    let flat = serve.request(KEY_A, "GET", &format!("/v1/sessions/{a}/files"), None);
    assert_eq!(flat.status, 200, "{}", flat.text());
    let shallow = serve.request(KEY_A, "GET", &format!("/v1/sessions/{a}/files?dir=deep/c1/a&recursive=false"), None);
    assert_eq!(shallow.status, 200, "{}", shallow.text());
    assert!(serve.healthy_within(Duration::from_secs(5)), "/health answers");
    assert_eq!(serve.exec(KEY_B, &b, "print(6 * 7)").ok(), "42\n");
    assert_eq!(serve.exec(KEY_A, &a, "print('still here')").ok(), "still here\n");
    serve.stop();
}

/// A tree 30 000 levels deep in TMPDIR (which lives in the box's working area at every
/// level): deleting the session removes it with the server up; after a SIGKILL, the next
/// server on the same root sweeps such a tree and starts.
fn deep_trees_go_on_delete_and_at_the_next_start(level: Level) {
    let mut first = Serve::start(Options::new(level));
    let root = first.root.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deep_trees_case(level, &mut first)));
    if let Err(panic) = outcome {
        // The harness removes the session root with std's recursive `remove_dir_all`, which
        // a tree left by a failure here would overflow; `rm` walks without recursion.
        let _ = first.child.kill();
        let _ = first.child.wait();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&*root.to_string_lossy()))
        {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
        let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg(&root).status();
        std::panic::resume_unwind(panic);
    }
}

fn deep_trees_case(level: Level, first: &mut Serve) {
    let a = first.new_session(KEY_A);
    let b = first.new_session(KEY_B);
    let in_tmp = "os.path.join(os.environ['TMPDIR'], 'deep')";
    let made = first.exec(KEY_A, &a, &deep_tree_code(in_tmp, 30));
    assert_eq!(depth_reached(made.ok()), 30_030, "{made:?}");
    let inside = first.exec(KEY_A, &a, "import os; print(os.environ['TMPDIR'].startswith(os.getcwd()))");
    assert_eq!(inside.ok(), "True\n", "TMPDIR is in the working area at {level:?}");
    let reply = first.request(KEY_A, "DELETE", &format!("/v1/sessions/{a}"), None);
    assert!(reply.status == 204 || reply.status == 200, "{}", reply.text());
    assert!(first.healthy_within(Duration::from_secs(5)), "/health answers after the delete");
    assert_eq!(first.exec(KEY_B, &b, "print(6 * 7)").ok(), "42\n");

    // Left behind by a server that dies: the next one clears it.
    let c = first.new_session(KEY_A);
    let made = first.exec(KEY_A, &c, &deep_tree_code(in_tmp, 30));
    assert_eq!(depth_reached(made.ok()), 30_030, "{made:?}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Serve::start_on(&first.root, Options::new(level), first.uids.clone());
    assert!(second.healthy_within(Duration::from_secs(5)), "/health answers after the restart");
    let scratch: Vec<_> = std::fs::read_dir(first.root.join("tmp")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(scratch.is_empty(), "the sweep left {scratch:?}");
    let quarantine = first.root.join("trash");
    assert!(
        !quarantine.exists() || std::fs::read_dir(&quarantine).unwrap().next().is_none(),
        "nothing needed moving aside"
    );
    let d = second.new_session(KEY_A);
    assert_eq!(second.exec(KEY_A, &d, "print(6 * 7)").ok(), "42\n");
    second.stop();
}

/// HEAD makes the checks GET makes: a missing file, a link and a FIFO answer what GET
/// answers, and a regular file its length.
fn head_answers_what_get_answers(level: Level) {
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    serve
        .exec(
            KEY_A,
            &a,
            "import os\nopen('data.txt', 'w').write('hello')\nos.symlink('data.txt', 'link')\n\
             os.symlink('/etc/passwd', 'outside')\nos.mkfifo('pipe')\nos.mkdir('sub')",
        )
        .ok();
    for (name, expected) in [("data.txt", 200), ("missing", 404), ("link", 400), ("outside", 400), ("pipe", 400)] {
        let path = format!("/v1/sessions/{a}/files/{name}");
        let get = serve
            .request_with(Some(KEY_A), "GET", &path, &[], b"", ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("GET {name}: {e}"));
        let head = serve
            .request_with(Some(KEY_A), "HEAD", &path, &[], b"", ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("HEAD {name}: {e}"));
        assert_eq!(get.status, expected, "GET {name}: {}", get.text());
        assert_eq!(head.status, get.status, "HEAD {name} answers as GET does: {}", head.head);
        assert!(head.body.is_empty(), "HEAD {name} sends no body");
    }
    let head = serve
        .request_with(Some(KEY_A), "HEAD", &format!("/v1/sessions/{a}/files/data.txt"), &[], b"", ANSWER_WITHIN)
        .unwrap();
    assert_eq!(head.header("content-length").as_deref(), Some("5"), "{}", head.head);
    serve.stop();
}

/// Another tenant's working directory cannot be read through the disk image behind it,
/// whose name every process can work out from `/proc/self/mountinfo`: the image is the
/// server's alone.
fn another_sessions_disk_image_is_out_of_reach(level: Level) {
    const SECRET: &str = "KEYB-SECRET-0123456789";
    let serve = Serve::start(Options::new(level));
    let a = serve.new_session(KEY_A);
    let b = serve.new_session(KEY_B);
    let reply = serve.request_with(
        Some(KEY_B),
        "PUT",
        &format!("/v1/sessions/{b}/files/secret.txt"),
        &[],
        SECRET.as_bytes(),
        ANSWER_WITHIN,
    );
    assert_eq!(reply.unwrap().status, 201);
    // On the host, every image is root's and 0600.
    let scratch = serve.root.join("tmp");
    let images: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in &images {
        let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(image).unwrap());
        assert_eq!(mode & 0o777, 0o600, "{}", image.display());
    }
    // From tenant A's box: every image named by a mount point it can see, read if it can.
    let probe = format!(
        "import os, subprocess\n\
         subprocess.run(['sync'])\n\
         found = []\n\
         for line in open('/proc/self/mountinfo'):\n\
         \x20   point = line.split()[4]\n\
         \x20   if '/codebox-' not in point:\n\
         \x20       continue\n\
         \x20   image = os.path.join(os.path.dirname(point), '.' + os.path.basename(point) + '.img')\n\
         \x20   try:\n\
         \x20       with open(image, 'rb') as f:\n\
         \x20           found.append({SECRET:?}.encode() in f.read())\n\
         \x20   except OSError as e:\n\
         \x20       found.append(type(e).__name__)\n\
         print(found)\n"
    );
    let seen = serve.exec(KEY_A, &a, &probe);
    assert!(!seen.ok().contains("True"), "tenant A read tenant B's file through its image: {seen:?}");
    serve.stop();
}

per_level!(
    another_sessions_disk_image_is_out_of_reach,
    fifo_downloads_are_refused_and_the_server_keeps_answering,
    a_deep_recursive_listing_is_refused,
    deep_trees_go_on_delete_and_at_the_next_start,
    head_answers_what_get_answers,
);
