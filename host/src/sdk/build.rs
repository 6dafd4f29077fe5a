//! `weft plugin build`: a plugin's source into a component, with the language's own toolchain.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    detect, io, Lang, SdkError, COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, JS_SDK, PYTHON_SDK, RUST_TARGET, WIT,
    WORLD,
};

/// A component a build produced.
#[derive(Debug)]
pub struct Built {
    pub name: String,
    pub lang: Lang,
    /// The component's bytes.
    pub component: Vec<u8>,
}

/// Builds the plugin in `dir` into a component. Tools' own output goes to standard error.
pub fn build(dir: &Path) -> Result<Built, SdkError> {
    let (name, lang) = detect(dir)?;
    let work = tempfile::tempdir().map_err(io("creating a build directory in", &std::env::temp_dir()))?;
    let (name, path) = match lang {
        Lang::Rust => build_rust(dir)?,
        Lang::Python => (name.clone(), build_python(dir, &name, work.path())?),
        Lang::Js => (name.clone(), build_js(dir, &name, work.path())?),
    };
    let component = std::fs::read(&path).map_err(io("reading", &path))?;
    Ok(Built { name, lang, component })
}

/// Writes `bytes` to `to` through a hidden file beside it and a rename, so a watched plugin
/// directory never sees a partial file.
pub fn place(bytes: &[u8], to: &Path) -> Result<(), SdkError> {
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{file_name}.partial"));
    std::fs::write(&staging, bytes).map_err(io("writing", &staging))?;
    std::fs::rename(&staging, to).map_err(io("renaming into", to))
}

/// Runs a tool to completion with its output on standard error; a missing tool is named with
/// the command that installs it.
fn run(tool: &'static str, lang: Lang, install: &str, command: &mut Command) -> Result<(), SdkError> {
    tracing::debug!(?command, "running");
    let status = command
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| missing_or_io(e, tool, lang, install))?;
    if status.success() {
        Ok(())
    } else {
        Err(SdkError::ToolFailed {
            tool,
            code: status.code().map_or_else(|| "by a signal".into(), |c| c.to_string()),
        })
    }
}

fn missing_or_io(e: std::io::Error, tool: &'static str, lang: Lang, install: &str) -> SdkError {
    if e.kind() == std::io::ErrorKind::NotFound {
        SdkError::MissingTool {
            tool,
            lang,
            install: install.to_string(),
        }
    } else {
        SdkError::Io {
            what: "running",
            path: PathBuf::from(tool),
            source: e,
        }
    }
}

/// Warns when a tool's `--version` is not the pinned release (builds still go on).
fn check_version(tool: &'static str, lang: Lang, install: &str, pinned: &str) -> Result<(), SdkError> {
    let output = Command::new(tool)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .map_err(|e| missing_or_io(e, tool, lang, install))?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !version.contains(pinned) {
        tracing::warn!(tool, found = %version.trim(), pinned, "not the release weft is tested with: {install}");
    }
    Ok(())
}

fn write(path: &Path, contents: &str) -> Result<(), SdkError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    std::fs::write(path, contents).map_err(io("writing", path))
}

fn build_rust(dir: &Path) -> Result<(String, PathBuf), SdkError> {
    let install = format!("rustup target add {RUST_TARGET}");
    if let Ok(output) = Command::new("rustup").args(["target", "list", "--installed"]).output() {
        let installed = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && !installed.lines().any(|l| l.trim() == RUST_TARGET) {
            return Err(SdkError::MissingTool {
                tool: "the wasm32-wasip2 target",
                lang: Lang::Rust,
                install,
            });
        }
    }
    let manifest = dir.join("Cargo.toml");
    let output = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            RUST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            missing_or_io(
                e,
                "cargo",
                Lang::Rust,
                "https://rustup.rs, then rustup target add wasm32-wasip2",
            )
        })?;
    if !output.status.success() {
        return Err(SdkError::ToolFailed {
            tool: "cargo",
            code: output
                .status
                .code()
                .map_or_else(|| "by a signal".into(), |c| c.to_string()),
        });
    }
    // The last cdylib artifact that is a `.wasm` file is the component.
    let mut found = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        let wasm = message["filenames"]
            .as_array()
            .and_then(|files| files.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")));
        if let (true, Some(wasm), Some(name)) = (is_cdylib, wasm, message["target"]["name"].as_str()) {
            found = Some((name.replace('-', "_"), PathBuf::from(wasm)));
        }
    }
    found.ok_or_else(|| SdkError::NoArtifact(format!("{} has no `cdylib` library", manifest.display())))
}

