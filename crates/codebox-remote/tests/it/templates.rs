//! Templates through the whole stack: a real server over the library's `LocalFactory` (its
//! built-in catalogue and a warm pool), reached with [`Client`] — the catalogue and pool listed,
//! and JavaScript and TypeScript sessions that keep state, print, display and raise errors as
//! data, as Python ones do.

use codebox_core::{CodeBox, CodeBoxExt, CodeBoxSettings, ErrorKind, MimeBundle, Outcome};
use codebox_local::{LocalBox, LocalFactory, PythonProfile, Template};
use codebox_remote::{Client, SessionRequest};
use codebox_server::{Server, ServerConfig};
use tokio::sync::oneshot;

const KEY: &str = "sk-templates";

/// A running server whose sessions come from a `LocalFactory` keeping one Python kernel warm;
/// stops when dropped.
struct Running {
    base: String,
    _root: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn serve() -> Running {
    serve_with(Vec::new()).await
}

/// [`serve`], with these templates besides the built-ins.
async fn serve_with(templates: Vec<Template>) -> Running {
    let root = tempfile::tempdir().unwrap();
    let factory = LocalFactory::builder(LocalBox::builder())
        .with_session_root(root.path().join("sessions"))
        .with_templates(templates)
        .with_pool("python", 1)
        .build()
        .unwrap();
    factory.prewarm_in_background();
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse().unwrap()).with_api_key(KEY);
    let server = Server::bind(config, std::sync::Arc::new(factory)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    Running { base, _root: root, _stop: stop }
}

fn client(base: &str) -> Client {
    Client::from_settings(&CodeBoxSettings::new().with_api_key(KEY).with_base_url(base)).unwrap()
}

#[tokio::test]
async fn the_catalogue_and_the_pool_are_listed_and_an_unknown_template_is_refused_naming_them() {
    let server = serve().await;
    let client = client(&server.base);
    let templates = client.templates().await.unwrap();
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    for name in ["python", "python-ipykernel", "python-minimal", "bash", "javascript", "typescript"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let js = templates.iter().find(|t| t.name == "javascript").unwrap();
    assert_eq!((js.kernel.as_str(), js.language.as_str(), js.builtin), ("deno", "javascript", true));
    let pools = client.pool().await.unwrap();
    let python = pools.iter().find(|p| p.template == "python").expect("the python pool is reported");
    assert_eq!(python.target, 1, "{pools:?}");

    let err = client.create(SessionRequest::new().with_template("cobol")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("javascript"), "the error names the templates there are: {err}");
}

#[tokio::test]
async fn javascript_and_typescript_sessions_keep_state_print_display_and_raise_errors_as_data() {
    let server = serve().await;
    let client = client(&server.base);
    for template in ["javascript", "typescript"] {
        let session = client.create(SessionRequest::new().with_template(template)).await.unwrap();
        let info = session.info().await.unwrap();
        assert_eq!(info.template.as_deref(), Some(template));
        assert!(session.capabilities().languages.iter().any(|l| l == template), "{:?}", session.capabilities());

        let declare = if template == "typescript" { "let x: number = 41;" } else { "let x = 41;" };
        session.exec(declare).await.unwrap();
        let ex = session.exec("x + 1").await.unwrap();
        assert_eq!(ex.text(), "42", "state is kept across cells ({template}): {ex:?}");

        let ex = session.exec("console.log('hello from ' + 'deno')").await.unwrap();
        assert_eq!(ex.stdout(), "hello from deno\n", "{ex:?}");

        let ex = session.exec("await Deno.jupyter.display({ 'text/html': '<b>hi</b>' }, { raw: true })").await.unwrap();
        let html: Vec<String> = ex.displays().iter().filter_map(|d| d.text_of(MimeBundle::HTML)).collect();
        assert_eq!(html, ["<b>hi</b>"], "{ex:?}");

        let ex = session.exec("throw new TypeError('boom')").await.unwrap();
        assert_eq!(ex.outcome, Outcome::Error, "{ex:?}");
        let error = ex.error().expect("the exception is data");
        assert!(error.value.contains("boom"), "{error:?}");
        let ex = session.exec("x * 2").await.unwrap();
        assert_eq!(ex.text(), "82", "an error leaves the state: {ex:?}");
        session.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_template_that_cannot_be_built_fails_its_session_clearly_and_is_tried_again() {
    let broken = Template::new("broken", "python3", "python")
        .with_profile(PythonProfile::Minimal)
        .with_packages(["codebox-definitely-missing-package-51c2e8"]);
    let server = serve_with(vec![broken]).await;
    let client = client(&server.base);
    for attempt in 1..=2 {
        let err = client.create(SessionRequest::new().with_template("broken")).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("building the template environment of"), "attempt {attempt}: {text}");
        assert!(
            text.contains("No matching distribution found for codebox-definitely-missing-package-51c2e8"),
            "the installer's last lines say why (attempt {attempt}): {text}"
        );
    }
    // The server is still up and still makes sessions of the templates that build.
    let session = client.create(SessionRequest::new().with_template("python")).await.unwrap();
    assert_eq!(session.exec("1 + 1").await.unwrap().text(), "2");
}
