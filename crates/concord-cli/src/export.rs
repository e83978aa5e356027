//! `concord export`: an SAE written in another package's format (sparsify,
//! dictionary_learning), through `concord_core::interop`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use concord_core::interop::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `sparsify` (TopK SAEs) or `dictionary-learning` (ReLU, TopK, BatchTopK, JumpReLU).
    #[arg(long)]
    format: Format,
    /// The SAE: a folder `train` wrote, or any SAE `eval` reads.
    #[arg(long)]
    sae: PathBuf,
    /// The folder to write (replaced atomically): for sparsify `cfg.json` and
    /// `sae.safetensors`, which `sparsify.Sae.load_from_disk(OUT)` loads; for
    /// dictionary-learning `ae.pt` and `config.json`, which the class that `config.json` names
    /// loads with `from_pretrained(OUT/ae.pt)`.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let resolved = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    if resolved(&args.out) == resolved(&args.sae) {
        bail!(
            "--out is the SAE itself ({}): the export would replace it",
            args.sae.display()
        );
    }
    let sae = concord_train::load_sae(&args.sae, "", "")?;
    interop::export(&sae, &args.sae, args.format, &args.out)?;
    tracing::info!(
        "{} exported as {} -> {}",
        args.sae.display(),
        args.format,
        args.out.display()
    );
    Ok(())
}
