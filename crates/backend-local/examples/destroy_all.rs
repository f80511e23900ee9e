//! Destroy every slot of a local-backend state dir and remove its bridge/NAT rules.
//!
//! `cargo run -p agentbox-backend-local --example destroy_all -- <state_dir> <bridge> <subnet>`

use agentbox_backend_local::{LocalBackend, LocalBackendConfig};
use agentbox_core::backend::Backend;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: destroy_all <state_dir> <bridge> <subnet>");
    let images = tempfile::tempdir()?;
    let mut cfg = LocalBackendConfig::new(&args[1], agentbox_images::ImageStore::open(images.path())?);
    cfg.bridge_name = args[2].clone();
    cfg.subnet = args[3].clone();
    let b = LocalBackend::new(cfg).await?;
    for s in b.list_slots().await? {
        b.destroy_slot(&s.slot_id).await?;
        println!("destroyed {}", s.slot_id);
    }
    b.remove_host_network().await?;
    Ok(())
}
