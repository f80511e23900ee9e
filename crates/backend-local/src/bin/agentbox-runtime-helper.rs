//! Standalone libcontainer helper (the `agentbox` binary embeds the same entry point). Used by this
//! crate's tests; see `runtime::helper` for why libcontainer runs in a separate process.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match args.first() {
        Some(a) if a == agentbox_backend_local::HELPER_ARG => &args[1..],
        _ => &args[..],
    };
    std::process::exit(agentbox_backend_local::helper_main(args));
}
