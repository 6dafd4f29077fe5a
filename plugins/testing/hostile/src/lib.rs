//! Commands that misbehave on purpose, to show that a node contains them.

weft_plugin::plugin! {
    /// Panics with the given message.
    #[command(name = "hostile.trap", resources = ["hostile"], version = "1.0.0")]
    fn trap(message: String) -> Result<(), String> {
        panic!("{message}");
    }

    /// Never returns.
    #[command(name = "hostile.spin", resources = ["hostile"], version = "1.0.0")]
    fn spin() -> Result<(), String> {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    /// Allocates (and touches) memory without bound.
    #[command(name = "hostile.grow", resources = ["hostile"], version = "1.0.0")]
    fn grow() -> Result<usize, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    /// Calls itself through the host, forever.
    #[command(name = "hostile.recurse", resources = ["hostile"], version = "1.0.0")]
    fn recurse(depth: u64) -> Result<serde_json::Value, weft_plugin::Error> {
        weft_plugin::call("hostile.recurse", (depth + 1,), &[])
    }

    /// Recurses without bound on its own stack.
    #[command(name = "hostile.overflow", resources = ["hostile"], version = "1.0.0")]
    fn overflow(depth: u64) -> Result<u64, String> {
        Ok(deepen(std::hint::black_box(depth)))
    }

    /// Reads a file of the host (only a granted directory is visible).
    #[command(name = "hostile.read_file", resources = ["hostile"], version = "1.0.0")]
    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))
    }

    /// Lists a directory (only a granted directory is visible).
    #[command(name = "hostile.list_dir", resources = ["hostile"], version = "1.0.0")]
    fn list_dir(path: String) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(&path).map_err(|e| format!("listing {path}: {e}"))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Reads an environment variable (only granted ones are set).
    #[command(name = "hostile.env", resources = ["hostile"], version = "1.0.0")]
    fn env(name: String) -> Result<Option<String>, String> {
        Ok(std::env::var(&name).ok())
    }

    /// Every environment variable the plugin can see.
    #[command(name = "hostile.env_all", resources = ["hostile"], version = "1.0.0")]
    fn env_all() -> Result<Vec<String>, String> {
        Ok(std::env::vars().map(|(k, _)| k).collect())
    }

    /// Opens a TCP connection.
    #[command(name = "hostile.connect", resources = ["hostile"], version = "1.0.0")]
    fn connect(address: String) -> Result<String, String> {
        std::net::TcpStream::connect(&address)
            .map(|_| "connected".to_string())
            .map_err(|e| format!("connecting to {address}: {e}"))
    }

    /// Answers with a string of `mib` MiB.
    #[command(name = "hostile.huge", resources = ["hostile"], version = "1.0.0")]
    fn huge(mib: usize) -> Result<String, String> {
        Ok("x".repeat(mib << 20))
    }

    /// Behaves; shows the plugin still serves after a misbehaving call.
    #[command(name = "hostile.ok", resources = ["hostile"], version = "1.0.0")]
    fn ok() -> Result<&'static str, String> {
        Ok("ok")
    }
}

/// One stack frame more than the last, forever.
#[allow(unconditional_recursion)]
fn deepen(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    deepen(depth + 1) + frame[0]
}
