//! `concord encode`: an SAE's codes and reconstruction of a hook dataset's rows, written as
//! safetensors, so that other programs (the interop checks against SAELens, sparsify and
//! dictionary_learning; a notebook) see exactly what this project's SAEs compute.

use std::path::PathBuf;

use anyhow::{Result, bail};
use concord_core::{fsutil, sae};
use concord_models::tch::Tensor;
use concord_store::Dataset;
use concord_train::SaeModel;

use crate::eval::{check_widths, load_sae};
use crate::harvest::to_f32_vec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SAE: a SAELens or sparsify folder, or a dictionary_learning `ae.pt` (or the folder
    /// holding it).
    #[arg(long)]
    sae: PathBuf,
    /// The hook's dataset (`STORE/<hook name>`) whose rows are encoded.
    #[arg(long)]
    acts: PathBuf,
    /// The first row encoded (in stored order).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Rows encoded (fewer when the dataset ends first).
    #[arg(long, default_value_t = 256)]
    rows: u64,
    /// The safetensors file to write: `xs (rows, d_in)`, the rows; `codes (rows, d_sae)`;
    /// `recon (rows, d_in)`, the decoded codes (all F32).
    #[arg(long)]
    out: PathBuf,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: &Args) -> Result<()> {
    let ds = Dataset::open(&args.acts)?;
    let sae = load_sae(&args.sae, Some(&ds))?;
    check_widths(&sae, &args.sae, &ds)?;
    let end = ds.rows().min(args.from.saturating_add(args.rows));
    if args.from >= end {
        bail!(
            "--from {} is past the end of {} ({} rows)",
            args.from,
            args.acts.display(),
            ds.rows()
        );
    }
    let xs = ds.read_rows(args.from..end)?.xs;
    let n = (end - args.from) as usize;
    let (d_in, d_sae) = (sae.cfg.d_in, sae.cfg.d_sae);
    let model = SaeModel::from_sae(&sae, concord_models::parse_device(&args.device)?)?;
    let input = Tensor::f_from_slice(&xs)?
        .f_view([n as i64, d_in as i64])?
        .f_to_device(model.w_enc.device())?;
    let codes = model.encode(&input)?;
    let recon = model.decode(&codes)?;
    let (codes, recon) = (to_f32_vec(&codes)?, to_f32_vec(&recon)?);
    let bytes = sae::safetensors_f32(&[
        ("xs", vec![n, d_in], &xs),
        ("codes", vec![n, d_sae], &codes),
        ("recon", vec![n, d_in], &recon),
    ]);
    fsutil::write_bytes_atomic(&args.out, &bytes)?;
    tracing::info!(
        "{n} rows of {} encoded -> {}",
        args.acts.display(),
        args.out.display()
    );
    Ok(())
}
