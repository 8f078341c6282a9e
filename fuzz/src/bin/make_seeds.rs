//! Writes the seed corpus of every target into `fuzz/seeds/<target>/` from
//! `portcullis::fuzzing::seeds::all()`. Run from `fuzz/`: `cargo run --bin make_seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for seed in portcullis::fuzzing::seeds::all() {
        let dir = root.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(seed.name), &seed.data)?;
        println!("{}/{} ({} bytes)", seed.target, seed.name, seed.data.len());
    }
    Ok(())
}
