//! Compiles `pause.c` into a static binary that `src/builtin.rs` embeds with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("pause");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&out)
        .arg("pause.c")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` ({e}); install gcc and the static libc (apt-get install build-essential)"));
    assert!(
        status.success(),
        "`{cc} -static -O2 -o {} pause.c` failed; install gcc and the static libc (apt-get install build-essential)",
        out.display()
    );
}
