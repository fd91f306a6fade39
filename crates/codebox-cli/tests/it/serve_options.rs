//! `codebox serve`'s options as an operator gives them: a config file, the environment and
//! flags, read by the real binary up to the point where it would start serving.

use std::process::{Command, Output, Stdio};

/// `codebox serve` with `args` and the environment `env`, expected to stop before serving.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codebox"));
    cmd.arg("serve").args(args).env_remove("CODEBOX_SERVER_ADDR").env_remove("CODEBOX_SERVER_API_KEYS");
    cmd.envs(env.iter().copied()).stdin(Stdio::null()).output().expect("run codebox serve")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_environment_wins_over_the_config_file_and_a_bad_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "addr = \"not an address\"\n").unwrap();
    let config = config.to_str().unwrap();

    // Nothing overrides the file's address: it is read, and refused by name.
    let out = serve(&["--config", config], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("\"addr\"") && stderr(&out).contains("serve.toml"), "{}", stderr(&out));

    // CODEBOX_SERVER_ADDR replaces it, so the next complaint is the missing API key.
    let out = serve(&["--config", config], &[("CODEBOX_SERVER_ADDR", "127.0.0.1:0")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("no API keys"), "{}", stderr(&out));

    std::fs::write(dir.path().join("serve.toml"), "max_sesions = 3\n").unwrap();
    let out = serve(&["--config", config], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("`max_sesions`"), "a typo is named: {}", stderr(&out));
}

#[test]
fn help_documents_the_defaults() {
    let out = serve(&["--help"], &[]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for default in [
        "[default: 127.0.0.1:8069]",
        "[default: from the host's memory",
        "[default: 15m]",
        "[default: 512M, or half of --workdir-size when that is smaller]",
        "both ends included [default: 200000-265535 when running as root]",
        "[env: CODEBOX_SERVER_ADDR=]",
    ] {
        assert!(help.contains(default), "{default:?} missing from:\n{help}");
    }
}

#[test]
fn operator_keys_and_rates_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "tenant-key\n").unwrap();
    let keys = keys.to_str().unwrap();
    let addr = ["--addr", "127.0.0.1:0"];

    let out = serve(&[&addr[..], &["--api-key-file", keys, "--rate-limit", "5", "--rate-burst", "0"]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("rate_burst must be at least 1"), "{}", stderr(&out));

    let missing = dir.path().join("no-such-file");
    let out =
        serve(&[&addr[..], &["--api-key-file", keys, "--operator-key-file", missing.to_str().unwrap()]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("no-such-file"), "the file is named: {}", stderr(&out));

    // The same key in both roles is refused, and the key is not shown.
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "operator_keys = [\"tenant-key\"]\n").unwrap();
    let out = serve(&[&addr[..], &["--api-key-file", keys, "--config", config.to_str().unwrap()]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("give each key one role"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("tenant-key"), "{}", stderr(&out));

    let out = serve(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for text in
        ["--operator-key-file <FILE>", "--rate-limit <N>", "[default: 50]", "--rate-burst <N>", "[default: 100]"]
    {
        assert!(help.contains(text), "{text:?} missing from:\n{help}");
    }
}

#[test]
fn a_bad_template_table_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    for (text, said) in [
        ("no_auth = true\n[templates.ruby]\npool = 1\n", "templates.ruby"),
        ("no_auth = true\n[templates.stats]\npackages = [\"https://example.org/x.whl\"]\n", "templates.stats"),
        ("no_auth = true\n[templates.stats]\npackages = \"scipy\"\n", "packages"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = serve(&["--config", config.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {out:?}");
        assert!(stderr(&out).contains(said), "{text:?}: {}", stderr(&out));
    }
}
