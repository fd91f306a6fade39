//! The workspace as xtask sees it: where it lives, how to run cargo and git in it, and the
//! packages `cargo metadata` reports, with their internal dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The workspace root: the parent of this package's directory.
pub(crate) fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or(manifest_dir)
}

/// The cargo that runs this xtask (so `cargo +toolchain xtask` stays on that toolchain).
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

/// A git command in `dir`.
pub(crate) fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir);
    cmd
}

/// A command line as a shell user would type it, for headers and error messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> =
        cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?)))).collect();
    let program = Path::new(cmd.get_program()).file_name().unwrap_or(cmd.get_program());
    parts.push(quote(program));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:@+,".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio and fails, naming the command, unless it succeeds.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd`, capturing its output, and fails with its stderr unless it succeeds.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let Output { status, stdout, stderr } = cmd.output().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", String::from_utf8_lossy(&stderr).trim());
    }
    String::from_utf8(stdout).with_context(|| format!("`{shown}` printed invalid UTF-8"))
}

/// Whether the `CI` variable says this runs in CI (CI services set it to `true`).
pub(crate) fn in_ci(ci: Option<&str>) -> bool {
    ci.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
}

/// How a package depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DepKind {
    Normal,
    Build,
    Dev,
}

/// A dependency edge as `cargo metadata` reports it.
#[derive(Debug, Clone)]
pub(crate) struct Dependency {
    pub(crate) name: String,
    pub(crate) kind: DepKind,
}

/// A workspace member.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
    /// `false` for `publish = false`.
    pub(crate) publishable: bool,
    pub(crate) dependencies: Vec<Dependency>,
    /// Names of the binary targets.
    pub(crate) bins: Vec<String>,
}

/// The workspace members and the target directory, from `cargo metadata --no-deps`.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) packages: Vec<Package>,
    pub(crate) target_directory: PathBuf,
}

impl Metadata {
    /// Runs `cargo metadata --no-deps` in the workspace.
    pub(crate) fn load() -> Result<Self> {
        let json = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
        Self::parse(&serde_json::from_str(&json).context("cargo metadata printed invalid JSON")?)
    }

    /// Reads the parts of `cargo metadata` output that xtask uses.
    pub(crate) fn parse(json: &Value) -> Result<Self> {
        let str_field = |v: &Value, key: &str| -> Result<String> {
            v[key].as_str().map(str::to_owned).with_context(|| format!("cargo metadata: `{key}` missing in {v}"))
        };
        let members: BTreeSet<&str> =
            json["workspace_members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut packages = Vec::new();
        for pkg in json["packages"].as_array().context("cargo metadata: no `packages`")? {
            if !members.contains(pkg["id"].as_str().unwrap_or_default()) {
                continue;
            }
            let dependencies = pkg["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let kind = match d["kind"].as_str() {
                        None => DepKind::Normal,
                        Some("build") => DepKind::Build,
                        Some("dev") => DepKind::Dev,
                        Some(other) => bail!("cargo metadata: unknown dependency kind {other:?}"),
                    };
                    Ok(Dependency { name: str_field(d, "name")?, kind })
                })
                .collect::<Result<_>>()?;
            // `publish` is null (any registry) or a list of allowed registries (`[]` = publish = false).
            let publishable = pkg["publish"].as_array().is_none_or(|registries| !registries.is_empty());
            let bins = pkg["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
                .map(|t| str_field(t, "name"))
                .collect::<Result<_>>()?;
            packages.push(Package {
                name: str_field(pkg, "name")?,
                version: str_field(pkg, "version")?,
                publishable,
                dependencies,
                bins,
            });
        }
        let target_directory = PathBuf::from(str_field(json, "target_directory")?);
        Ok(Self { packages, target_directory })
    }

    /// The member called `name`.
    pub(crate) fn package(&self, name: &str) -> Result<&Package> {
        self.packages.iter().find(|p| p.name == name).with_context(|| format!("no workspace member named `{name}`"))
    }

