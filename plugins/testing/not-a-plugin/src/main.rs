//! A valid WebAssembly component of another world (`wasi:cli/command`), which a node must refuse.

fn main() {
    println!("I am a command-line program, not a weft plugin");
}
