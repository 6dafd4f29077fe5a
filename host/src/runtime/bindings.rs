//! Host bindings of the `weft:plugin` world (see `wit/`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "command-plugin",
    imports: {
        "weft:plugin/host.call": async,
    },
    exports: { default: async },
});
