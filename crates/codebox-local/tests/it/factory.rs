//! `LocalFactory`, the host of boxes for a server: it claims and sweeps its session root,
//! keeps its boxes in it, refuses a second host on the same root and caps the sessions at
//! what its uids allow.

use codebox_core::{BoxFactory, CodeBoxExt};
use codebox_local::LocalFactory;

use crate::builder;

#[test]
fn claiming_a_root_sweeps_what_an_earlier_host_left() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let left = root.join("tmp/codebox-left-by-a-dead-server");
    std::fs::create_dir_all(left.join("deep/er")).unwrap();
    std::fs::write(left.join("deep/er/file"), "x").unwrap();

    let factory = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    assert_eq!(factory.session_root(), Some(root.as_path()));
    assert!(!left.exists(), "the earlier host's directory is swept");
    assert!(root.join("tmp").is_dir(), "the scratch directory is there for the boxes");
}

#[test]
fn a_second_factory_on_the_same_root_is_refused_while_the_first_lives() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let first = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    let err = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap_err().to_string();
    assert!(err.contains("another server is using the session root"), "{err}");
    drop(first);
    LocalFactory::builder(builder()).with_session_root(&root).build().expect("the root is free again");
}

#[test]
fn the_session_cap_leaves_a_uid_for_every_session_and_pooled_kernel() {
    if !codebox_core::conformance::requires("root (session uids)", codebox_local::running_as_root()) {
        return;
    }
    let factory =
        LocalFactory::builder(builder()).with_session_uids(Some(310_300..310_304)).with_pool_size(1).build().unwrap();
    assert_eq!(factory.session_uids(), Some(310_300..310_304));
    assert_eq!(factory.session_cap(), Some(3), "four uids, one held by the pooled kernel");
    let few = LocalFactory::builder(builder()).with_session_uids(Some(310_304..310_305)).with_pool_size(2).build();
    assert_eq!(few.unwrap().session_cap(), Some(1), "never below one session");
    let none = LocalFactory::builder(builder()).with_pool_size(2).build().unwrap();
    assert_eq!(none.session_cap(), None, "without session uids the uids set no cap");
    assert_eq!(none.pool().map(|p| p.size()), Some(2));
}

#[tokio::test]
async fn boxes_live_in_the_scratch_directory_of_the_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("sessions");
    let factory = LocalFactory::builder(builder()).with_session_root(&root).build().unwrap();
    let lb = factory.create(&codebox_core::BoxRequest::new()).await.unwrap();
    lb.start().await.unwrap();
    let cwd = lb.exec("import os; print(os.getcwd(), end='')").await.unwrap().stdout();
    assert!(
        std::path::Path::new(&cwd).starts_with(root.join("tmp")),
        "the working directory {cwd} is outside the session root's scratch directory"
    );
    lb.stop().await.unwrap();
}

/// A factory with no root, uids or cgroups, and `templates` beside the built-ins.
fn factory_with(templates: Vec<codebox_local::Template>) -> LocalFactory {
    LocalFactory::builder(builder()).with_templates(templates).build().unwrap()
}

#[tokio::test]
async fn a_request_gets_the_template_it_names_or_the_one_of_its_language() {
    let factory = factory_with(Vec::new());
    for request in
        [codebox_core::BoxRequest::new().with_template("bash"), codebox_core::BoxRequest::new().with_language("bash")]
    {
        let lb = factory.create(&request).await.unwrap();
        lb.start().await.unwrap();
        assert_eq!(lb.exec("echo \"$0\"").await.unwrap().stdout(), "bash\n", "{request:?}");
        lb.stop().await.unwrap();
    }
    let lb = factory.create(&codebox_core::BoxRequest::new().with_language("python")).await.unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.exec("print(40 + 2)").await.unwrap().stdout(), "42\n");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_templates_and_languages_are_refused_naming_those_there_are() {
    use codebox_core::{BoxRequest, ErrorKind};
    let factory = factory_with(vec![codebox_local::Template::new("stats", "python3", "python")]);
    let err = factory.create(&BoxRequest::new().with_template("ruby")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("python, python-ipykernel, python-minimal, bash, javascript, typescript, stats"),
        "{err}"
    );
    let err = factory.create(&BoxRequest::new().with_language("cobol")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("python, bash, javascript, typescript"), "{err}");
    let err = factory.create(&BoxRequest::new().with_template("bash").with_language("python")).await.unwrap_err();
    assert!(err.to_string().contains("template \"bash\" runs \"bash\", not \"python\""), "{err}");
    let lb = factory.create(&BoxRequest::new().with_kernel("no-such-kernel")).await.unwrap();
    let err = lb.start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("unknown kernel \"no-such-kernel\"; available kernels:"), "{err}");
    assert!(err.to_string().contains("python3"), "{err}");
    let err = LocalFactory::builder(builder()).with_pool("nope", 1).build().unwrap_err();
    assert!(err.to_string().contains("unknown template \"nope\""), "{err}");
    let err = LocalFactory::builder(builder())
        .with_templates([codebox_local::Template::new("bad name", "python3", "python")])
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn the_requests_environment_goes_over_the_templates() {
    let template = codebox_local::Template::new("greeter", "python3", "python")
        .with_env("GREETING", "hello")
        .with_env("WHO", "template");
    let factory = factory_with(vec![template]);
    let request = codebox_core::BoxRequest::new().with_template("greeter").with_env("WHO", "request");
    let lb = factory.create(&request).await.unwrap();
    lb.start().await.unwrap();
    let out = lb.exec("import os; print(os.environ['GREETING'], os.environ['WHO'])").await.unwrap();
    assert_eq!(out.stdout(), "hello request\n");
    lb.stop().await.unwrap();

    // The installer's settings are the owner's: a request cannot name directories for pip.
    let err = factory.create(&request.with_env("PIP_FIND_LINKS", "/etc")).await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("PIP_FIND_LINKS"), "{err}");
}

