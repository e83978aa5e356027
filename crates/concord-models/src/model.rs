//! A loaded model with its tokenizer: `run_with_cache` (capture hooks, stop after the deepest
//! block asked for), `splice` (replace one hook's value, return logits and per-token loss) and
//! `forward_logits`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use concord_core::{HookKind, HookName};
use tch::{Device, Kind, Tensor};

use crate::arch::bert::Bert;
use crate::arch::gpt2::Gpt2;
use crate::arch::llama::Llama;
use crate::arch::neox::Neox;
use crate::arch::{AttnCtx, HookCtx, Replacement};
use crate::config::{Architecture, ModelConfig};
use crate::gguf::Gguf;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;
use crate::{Error, Result};

/// How many tokens [`Model::run_with_cache`] runs through the blocks at once on the CPU: about
/// what keeps a block's intermediates in a core's L2 cache (a batch of 16 x 256 tokens runs
/// as 8 slices of 2 sequences, 1.5x faster than in one piece on a 2-core Xeon, f32 or bf16).
const CPU_TILE_TOKENS: i64 = 512;

/// What the model computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    pub fn kind(self) -> Kind {
        match self {
            ComputeDtype::F32 => Kind::Float,
            ComputeDtype::Bf16 => Kind::BFloat16,
        }
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(ComputeDtype::F32),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            _ => Err(Error::InvalidInput {
                reason: format!("unknown compute dtype {s:?} (expected f32 or bf16)"),
            }),
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`; CUDA must be visible to libtorch.
pub fn parse_device(s: &str) -> Result<Device> {
    let unavailable = |reason: &str| Error::Device {
        name: s.to_owned(),
        reason: reason.to_owned(),
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| unavailable("expected cpu, cuda or cuda:N"))?,
                None => return Err(unavailable("expected cpu, cuda or cuda:N")),
            };
            if !tch::Cuda::is_available() {
                return Err(unavailable("libtorch sees no CUDA device"));
            }
            if index >= tch::Cuda::device_count() as usize {
                return Err(unavailable("no such CUDA device"));
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face folder: `config.json`, `*.safetensors`, `tokenizer.json`.
    HfFolder(PathBuf),
    /// One GGUF file (weights, hyper-parameters and tokenizer).
    Gguf(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfFolder(p) | ModelSource::Gguf(p) => p,
        }
    }

    /// The sha256 (hex) of what the model is made of: the GGUF file, or a folder's
    /// `config.json` and `*.safetensors` files (each file's name and digest, in name order).
    /// It names the weights whatever path they were reached by, so a store can tell a resumed
    /// harvest of the same model from one of another model at the same path.
    pub fn sha256(&self) -> Result<String> {
        let digest = |p: &Path| {
            concord_core::fsutil::sha256_file(p).map_err(|e| match e {
                concord_core::Error::Io { path, source } => Error::Io { path, source },
                other => Error::InvalidInput {
                    reason: other.to_string(),
                },
            })
        };
        match self {
            ModelSource::Gguf(p) => digest(p),
            ModelSource::HfFolder(dir) => {
                let mut files = crate::weights::safetensors_files(dir)?;
                files.push(dir.join("config.json"));
                files.sort();
                let mut listing = String::new();
                for p in &files {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default();
                    listing.push_str(&format!("{name}\t{}\n", digest(p)?));
                }
                Ok(concord_core::fsutil::sha256_bytes(listing.as_bytes()))
            }
        }
    }
}

/// How to load a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: ComputeDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: ComputeDtype::F32,
        }
    }
}

/// What callers need to know about a loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub arch: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub vocab: usize,
    pub is_causal: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub cls: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub max_positions: usize,
}

impl ModelInfo {
    /// The width of a hook's activation rows (`d_mlp` for `mlp.hook_post`, else `d_model`).
    pub fn hook_width(&self, hook: HookName) -> usize {
        match hook.kind {
            HookKind::MlpPost => self.d_mlp,
            _ => self.d_model,
        }
    }
}

#[derive(Debug)]
enum Net {
    Llama(Llama),
    Neox(Neox),
    Bert(Bert),
    Gpt2(Gpt2),
}

/// A model ready to run, with its tokenizer.
#[derive(Debug)]
pub struct Model {
    pub info: ModelInfo,
    pub tokenizer: TextTokenizer,
    cfg: ModelConfig,
    net: Net,
    device: Device,
    kind: Kind,
}

/// Output of [`Model::splice`] and [`Model::forward_logits`].
#[derive(Debug)]
pub struct LmOutput {
    /// `(batch, seq, vocab)` f32.
    pub logits: Tensor,
    /// `(batch, seq - 1)` f32: cross-entropy of predicting token `t + 1` at position `t`;
    /// 0 where token `t + 1` is padding.
    pub loss: Tensor,
}

impl Model {
    /// Loads a model from a folder or GGUF file.
    pub fn load(source: &ModelSource, opts: LoadOptions) -> Result<Model> {
        let _guard = tch::no_grad_guard();
        let (cfg, tokenizer, mut weights) = match source {
            ModelSource::HfFolder(dir) => {
                let cfg = ModelConfig::from_hf_json(&dir.join("config.json"))?;
                let tokenizer = TextTokenizer::from_hf_folder(dir)?;
                (cfg, tokenizer, Weights::from_hf_folder(dir)?)
            }
            ModelSource::Gguf(path) => {
                let g = Gguf::open(path)?;
                let cfg = ModelConfig::from_gguf(&g)?;
                let tokenizer = TextTokenizer::from_gguf(&g)?;
                let weights = Weights::from_gguf(&g, &cfg)?;
                (cfg, tokenizer, weights)
            }
        };
        let kind = opts.dtype.kind();
        let device = opts.device;
        let net = match cfg.arch {
            Architecture::Llama => Net::Llama(Llama::load(&cfg, &mut weights, kind, device)?),
            Architecture::GptNeox => Net::Neox(Neox::load(&cfg, &mut weights, kind, device)?),
            Architecture::Bert => Net::Bert(Bert::load(&cfg, &mut weights, kind, device)?),
            Architecture::Gpt2 => Net::Gpt2(Gpt2::load(&cfg, &mut weights, kind, device)?),
        };
        let sp = tokenizer.special;
        let info = ModelInfo {
            arch: cfg.arch,
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            d_mlp: cfg.d_mlp,
            vocab: cfg.vocab,
            is_causal: cfg.arch.is_causal(),
            bos: sp.bos,
            eos: sp.eos,
            cls: sp.cls,
            sep: sp.sep,
            pad: sp.pad,
            max_positions: cfg.max_positions,
        };
        Ok(Model {
            info,
            tokenizer,
            cfg,
            net,
            device,
            kind,
        })
    }

    /// A second handle on the same model: the weights are shared (shallow clones, no copy), the
    /// tokenizer is cloned. A `Model` is `Send` but not `Sync` (libtorch tensors are not), so
    /// each thread that runs batches gets its own replica; forwards only read the weights, so
    /// replicas may run concurrently.
    pub fn replica(&self) -> Model {
        Model {
            info: self.info.clone(),
            tokenizer: self.tokenizer.clone(),
            cfg: self.cfg.clone(),
            net: match &self.net {
                Net::Llama(m) => Net::Llama(m.replica()),
                Net::Neox(m) => Net::Neox(m.replica()),
                Net::Bert(m) => Net::Bert(m.replica()),
                Net::Gpt2(m) => Net::Gpt2(m.replica()),
            },
            device: self.device,
            kind: self.kind,
        }
    }

    /// The hyper-parameters the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The libtorch kind activations are computed (and returned) in.
    pub fn compute_kind(&self) -> Kind {
        self.kind
    }

    /// Checks hook names against the model's depth.
    pub fn check_hooks(&self, hooks: &[HookName]) -> Result<()> {
        if hooks.is_empty() {
            return Err(Error::NoHooks);
        }
        for h in hooks {
            if h.layer >= self.info.n_layers {
                return Err(Error::LayerOutOfRange {
                    hook: h.to_string(),
                    n_layers: self.info.n_layers,
                });
            }
        }
        Ok(())
    }

    /// Checks that windows of `context_len` tokens fit the model: BERT's and GPT-2's positions
    /// are learned embeddings, so they cannot read past their last one (rotary models can, if
    /// unreliably).
    pub fn check_context_len(&self, context_len: usize) -> Result<()> {
        if context_len == 0 {
            return Err(Error::InvalidInput {
                reason: "the context length must be positive".into(),
            });
        }
        if self.cfg.arch.has_learned_positions() && context_len > self.info.max_positions {
            return Err(Error::InvalidInput {
                reason: format!(
                    "a context length of {context_len} exceeds the model's {} positions",
                    self.info.max_positions
                ),
            });
        }
        Ok(())
    }

    /// Moves and checks inputs; returns `(ids, mask)` on the model's device.
    fn inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let bad = |reason: String| Error::InvalidInput { reason };
        let size = input_ids.size();
        if size.len() != 2 || size[1] == 0 {
            return Err(bad(format!(
                "input_ids must be (batch, seq) with seq > 0, got {size:?}"
            )));
        }
        if attention_mask.size() != size {
            return Err(bad(format!(
                "attention_mask has shape {:?}, expected {size:?}",
                attention_mask.size()
            )));
        }
        let ids = input_ids.f_to_kind(Kind::Int64)?;
        let (lo, hi) = (i64::try_from(ids.f_min()?)?, i64::try_from(ids.f_max()?)?);
        if lo < 0 || hi >= self.info.vocab as i64 {
            return Err(bad(format!(
                "token ids must lie in 0..{}, got {lo}..={hi}",
                self.info.vocab
            )));
        }
        if self.cfg.arch.has_learned_positions() && size[1] > self.info.max_positions as i64 {
            return Err(bad(format!(
                "sequence length {} exceeds the model's {} positions",
                size[1], self.info.max_positions
            )));
        }
        Ok((
            ids.f_to_device(self.device)?,
            attention_mask.f_to_device(self.device)?,
        ))
    }

    /// Runs blocks `0..n_blocks`, reporting hook points to `hooks`; returns the residual stream
    /// after the last block run, `(batch, seq, d_model)`.
    fn run(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        n_blocks: usize,
        hooks: &mut HookCtx<'_>,
    ) -> Result<Tensor> {
        let (_, seq) = ids.size2()?;
        let mut attn = AttnCtx::new(mask, self.info.is_causal)?;
        let mut xs = match &self.net {
            Net::Llama(m) => {
                attn = attn.with_rope(
                    seq,
                    m.rotary_dim(),
                    self.cfg.rope_theta,
                    self.kind,
                    self.device,
                )?;
                m.embed(ids)?
            }
            Net::Neox(m) => {
                attn = attn.with_rope(
                    seq,
                    m.rotary_dim(),
                    self.cfg.rope_theta,
                    self.kind,
                    self.device,
                )?;
                m.embed(ids)?
            }
            Net::Bert(m) => m.embed(ids)?,
            Net::Gpt2(m) => m.embed(ids)?,
        };
        for l in 0..n_blocks {
            xs = hooks.point(l, HookKind::ResidPre, xs)?;
            xs = match &self.net {
                Net::Llama(m) => m.block(l, &xs, &attn, hooks)?,
                Net::Neox(m) => m.block(l, &xs, &attn, hooks)?,
                Net::Bert(m) => m.block(l, &xs, &attn, hooks)?,
                Net::Gpt2(m) => m.block(l, &xs, &attn, hooks)?,
            };
            xs = hooks.point(l, HookKind::ResidPost, xs)?;
        }
        // A `resid_pre` of the first block not run is the stream as it stands.
        if n_blocks < self.info.n_layers {
            xs = hooks.point(n_blocks, HookKind::ResidPre, xs)?;
        }
        Ok(xs)
    }

    /// Runs the model on a batch and returns the activations of `hooks`, each `(batch, seq, d)`
    /// in the compute dtype on the model's device (`d` per [`ModelInfo::hook_width`]). Stops
    /// after the deepest block a hook needs; no final norm or unembedding.
    ///
    /// `input_ids`: `(batch, seq)` integer; `attention_mask`: `(batch, seq)`, 1 for tokens and 0
    /// for padding. Causal models expect right padding (other layouts work, more slowly); rows
    /// at padding positions hold values that mean nothing.
    pub fn run_with_cache(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &[HookName],
    ) -> Result<BTreeMap<HookName, Tensor>> {
        self.check_hooks(hooks)?;
        let _guard = tch::no_grad_guard();
        let (ids, mask) = self.inputs(input_ids, attention_mask)?;
        let n_blocks = hooks
            .iter()
            .map(|h| {
                if h.kind == HookKind::ResidPre {
                    h.layer
                } else {
                    h.layer + 1
                }
            })
            .max()
            .unwrap_or(0);
        let (batch, seq) = ids.size2()?;
        // On the CPU, whole blocks run on a few sequences at a time, so that each block's
        // intermediates (the MLP's hidden layer is 3-6x the residual) stay in the cache
        // between the products and the element-wise passes: every op is per sequence, so the
        // values are the same.
        let rows = match self.device {
            Device::Cpu => (CPU_TILE_TOKENS / seq).clamp(1, batch),
            _ => batch,
        };
        let mut parts: BTreeMap<HookName, Vec<Tensor>> = BTreeMap::new();
        for start in (0..batch).step_by(rows as usize) {
            let n = rows.min(batch - start);
            let mut ctx = HookCtx {
                capture: hooks,
                cache: BTreeMap::new(),
                splice: None,
            };
            let _last = self.run(
                &ids.f_narrow(0, start, n)?,
                &mask.f_narrow(0, start, n)?,
                n_blocks,
                &mut ctx,
            )?;
            for (hook, t) in ctx.cache {
                parts.entry(hook).or_default().push(t);
            }
        }
        parts
            .into_iter()
            .map(|(hook, ts)| {
                let t = match ts.len() {
                    1 => ts.into_iter().next().expect("one part"),
                    _ => Tensor::f_cat(&ts, 0)?,
                };
                Ok((hook, t))
            })
            .collect()
    }

    /// Runs a causal LM to the logits with `hook`'s value replaced by `replacement(value)`
    /// (same shape, `(batch, seq, d)`); returns logits and per-token next-token loss.
    pub fn splice(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hook: HookName,
        replacement: Replacement<'_>,
    ) -> Result<LmOutput> {
        self.check_hooks(&[hook])?;
        self.lm_forward(input_ids, attention_mask, Some((hook, replacement)))
    }

    /// Runs a causal LM to the logits (the clean baseline of a splice).
    pub fn forward_logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<LmOutput> {
        self.lm_forward(input_ids, attention_mask, None)
    }

    fn lm_forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        splice: Option<(HookName, Replacement<'_>)>,
    ) -> Result<LmOutput> {
        if !self.info.is_causal {
            return Err(Error::NotCausal {
                arch: self.info.arch.name(),
            });
        }
        let _guard = tch::no_grad_guard();
        let (ids, mask) = self.inputs(input_ids, attention_mask)?;
        let mut ctx = HookCtx {
            capture: &[],
            cache: BTreeMap::new(),
            splice,
        };
        let xs = self.run(&ids, &mask, self.info.n_layers, &mut ctx)?;
        let logits = match &self.net {
            Net::Llama(m) => m.logits(&xs)?,
            Net::Neox(m) => m.logits(&xs)?,
            Net::Gpt2(m) => m.logits(&xs)?,
            Net::Bert(_) => {
                return Err(Error::NotCausal {
                    arch: self.info.arch.name(),
                });
            }
        }
        .f_to_kind(Kind::Float)?;
        let loss = next_token_loss(&logits, &ids, &mask)?;
        Ok(LmOutput { logits, loss })
    }
}

/// Per-token cross-entropy. `logits`: `(batch, seq, vocab)`, `ids`, `mask`: `(batch, seq)`;
/// returns `(batch, seq - 1)`, zero where the target is padding.
fn next_token_loss(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (_, seq, _) = logits.size3()?;
    let logp = logits
        .f_narrow(1, 0, seq - 1)?
        .f_log_softmax(-1, Kind::Float)?;
    let targets = ids.f_narrow(1, 1, seq - 1)?;
    let nll = logp
        .f_gather(-1, &targets.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?
        .f_neg()?;
    let valid = mask.f_narrow(1, 1, seq - 1)?.f_ne(0)?;
    Ok(nll.f_mul(&valid.f_to_kind(Kind::Float)?)?)
}
