//! Templates: named recipes for a box (kernel, language, packages, environment variables,
//! default limits), and the catalogue a factory makes boxes from.
//!
//! A template with packages gets a Python environment of its own, built once and shared by
//! every box of it (see [`crate::python`]); one without packages runs on the managed
//! environment of its profile.

use std::collections::BTreeMap;

use codebox_core::{CodeBoxError, ResourceLimits, Result, TemplateInfo};

use crate::kernelspec::{DENO_KERNEL, LEAN_KERNEL};
use crate::python::PythonProfile;

/// The name of the template boxes are made from when none is named.
pub const DEFAULT_TEMPLATE: &str = "python";

/// A recipe for a box: which kernel runs which language, the packages its Python
/// environment has, environment variables and default limits.
///
/// ```
/// use codebox_core::ResourceLimits;
/// use codebox_local::Template;
///
/// let t = Template::new("stats", "python3", "python")
///     .with_description("Python with the statistics packages")
///     .with_packages(["scipy", "statsmodels"])
///     .with_env("MPLBACKEND", "Agg")
///     .with_limits(ResourceLimits::new().with_memory_bytes(2 << 30));
/// assert_eq!(t.name(), "stats");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Template {
    name: String,
    description: String,
    kernel: String,
    language: String,
    profile: PythonProfile,
    packages: Vec<String>,
    env: BTreeMap<String, String>,
    limits: ResourceLimits,
    builtin: bool,
}

impl Template {
    /// A template named `name` whose boxes run `kernel` in `language`, on the minimal Python
    /// profile, with no packages, variables or limits of its own.
    pub fn new(name: impl Into<String>, kernel: impl Into<String>, language: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            kernel: kernel.into(),
            language: language.into(),
            profile: PythonProfile::Minimal,
            packages: Vec::new(),
            env: BTreeMap::new(),
            limits: ResourceLimits::default(),
            builtin: false,
        }
    }

    /// Say what it is for.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Build its Python environment on this profile (default: [`PythonProfile::Minimal`]).
    pub fn with_profile(mut self, profile: PythonProfile) -> Self {
        self.profile = profile;
        self
    }

    /// Preinstall these packages (pip requirement names, such as `requests` or
    /// `attrs==23.2.0`) in an environment of its own.
    pub fn with_packages<I, S>(mut self, packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.packages.extend(packages.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable in its boxes.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Give its boxes these limits unless a request asks for others.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it is for.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The kernel its boxes run.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// The language its boxes run when an execution names none.
    pub fn language(&self) -> &str {
        &self.language
    }

    /// The Python profile its environment is built on.
    pub fn profile(&self) -> PythonProfile {
        self.profile
    }

    /// The packages preinstalled in its environment.
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// Its environment variables.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Its default limits.
    pub fn limits(&self) -> &ResourceLimits {
        &self.limits
    }

    /// Whether it ships with codebox.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// Whether its kernel is a Python one, whose environment the profile and packages shape.
    pub(crate) fn runs_python(&self) -> bool {
        matches!(self.kernel.as_str(), "python3" | "python" | LEAN_KERNEL)
    }

    /// The built-in templates, the default first.
    pub fn builtins() -> Vec<Template> {
        let builtin = |t: Template| Template { builtin: true, ..t };
        vec![
            // The Python templates run the lean kernel (IPython without ipykernel): a cell's
            // round trip costs a fraction of ipykernel's; ARCHITECTURE.md has the figures.
            builtin(
                Template::new(DEFAULT_TEMPLATE, LEAN_KERNEL, "python")
                    .with_profile(PythonProfile::Data)
                    .with_description("Python with numpy, pandas and matplotlib (the default)"),
            ),
            builtin(
                Template::new("python-ipykernel", "python3", "python")
                    .with_profile(PythonProfile::Data)
                    .with_description("The default's packages under ipykernel: widgets (comms) and the debugger"),
            ),
            builtin(
                Template::new("python-minimal", LEAN_KERNEL, "python")
                    .with_description("Python with no data packages: the leanest environment"),
            ),
            builtin(
                Template::new("bash", LEAN_KERNEL, "bash")
                    .with_description("A box whose code runs in bash (Python is there too)"),
            ),
            builtin(
                Template::new("javascript", DENO_KERNEL, "javascript")
                    .with_description("JavaScript through Deno's Jupyter kernel"),
            ),
            builtin(
                Template::new("typescript", DENO_KERNEL, "typescript")
                    .with_description("TypeScript through Deno's Jupyter kernel"),
            ),
        ]
    }

    /// The built-in template `name`; an unknown name is an `InvalidInput` error naming the
    /// ones that exist.
    pub fn builtin(name: &str) -> Result<Template> {
        TemplateCatalogue::new().get(name).cloned()
    }

    /// Check what a template defined outside codebox (a configuration file) may hold.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(CodeBoxError::invalid(format!("template {:?}: {what}", self.name)));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return bad("a name is 1 to 64 letters, digits, '-', '_' or '.'".to_owned());
        }
        if self.kernel.trim().is_empty() {
            return bad("the kernel is empty".to_owned());
        }
        if self.language.trim().is_empty() {
            return bad("the language is empty".to_owned());
        }
        if !self.packages.is_empty() && !self.runs_python() {
            return bad(format!("packages are installed for Python, and kernel {:?} does not run it", self.kernel));
        }
        for p in &self.packages {
            crate::pip::check_requirement(p)
                .map_err(|e| CodeBoxError::invalid(format!("template {:?}: package {p:?}: {e}", self.name)))?;
        }
        if let Some(k) = self.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return bad(format!("invalid environment variable name {k:?}"));
        }
        crate::factory::sandbox_limits(&crate::Limits::default(), &self.limits)
            .validate()
            .map_err(|e| CodeBoxError::invalid(format!("template {:?}: {e}", self.name)))
    }

    /// How a catalogue lists it.
    pub fn info(&self, ready: bool) -> TemplateInfo {
        let mut info = TemplateInfo::new(&self.name, &self.kernel, &self.language);
        info.description.clone_from(&self.description);
        info.packages.clone_from(&self.packages);
        info.env_keys = self.env.keys().cloned().collect();
        info.limits = self.limits.clone();
        info.builtin = self.builtin;
        info.ready = ready;
        info
    }
}