#[tokio::test]
async fn the_requests_disk_limit_bounds_the_working_directory() {
    if !codebox_core::conformance::requires("root (a sized working directory)", codebox_local::running_as_root()) {
        return;
    }
    let template = codebox_local::Template::new("roomy", "python3", "python")
        .with_limits(codebox_core::ResourceLimits::new().with_disk_bytes(512 << 20));
    let factory = factory_with(vec![template]);
    let limits = codebox_core::ResourceLimits::new().with_disk_bytes(16 << 20);
    let lb = factory.create(&codebox_core::BoxRequest::new().with_template("roomy").with_limits(limits)).await.unwrap();
    lb.start().await.unwrap();
    let code = r#"
import errno
try:
    with open("fill", "wb") as f:
        for _ in range(32):
            f.write(b"x" * (1 << 20))
        f.flush()
    print("no error")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;
    assert_eq!(lb.exec(code).await.unwrap().stdout(), "ENOSPC\n", "16 MiB asked for, over the template's 512");
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn the_catalogue_lists_builtins_and_configured_templates() {
    let stats = codebox_local::Template::new("stats", "python3", "python")
        .with_description("numbers")
        .with_packages(["codebox-not-built-here-3c1e"])
        .with_env("SECRET_TOKEN", "s3cret");
    let infos = factory_with(vec![stats]).templates();
    let names: Vec<&str> = infos.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["python", "python-ipykernel", "python-minimal", "bash", "javascript", "typescript", "stats"]);
    let python = &infos[0];
    assert!(python.builtin && python.ready, "the default environment is built for these tests: {python:?}");
    let stats = infos.last().unwrap();
    assert!(!stats.builtin && !stats.ready, "{stats:?}");
    assert_eq!(
        (stats.description.as_str(), stats.env_keys.as_slice()),
        ("numbers", ["SECRET_TOKEN".to_owned()].as_slice())
    );
    assert!(!format!("{infos:?}").contains("s3cret"), "values are not listed");
    assert_eq!(infos.iter().find(|t| t.name == "javascript").unwrap().kernel, codebox_local::DENO_KERNEL);
}

#[tokio::test]
async fn a_template_kept_warm_gives_its_sessions_ready_kernels() {
    let factory = LocalFactory::builder(builder()).with_pool("python-minimal", 1).build().unwrap();
    assert!(factory.pool().is_none(), "no pool for the default template unless asked");
    factory.prewarm_in_background();
    let pool = factory.pool_of("python-minimal").unwrap().clone();
    // Wait for the warm kernel (no bound on how long it takes: the test's own timeout is).
    while pool.stats().ready < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lb = factory.create(&codebox_core::BoxRequest::new().with_template("python-minimal")).await.unwrap();
    lb.start().await.unwrap();
    assert_eq!(lb.exec("print('warm')").await.unwrap().stdout(), "warm\n");
    let stats = factory.pool_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].template.as_str(), stats[0].target, stats[0].hits, stats[0].misses),
        ("python-minimal", 1, 1, 0)
    );
    // A request that changes the template's environment never takes from its pool.
    let other = factory
        .create(&codebox_core::BoxRequest::new().with_template("python-minimal").with_env("X", "1"))
        .await
        .unwrap();
    other.start().await.unwrap();
    assert_eq!(factory.pool_stats()[0].hits, 1);
    lb.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_under_their_own_uids_share_a_template_environment_read_only() {
    if !codebox_core::conformance::requires("root (session uids)", codebox_local::running_as_root()) {
        return;
    }
    // Pinned: a definition (so an environment) of this test's own.
    let template = codebox_local::Template::new("toml", "python3", "python").with_packages(["tomli-w==1.2.0"]);
    let env = codebox_local::template_python_dir(&template).unwrap();
    let factory = LocalFactory::builder(builder())
        .with_session_uids(Some(310_400..310_404))
        .with_templates([template])
        .build()
        .unwrap();
    let request = codebox_core::BoxRequest::new().with_template("toml");
    let (a, b) = (factory.create(&request).await.unwrap(), factory.create(&request).await.unwrap());
    a.start().await.unwrap();
    b.start().await.unwrap();
    let code = format!(
        r#"
import os, tomli_w
try:
    open({:?}, "w")
    wrote = "wrote"
except OSError:
    wrote = "read-only"
print(os.getuid() != 0, tomli_w.dumps({{"x": 1}}).strip(), wrote)
"#,
        env.join("planted").display().to_string()
    );
    for lb in [&a, &b] {
        assert_eq!(lb.exec(&code).await.unwrap().stdout(), "True x = 1 read-only\n");
    }
    assert!(!env.join("planted").exists());
    assert!(factory.templates().iter().any(|t| t.name == "toml" && t.ready), "listed as built");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
