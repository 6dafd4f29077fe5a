//! Version 2 of a plugin that changes between versions, for the reload tests.

weft_plugin::plugin! {
    /// Says which version answered.
    #[command(name = "greeter.hello", resources = ["greeter"], version = "2.0.0")]
    fn hello(name: String) -> Result<String, String> {
        Ok(format!("hello {name} from v2"))
    }
}