    /// The publishable members, each after every workspace member it depends on.
    ///
    /// Normal and build dependencies must come first. Dev-dependencies are honoured too when
    /// they do not form a cycle (a registry checks that a versioned dev-dependency exists).
    pub(crate) fn publish_order(&self) -> Result<Vec<&Package>> {
        let publishable: BTreeMap<&str, &Package> =
            self.packages.iter().filter(|p| p.publishable).map(|p| (p.name.as_str(), p)).collect();
        for pkg in publishable.values() {
            for dep in pkg.dependencies.iter().filter(|d| d.kind != DepKind::Dev) {
                if self.packages.iter().any(|p| p.name == dep.name && !p.publishable) {
                    bail!("`{}` depends on `{}`, which has publish = false", pkg.name, dep.name);
                }
            }
        }
        let edges = |with_dev: bool| -> BTreeMap<&str, BTreeSet<&str>> {
            publishable
                .values()
                .map(|pkg| {
                    let deps = pkg
                        .dependencies
                        .iter()
                        .filter(|d| with_dev || d.kind != DepKind::Dev)
                        .filter(|d| d.name != pkg.name && publishable.contains_key(d.name.as_str()))
                        .map(|d| d.name.as_str())
                        .collect();
                    (pkg.name.as_str(), deps)
                })
                .collect()
        };
        let order = match topological(edges(true)) {
            Ok(order) => order,
            Err(_) => topological(edges(false))?,
        };
        Ok(order.into_iter().map(|name| publishable[name]).collect())
    }
}

/// Kahn's algorithm over `node -> its dependencies`; ties broken by name so the order is stable.
fn topological<'a>(mut deps: BTreeMap<&'a str, BTreeSet<&'a str>>) -> Result<Vec<&'a str>> {
    let mut order = Vec::with_capacity(deps.len());
    while !deps.is_empty() {
        let ready: Vec<&str> = deps.iter().filter(|(_, d)| d.is_empty()).map(|(n, _)| *n).collect();
        if ready.is_empty() {
            bail!("dependency cycle among {:?}", deps.keys().collect::<Vec<_>>());
        }
        for name in ready {
            deps.remove(name);
            deps.values_mut().for_each(|d| {
                d.remove(name);
            });
            order.push(name);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata() -> Value {
        let pkg = |name: &str, publish: Value, deps: &[(&str, Option<&str>)]| {
            json!({
                "id": format!("path+file:///w/{name}#0.1.0"),
                "name": name,
                "version": "0.1.0",
                "publish": publish,
                "dependencies": deps.iter().map(|(n, k)| json!({"name": n, "kind": k})).collect::<Vec<_>>(),
                "targets": [{"name": name, "kind": ["lib"]}],
            })
        };
        let packages = vec![
            pkg("facade", Value::Null, &[("remote", None), ("local", None), ("serde", None)]),
            pkg("remote", Value::Null, &[("http", None), ("core", None), ("tests", Some("dev"))]),
            pkg("http", Value::Null, &[("core", None), ("facade", Some("dev"))]),
            pkg("local", Value::Null, &[("core", None)]),
            pkg("core", Value::Null, &[("serde", None)]),
            pkg("tests", json!([]), &[("facade", Some("dev"))]),
        ];
        let members: Vec<Value> = packages.iter().map(|p| p["id"].clone()).collect();
        json!({"packages": packages, "workspace_members": members, "target_directory": "/w/target"})
    }

    #[test]
    fn publish_order_puts_dependencies_first_and_skips_unpublishable() {
        let meta = Metadata::parse(&metadata()).unwrap();
        let order: Vec<&str> = meta.publish_order().unwrap().iter().map(|p| p.name.as_str()).collect();
        // http's dev-dependency on facade would form a cycle, so only normal edges count.
        assert_eq!(order, ["core", "http", "local", "remote", "facade"]);
    }

    #[test]
    fn publishable_crate_depending_on_unpublishable_one_is_refused() {
        let mut json = metadata();
        json["packages"][4]["dependencies"] = json!([{"name": "tests", "kind": null}]);
        let err = Metadata::parse(&json).unwrap().publish_order().unwrap_err();
        assert_eq!(err.to_string(), "`core` depends on `tests`, which has publish = false");
    }

    #[test]
    fn cycle_of_normal_dependencies_is_an_error() {
        let mut json = metadata();
        json["packages"][4]["dependencies"] = json!([{"name": "local", "kind": null}]);
        let err = Metadata::parse(&json).unwrap().publish_order().unwrap_err();
        assert!(err.to_string().contains("dependency cycle"), "{err}");
    }

    #[test]
    fn ci_is_recognised() {
        assert!(in_ci(Some("true")) && in_ci(Some("1")) && in_ci(Some("TRUE")));
        assert!(!in_ci(None) && !in_ci(Some("")) && !in_ci(Some("false")) && !in_ci(Some("0")));
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.args(["doc", "--workspace"]).env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(display(&cmd), "RUSTDOCFLAGS='-D warnings' cargo doc --workspace");
    }
}
