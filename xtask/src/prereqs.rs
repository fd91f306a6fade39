//! The system packages the tests need, checked (and on Debian installed) before `cargo xtask
//! ci` runs anything: the README's test command must pass on a fresh machine by itself.
//!
//! On a Debian-like machine (one with `dpkg-query` and `apt-get`) a missing package is
//! installed when this runs as root or with passwordless sudo; otherwise the step stops at
//! once with the exact command to run. Elsewhere the step checks the programs the packages
//! provide and names what is missing.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A system package the tests need, the program that shows it is there, and why.
#[derive(Debug)]
struct Prereq {
    package: &'static str,
    /// A program on PATH that the package provides (checked where there is no dpkg).
    program: &'static str,
    why: &'static str,
    /// Whether any program of that name on PATH will do (a newer one installed otherwise than
    /// from this package must not be replaced, nor conflict with it).
    any_program: bool,
}

/// Everything the workspace's tests need from the system. The one list: `.ci/run` keeps only
/// the Rust toolchain's own parts.
const PREREQS: &[Prereq] = &[
    Prereq { package: "python3", program: "python3", why: "kernels and the Python client tests", any_program: false },
    Prereq {
        package: "python3-venv",
        program: "python3",
        why: "LocalBox's managed environment and the client tests' virtualenvs (`python3 -m venv`)",
        any_program: false,
    },
    Prereq { package: "python3-pip", program: "python3", why: "installs into those virtualenvs", any_program: false },
    Prereq { package: "bubblewrap", program: "bwrap", why: "the sandboxed kernels", any_program: false },
    Prereq { package: "build-essential", program: "cc", why: "C code in dependencies (ring)", any_program: false },
    Prereq { package: "pkg-config", program: "pkg-config", why: "C dependencies' build scripts", any_program: false },
    Prereq { package: "git", program: "git", why: "the release tooling's tests", any_program: false },
    Prereq {
        package: "ca-certificates",
        program: "update-ca-certificates",
        why: "TLS to the package index",
        any_program: false,
    },
    Prereq {
        package: "procps",
        program: "ps",
        why: "process checks (no kernel outlives its owner)",
        any_program: false,
    },
    Prereq {
        package: "nginx",
        program: "nginx",
        why: "the proxy of the several-servers test and `cargo xtask deploy`'s check of deploy/nginx/",
        any_program: false,
    },
    Prereq {
        package: "kubernetes-client",
        program: "kubectl",
        why: "`cargo xtask deploy` renders deploy/kubernetes with `kubectl kustomize`",
        any_program: true,
    },
];

/// Check the prerequisites and install what is missing where that can be done unattended.
pub(crate) fn ensure() -> Result<()> {
    if !has("dpkg-query") || !has("apt-get") {
        let missing: Vec<&Prereq> = PREREQS.iter().filter(|p| !has(p.program)).collect();
        if missing.is_empty() {
            eprintln!("    every prerequisite program is on PATH (not a Debian machine: packages not checked)");
            return Ok(());
        }
        bail!(
            "missing programs: {} — install the packages that provide them ({}) with this system's package \
             manager, then run `cargo xtask ci` again",
            missing.iter().map(|p| format!("{} (for {})", p.program, p.why)).collect::<Vec<_>>().join(", "),
            missing.iter().map(|p| p.package).collect::<Vec<_>>().join(" ")
        );
    }
    let missing: Vec<&str> = PREREQS
        .iter()
        .filter(|p| !(installed(p.package) || (p.any_program && has(p.program))))
        .map(|p| p.package)
        .collect();
    if missing.is_empty() {
        eprintln!("    every prerequisite package is installed");
    } else {
        install(&missing)?;
    }
    venv_works()
}

/// Install `packages` with apt-get as root or through passwordless sudo; otherwise fail with
/// the command to run.
fn install(packages: &[&str]) -> Result<()> {
    let root = is_root();
    let sudo =
        !root && Command::new("sudo").args(["-n", "true"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let command = format!("sudo apt-get update && sudo apt-get install -y {}", packages.join(" "));
    if !root && !sudo {
        bail!("the tests need these system packages, which are not installed: {}\nrun: {command}", packages.join(" "));
    }
    eprintln!("    installing {}", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            cmd.args(["-n", "apt-get"]);
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null());
        cmd
    };
    for args in [&["update", "-qq"][..], &[&["install", "-y", "-qq", "--no-install-recommends"][..], packages].concat()]
    {
        let status = apt(args).status().context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status}); run it by hand: {command}", args.join(" "));
        }
    }
    Ok(())
}

/// `python3 -m venv` must give a virtualenv with pip (Debian splits ensurepip out).
fn venv_works() -> Result<()> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let venv = dir.path().join("venv");
    let out = Command::new("python3").args(["-m", "venv"]).arg(&venv).output().context("running python3 -m venv")?;
    if !out.status.success() {
        bail!(
            "`python3 -m venv` does not work here ({}); install python3-venv for this Python",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pip = Command::new(venv.join("bin/python")).args(["-m", "pip", "--version"]).output();
    if !pip.is_ok_and(|o| o.status.success()) {
        bail!("a virtualenv made by `python3 -m venv` has no pip; install python3-pip and python3-venv");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn has(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_every_package_once() {
        let mut names: Vec<&str> = PREREQS.iter().map(|p| p.package).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PREREQS.len());
        assert!(names.contains(&"bubblewrap") && names.contains(&"python3-venv"));
    }

    #[test]
    fn programs_on_path_are_found_and_others_are_not() {
        assert!(has("sh"));
        assert!(!has("no-such-program-anywhere"));
    }
}
