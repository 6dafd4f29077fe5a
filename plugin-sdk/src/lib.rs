//! Write weft command plugins in Rust.
//!
//! A plugin is a WebAssembly component (target `wasm32-wasip2`) exporting the `weft:plugin`
//! `command-plugin` world. This crate turns ordinary Rust functions into that world:
//!
//! ```ignore
//! weft_plugin::plugin! {
//!     /// Add two numbers.
//!     #[command(name = "math.add", resources = ["math"], version = "1.0.0")]
//!     fn add(a: f64, b: f64) -> Result<f64, String> {
//!         Ok(a + b)
//!     }
//! }
//! ```
//!
//! Arguments are deserialized with serde from the caller's positional and keyword arguments;
//! a wrong count, an unknown keyword or a value of the wrong type becomes an `invalid-args`
//! error naming the command and the parameter. Results are serialized with serde. Errors
//! returned by a command become `failed` errors (or keep their kind when they are an [`Error`]).
//! A panic becomes a trap; its message is logged through the host first, so the caller sees it.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod args;
mod error;
pub mod log;

pub use error::Error;
pub use serde_json::{json, Value};

/// Bindings generated from the `weft:plugin` WIT package.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "command-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_command_plugin",
        default_bindings_module: "weft_plugin::bindings",
    });
}

/// Call any command of the fabric, routed like a client call.
///
/// `args` must serialize to a JSON array (a tuple or a `Vec`); the result is the command's
/// JSON value.
pub fn call(command: &str, args: impl serde::Serialize, resources: &[&str]) -> Result<Value, Error> {
    call_with(command, args, serde_json::Map::new(), resources)
}

/// Like [`call`], with keyword arguments too.
pub fn call_with(
    command: &str,
    args: impl serde::Serialize,
    kwargs: serde_json::Map<String, Value>,
    resources: &[&str],
) -> Result<Value, Error> {
    let args = serde_json::to_value(args).map_err(|e| Error::InvalidArgs(e.to_string()))?;
    if !args.is_array() {
        return Err(Error::InvalidArgs(format!(
            "arguments for `{command}` must be a list, got {args}"
        )));
    }
    let resources: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
    let reply = bindings::weft::plugin::host::call(
        command,
        &args.to_string(),
        &Value::Object(kwargs).to_string(),
        &resources,
    )
    .map_err(Error::from)?;
    serde_json::from_str(&reply).map_err(|e| Error::Failed(format!("`{command}` returned invalid JSON: {e}")))
}

/// What the [`plugin!`] macro expands to uses these; they are not a stable interface.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::Args;
    pub use crate::bindings::weft::plugin::types::{CallError, CommandSpec};
    pub use crate::bindings::Guest;
    use crate::Error;

    /// Turns what a command function returned into the JSON the host expects.
    pub trait IntoOutcome {
        fn into_outcome(self, command: &str) -> Result<String, CallError>;
    }

    impl<T: serde::Serialize, E: Into<Error>> IntoOutcome for Result<T, E> {
        fn into_outcome(self, command: &str) -> Result<String, CallError> {
            match self {
                Ok(value) => serde_json::to_string(&value)
                    .map_err(|e| CallError::Failed(format!("{command}: result is not JSON-serializable: {e}"))),
                Err(e) => Err(e.into().into()),
            }
        }
    }

    /// Logs a panic's message through the host before the guest traps, so that the caller
    /// receives it with the trap.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::error(format!("panic: {info}"));
            }));
        });
    }

    pub fn unknown_command(command: &str) -> CallError {
        CallError::NotFound(format!("this plugin has no command `{command}`"))
    }
}

/// Declares the commands of a plugin and exports them as a `weft:plugin` component.
///
/// Each command is a function preceded by its doc comment and a `#[command(...)]` line with,
/// in this order, `name` (the fabric name), `resources` (resource tags) and `version`
/// (semantic version). Parameters are any `serde::Deserialize` types (`Option<T>` parameters
/// may be omitted by the caller); the return type is `Result<T, E>` with `T: Serialize` and
/// `E: Into<weft_plugin::Error>` (`String` and `&str` included).
#[macro_export]
macro_rules! plugin {
    ($(
        $(#[doc = $doc:literal])*
        #[command(name = $name:literal, resources = [$($res:literal),* $(,)?], version = $version:literal $(,)?)]
        fn $func:ident ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty $body:block
    )*) => {
        $(
            $(#[doc = $doc])*
            fn $func($($arg: $ty),*) -> $ret $body
        )*

        struct __WeftPlugin;

        impl $crate::__private::Guest for __WeftPlugin {
            fn describe() -> ::std::vec::Vec<$crate::__private::CommandSpec> {
                ::std::vec![$(
                    $crate::__private::CommandSpec {
                        name: ::std::string::String::from($name),
                        resources: ::std::vec![$(::std::string::String::from($res)),*],
                        version: ::std::string::String::from($version),
                        description: [$($doc),*]
                            .iter()
                            .map(|line: &&str| line.trim())
                            .collect::<::std::vec::Vec<_>>()
                            .join(" "),
                        params: ::std::vec![$(::std::string::String::from(stringify!($arg))),*],
                    }
                ),*]
            }

            fn invoke(
                command: ::std::string::String,
                args_json: ::std::string::String,
                kwargs_json: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__private::CallError> {
                $crate::__private::install_panic_hook();
                match command.as_str() {
                    $(
                        $name => {
                            #[allow(unused_mut)]
                            let mut args = $crate::__private::Args::parse($name, &args_json, &kwargs_json)?;
                            $(let $arg: $ty = args.take(stringify!($arg))?;)*
                            args.finish()?;
                            $crate::__private::IntoOutcome::into_outcome($func($($arg),*), $name)
                        }
                    )*
                    other => ::std::result::Result::Err($crate::__private::unknown_command(other)),
                }
            }
        }

        $crate::bindings::__export_command_plugin!(__WeftPlugin with_types_in $crate::bindings);
    };
}
