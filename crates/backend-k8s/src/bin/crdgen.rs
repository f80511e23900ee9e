//! Print the agentbox CRDs as YAML, or write one file per CRD into a directory.
//!
//! `cargo run -p agentbox-backend-k8s --bin crdgen` prints every CRD (multi-document YAML);
//! `cargo run -p agentbox-backend-k8s --bin crdgen -- deploy/crds` rewrites the committed files.

use agentbox_backend_k8s::crd::{crd_file_name, crd_yaml, crds};

fn main() -> std::io::Result<()> {
    let crds = crds();
    match std::env::args().nth(1) {
        None => {
            let docs: Vec<String> = crds.iter().map(crd_yaml).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for crd in &crds {
                let path = dir.join(crd_file_name(crd));
                std::fs::write(&path, crd_yaml(crd))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
