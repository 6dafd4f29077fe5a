//! The same commands as `flavour-cpu`, answering as "gpu": shows which node served a call.

weft_plugin::plugin! {
    /// Scenario 13: the same command with different tags on different nodes.
    #[command(name = "f", resources = ["gpu"], version = "1.0.0")]
    fn f(x: String) -> Result<String, String> {
        Ok(format!("gpu:{x}"))
    }

    /// Which flavour answered.
    #[command(name = "flavour.name", resources = [], version = "1.0.0")]
    fn name() -> Result<&'static str, String> {
        Ok("gpu")
    }

    /// Sleeps, then says which flavour answered; keeps a node busy.
    #[command(name = "flavour.slow", resources = [], version = "1.0.0")]
    fn slow(millis: u64) -> Result<&'static str, String> {
        std::thread::sleep(std::time::Duration::from_millis(millis));
        Ok("gpu")
    }
}
