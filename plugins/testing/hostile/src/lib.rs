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

    /// Behaves; shows the plugin still serves after a misbehaving call.
    #[command(name = "hostile.ok", resources = ["hostile"], version = "1.0.0")]
    fn ok() -> Result<&'static str, String> {
        Ok("ok")
    }
}