fn build_python(dir: &Path, name: &str, work: &Path) -> Result<PathBuf, SdkError> {
    let install = format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}");
    check_version("componentize-py", Lang::Python, &install, COMPONENTIZE_PY_VERSION)?;
    write(&work.join("wit/plugin.wit"), WIT)?;
    write(&work.join("sdk/weft_plugin.py"), PYTHON_SDK)?;
    // The entry module loads the author's module, which registers its commands, and exports the
    // SDK's implementation of the contract.
    write(
        &work.join("sdk/weft_entry.py"),
        &format!("import {name}  # noqa: F401\nfrom weft_plugin import WitWorld  # noqa: F401\n"),
    )?;
    let out = work.join(format!("{name}.wasm"));
    run(
        "componentize-py",
        Lang::Python,
        &install,
        Command::new("componentize-py")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(work.join("wit"))
            .args(["-w", WORLD, "componentize", "weft_entry", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(work.join("sdk"))
            .arg("-o")
            .arg(&out),
    )?;
    Ok(out)
}

fn build_js(dir: &Path, name: &str, work: &Path) -> Result<PathBuf, SdkError> {
    let install = format!("npm install -g @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}");
    check_version("componentize-js", Lang::Js, &install, COMPONENTIZE_JS_VERSION)?;
    let src = work.join("src");
    copy_sources(dir, &src)?;
    write(&work.join("wit/plugin.wit"), WIT)?;
    write(&src.join("weft.js"), JS_SDK)?;
    // The entry hands the host's imports to the SDK (componentize-js resolves WIT imports in the
    // entry module only), loads the author's module, which registers its commands, and exports
    // the contract's functions.
    let entry = format!(
        "import * as host from \"{}\";\nimport {{ bindHost, describe, invoke }} from \"./weft.js\";\nimport \"./{name}.js\";\nbindHost(host);\nexport {{ describe, invoke }};\n",
        host_import()
    );
    write(&src.join("weft-entry.js"), &entry)?;
    let out = work.join(format!("{name}.wasm"));
    run(
        "componentize-js",
        Lang::Js,
        &install,
        Command::new("componentize-js")
            .current_dir(&src)
            .args([
                "weft-entry.js",
                "-w",
                "../wit",
                "-n",
                WORLD,
                "-d",
                "http",
                "fetch-event",
                "-o",
            ])
            .arg(&out),
    )?;
    Ok(out)
}

/// The module name of the host interface in JavaScript: `weft:plugin/host@VERSION`.
fn host_import() -> String {
    let package = WIT
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim())
        .unwrap_or("weft:plugin");
    match package.split_once('@') {
        Some((name, version)) => format!("{name}/host@{version}"),
        None => format!("{package}/host"),
    }
}

/// Copies the JavaScript sources of `from` (`.js`, `.mjs` and `.json` files, outside hidden
/// directories and `node_modules`) into `to`.
fn copy_sources(from: &Path, to: &Path) -> Result<(), SdkError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') || file_name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            copy_sources(&path, &to.join(&file_name))?;
        } else if [".js", ".mjs", ".json"].iter().any(|ext| file_name.ends_with(ext)) {
            std::fs::copy(&path, to.join(&file_name)).map_err(io("copying", &path))?;
        }
    }
    Ok(())
}
