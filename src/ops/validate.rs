//! `attrsync validate`: checks the config repository without touching the snapshot or the API.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Globals;
use crate::config::Config;
use crate::plan;

/// Output formats of `validate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidateFormat {
    /// `file:line:column: message` lines.
    Text,
    /// One JSON document, for editors and CI tools.
    Json,
    /// GitHub Actions workflow annotations (`::error file=…,line=…,col=…::message`).
    Github,
}

/// The result of `validate`: what to print and whether the config is valid.
#[derive(Debug)]
pub struct Validation {
    /// The rendering for stdout.
    pub output: String,
    /// Whether the config is valid.
    pub valid: bool,
    /// What is valid but most likely a mistake (see [`crate::config::Config::warnings`]), for
    /// stderr.
    pub warnings: Vec<String>,
}

/// The root GitHub resolves annotation paths against: `GITHUB_WORKSPACE` in a workflow, else
/// the git work tree that holds `dir`, else none (paths stay relative to `dir`).
fn repository_root(dir: &Path) -> Option<PathBuf> {
    if let Some(workspace) = std::env::var_os("GITHUB_WORKSPACE").filter(|w| !w.is_empty()) {
        return Some(PathBuf::from(workspace));
    }
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let top = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !top.trim().is_empty()).then(|| PathBuf::from(top.trim()))
}

/// `file` (relative to the config directory `dir`, or absolute) as a path relative to `root`,
/// the form GitHub needs to place an annotation; as it is when it lies outside `root`.
fn annotation_path(root: Option<&Path>, dir: &Path, file: &Path) -> String {
    let absolute = |path: &Path| {
        // Resolve symlinks where the path exists (a temp dir under /tmp may be a link), and
        // lexically where it does not (a missing users directory).
        path.canonicalize()
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    let Some(root) = root else {
        return file.display().to_string();
    };
    let full = match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The directory resolves even when the file is missing.
        Some(parent) => absolute(&dir.join(parent)).join(file.file_name().unwrap_or_default()),
        None => absolute(&dir.join(file)),
    };
    match full.strip_prefix(absolute(root)) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => file.display().to_string(),
    }
}

/// `attrsync validate`: checks the config repository without touching the snapshot or the API.
pub fn validate(ctx: &Globals, format: ValidateFormat) -> Validation {
    let result = ctx.load_config();
    let diagnostics = match &result {
        Ok(_) => Vec::new(),
        Err(d) => d.0.clone(),
    };
    let output = match format {
        ValidateFormat::Text => match &result {
            Ok(config) => format!(
                "The config is valid: {} in {}, {}.\n",
                plan::plural(config.desired.len(), "user"),
                plan::plural(config.files, "file"),
                plan::plural(config.settings.attributes.len(), "attribute")
            ),
            Err(d) => format!("{d}\n"),
        },
        ValidateFormat::Json => {
            #[derive(Serialize)]
            struct Doc<'a> {
                format_version: u32,
                valid: bool,
                error_count: usize,
                users: Option<usize>,
                files: Option<usize>,
                diagnostics: Vec<DiagnosticDoc<'a>>,
            }
            #[derive(Serialize)]
            struct DiagnosticDoc<'a> {
                severity: &'static str,
                file: String,
                line: Option<u32>,
                column: Option<u32>,
                message: &'a str,
                hint: Option<&'a str>,
            }
            let doc = Doc {
                format_version: 1,
                valid: result.is_ok(),
                error_count: diagnostics.len(),
                users: result.as_ref().ok().map(|c| c.desired.len()),
                files: result.as_ref().ok().map(|c| c.files),
                diagnostics: diagnostics
                    .iter()
                    .map(|d| DiagnosticDoc {
                        severity: "error",
                        file: d.file.display().to_string(),
                        line: d.pos.map(|p| p.line),
                        column: d.pos.map(|p| p.column),
                        message: &d.message,
                        hint: d.hint.as_deref(),
                    })
                    .collect(),
            };
            let mut json = serde_json::to_string_pretty(&doc).expect("validation JSON serialises");
            json.push('\n');
            json
        }
        ValidateFormat::Github => {
            let mut out = String::new();
            let root = repository_root(&ctx.dir);
            for d in &diagnostics {
                let file = annotation_path(root.as_deref(), &ctx.dir, &d.file);
                let mut props = format!("file={}", escape_property(&file));
                if let Some(pos) = d.pos {
                    props.push_str(&format!(",line={},col={}", pos.line, pos.column));
                }
                let mut message = d.message.clone();
                if let Some(hint) = &d.hint {
                    message.push_str(&format!(" ({hint})"));
                }
                out.push_str(&format!("::error {props}::{}\n", escape_data(&message)));
            }
            if diagnostics.is_empty() {
                out.push_str("The config is valid.\n");
            }
            out
        }
    };
    Validation {
        output,
        valid: result.is_ok(),
        warnings: result.as_ref().map(Config::warnings).unwrap_or_default(),
    }
}

/// Workflow-command escaping (as `@actions/core` does it).
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}