/// The templates a factory makes boxes from: the built-ins, then those added (a server's
/// configuration file), in order. The first is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateCatalogue {
    templates: Vec<Template>,
}

impl Default for TemplateCatalogue {
    fn default() -> Self {
        Self::new()
    }
}

impl TemplateCatalogue {
    /// The built-in templates.
    pub fn new() -> Self {
        Self { templates: Template::builtins() }
    }

    /// Add `template` after the others, after checking it; one with the name of a template
    /// already there replaces it (a configuration may redefine `python`).
    pub fn add(&mut self, template: Template) -> Result<()> {
        template.validate()?;
        match self.templates.iter_mut().find(|t| t.name == template.name) {
            Some(slot) => *slot = template,
            None => self.templates.push(template),
        }
        Ok(())
    }

    /// The template `name`; an unknown name is an `InvalidInput` error naming the ones that
    /// exist.
    pub fn get(&self, name: &str) -> Result<&Template> {
        self.templates.iter().find(|t| t.name == name).ok_or_else(|| {
            CodeBoxError::invalid(format!("unknown template {name:?}; the templates are: {}", self.names().join(", ")))
        })
    }

    /// The first template for `language`; none for it is an `InvalidInput` error naming the
    /// languages there are.
    pub fn for_language(&self, language: &str) -> Result<&Template> {
        self.templates.iter().find(|t| t.language == language).ok_or_else(|| {
            let mut languages: Vec<&str> = self.templates.iter().map(|t| t.language.as_str()).collect();
            languages.dedup();
            CodeBoxError::invalid(format!(
                "no template runs language {language:?}; the languages are: {}",
                languages.join(", ")
            ))
        })
    }

    /// The default template (the first).
    pub fn default_template(&self) -> &Template {
        &self.templates[0]
    }

    /// Every template, the default first.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The templates' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.templates.iter().map(|t| t.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtins_are_there_and_python_comes_first() {
        let c = TemplateCatalogue::new();
        assert_eq!(c.names(), ["python", "python-ipykernel", "python-minimal", "bash", "javascript", "typescript"]);
        assert_eq!(c.default_template().profile(), PythonProfile::Data);
        assert_eq!(c.get("typescript").unwrap().kernel(), DENO_KERNEL);
        assert_eq!(c.for_language("javascript").unwrap().name(), "javascript");
        assert!(c.templates().iter().all(Template::is_builtin));
    }

    #[test]
    fn an_unknown_template_or_language_names_those_that_exist() {
        let c = TemplateCatalogue::new();
        let err = c.get("ruby").unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("python, python-ipykernel, python-minimal, bash, javascript, typescript"),
            "{err}"
        );
        let err = c.for_language("cobol").unwrap_err().to_string();
        assert!(err.contains("python, bash, javascript, typescript"), "{err}");
    }

    #[test]
    fn a_configured_template_is_checked_and_may_replace_a_builtin() {
        let mut c = TemplateCatalogue::new();
        c.add(Template::new("stats", "python3", "python").with_packages(["attrs"])).unwrap();
        c.add(Template::new("python", "python3", "python").with_description("ours")).unwrap();
        assert_eq!(c.get("python").unwrap().description(), "ours");
        assert!(!c.get("python").unwrap().is_builtin());
        assert_eq!(c.names().last(), Some(&"stats"));
        for bad in [
            Template::new("", "python3", "python"),
            Template::new("a b", "python3", "python"),
            Template::new("js", DENO_KERNEL, "javascript").with_packages(["attrs"]),
            Template::new("x", "python3", "python").with_packages(["--index-url=http://evil"]),
            Template::new("x", "python3", "python").with_env("A=B", "c"),
            Template::new("x", "python3", "python").with_limits(ResourceLimits::new().with_cpus(-1.0)),
        ] {
            let err = c.add(bad.clone()).unwrap_err();
            assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{bad:?}: {err}");
        }
    }

    #[test]
    fn info_lists_the_variable_names_but_not_their_values() {
        let t = Template::new("x", "python3", "python").with_env("TOKEN", "secret");
        let info = t.info(true);
        assert_eq!(info.env_keys, ["TOKEN"]);
        assert!(!format!("{info:?}").contains("secret"));
        assert!(info.ready);
    }
}
