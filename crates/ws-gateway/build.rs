//! Embeds the dashboard (`clients/dashboard/dist`, built by `make dashboard`) into the binary, so a
//! gateway serves it at `/` with no CDN and no files beside it. Without a built dashboard the list
//! is empty and `/` says how to build it.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dist = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../clients/dashboard/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut assets =
        String::from("/// The dashboard's files: name, bytes.\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    if let Ok(entries) = std::fs::read_dir(&dist) {
        let mut files: Vec<_> = entries.flatten().filter(|e| e.path().is_file()).collect();
        files.sort_by_key(|e| e.file_name());
        for file in files {
            let name = file.file_name().to_string_lossy().into_owned();
            let path = file.path().canonicalize()?;
            writeln!(assets, "    ({name:?}, include_bytes!({:?})),", path.display().to_string())?;
        }
    }
    assets.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR")?).join("dashboard_assets.rs"), assets)?;
    Ok(())
}
