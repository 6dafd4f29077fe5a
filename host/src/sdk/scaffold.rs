//! `weft plugin new`: a ready-to-build plugin in each language.

use std::path::{Path, PathBuf};

use super::{check_name, io, Lang, SdkError};

/// Writes a new plugin named `name` in `language` into the directory `dir` (which must not exist)
/// and returns the files written.
pub fn scaffold(dir: &Path, name: &str, language: Lang) -> Result<Vec<PathBuf>, SdkError> {
    check_name(name)?;
    if dir.exists() {
        return Err(SdkError::Exists(dir.to_path_buf()));
    }
    let files: Vec<(PathBuf, String)> = match language {
        Lang::Rust => {
            let sdk = rust_sdk()?;
            vec![
                (PathBuf::from("Cargo.toml"), cargo_toml(name, &sdk)),
                (PathBuf::from("src/lib.rs"), RUST_LIB.replace("@NAME@", name)),
            ]
        }
        Lang::Python => vec![(
            PathBuf::from(format!("{name}.py")),
            PYTHON_MODULE.replace("@NAME@", name),
        )],
        Lang::Js => vec![(PathBuf::from(format!("{name}.js")), JS_MODULE.replace("@NAME@", name))],
    };
    let mut written = Vec::new();
    for (relative, contents) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&path, contents).map_err(io("writing", &path))?;
        written.push(path);
    }
    Ok(written)
}

/// The Rust SDK crate of the source tree this `weft` was built from.
fn rust_sdk() -> Result<PathBuf, SdkError> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    sdk.canonicalize().map_err(|_| SdkError::NoRustSdk(sdk))
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
weft-plugin = {{ path = "{sdk}" }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# A plugin is a workspace of its own, wherever it is created.
[workspace]
"#,
        sdk = sdk.display()
    )
}

const RUST_LIB: &str = r#"//! The @NAME@ plugin. Build it with `weft plugin build`, then drop the `.wasm` into a node's plugin directory.

weft_plugin::plugin! {
    /// Greet someone, as often as asked.
    #[command(name = "@NAME@.greet", resources = [], version = "1.0.0")]
    fn greet(name: String, times: Option<u32>) -> Result<String, String> {
        let times = times.unwrap_or(1);
        if times == 0 {
            return Err("times must be at least 1".into());
        }
        weft_plugin::log::info(&format!("greeting {name}"));
        Ok(vec![format!("hello {name}"); times as usize].join(", "))
    }
}
"#;

const PYTHON_MODULE: &str = r#""""The @NAME@ plugin. Build it with `weft plugin build`, then drop the `.wasm` into a node's plugin directory."""

from weft_plugin import command, log


@command(resources=[], version="1.0.0")
def greet(name: str, times: int = 1) -> str:
    """Greet someone, as often as asked."""
    if times < 1:
        raise ValueError("times must be at least 1")
    log.info(f"greeting {name}")
    return ", ".join([f"hello {name}"] * times)
"#;

const JS_MODULE: &str = r#"// The @NAME@ plugin. Build it with `weft plugin build`, then drop the `.wasm` into a node's plugin directory.

import { command, log } from "./weft.js";

command("@NAME@.greet", { resources: [], version: "1.0.0", description: "Greet someone, as often as asked." }, (name, times = 1) => {
  if (times < 1) throw new RangeError("times must be at least 1");
  log.info(`greeting ${name}`);
  return Array(times).fill(`hello ${name}`).join(", ");
});
"#;
