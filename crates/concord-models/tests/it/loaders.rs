//! Loaders: name resolution, and clear errors on missing, truncated or corrupt files.

use concord_models::gguf::Gguf;
use concord_models::{Error, LoadOptions, Model, ModelSource, resolve};
use tch::Tensor;

use crate::support::{data_dir, goldens, model, tmp_file};

#[test]
fn resolves_builtin_names_paths_and_refuses_unknown_ones() {
    let smol = resolve("smollm2-135m", &data_dir()).unwrap();
    assert!(
        matches!(smol, ModelSource::Gguf(ref p) if p.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    assert!(matches!(
        resolve("minilm-l6", &data_dir()).unwrap(),
        ModelSource::HfFolder(_)
    ));
    let folder = goldens().join("tiny-neox");
    assert_eq!(
        resolve(folder.to_str().unwrap(), &data_dir()).unwrap(),
        ModelSource::HfFolder(folder)
    );
    let err = resolve("no-such-model", &data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-model") && err.contains("built-in"),
        "{err}"
    );
}

#[test]
fn smollm2_gguf_header_reads_as_llama() {
    let path = match resolve("smollm2-135m", &data_dir()).unwrap() {
        ModelSource::Gguf(p) => p,
        other => panic!("{other:?}"),
    };
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.tensors["blk.0.attn_k.weight"].shape, vec![192, 576]);
    let norm = g.dequantize("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.size(), vec![576]);
    let k = g.dequantize("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.size(), vec![192, 576]);
}

#[test]
fn truncated_and_corrupt_gguf_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = match resolve("smollm2-135m", &data_dir()).unwrap() {
        ModelSource::Gguf(p) => p,
        other => panic!("{other:?}"),
    };
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the metadata, and inside the tensor data.
    for (name, len) in [("meta.gguf", 100_000), ("data.gguf", 2_000_000)] {
        let cut = tmp_file(tmp.path(), name, &bytes[..len]);
        let err = Model::load(&ModelSource::Gguf(cut.clone()), LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Gguf { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains("truncated"), "{msg}");
    }
    let junk = tmp_file(tmp.path(), "junk.gguf", b"NOPE0000");
    let err = Gguf::open(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.gguf") && err.contains("magic"), "{err}");
}

#[test]
fn missing_and_corrupt_folder_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = goldens().join("tiny-neox");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let source = ModelSource::HfFolder(tmp.path().to_owned());
    let err = Model::load(&source, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("safetensors"), "{err}");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    tmp_file(
        tmp.path(),
        "model.safetensors",
        &weights[..weights.len() / 2],
    );
    let err = Model::load(&source, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("invalid safetensors"),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let err = Model::load(&source, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn gpt2_weights_load_with_or_without_the_transformer_prefix() {
    // `GPT2Model` checkpoints name `wte.weight`, `h.0.attn.c_attn.weight`, ...; the golden,
    // saved from `GPT2LMHeadModel`, puts `transformer.` in front of each.
    let tmp = tempfile::tempdir().unwrap();
    let src = goldens().join("tiny-gpt2");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let bare = k.strip_prefix("transformer.").expect("prefixed golden");
            (bare.to_owned(), t)
        })
        .collect();
    Tensor::write_safetensors(&renamed, tmp.path().join("model.safetensors")).unwrap();
    let bare = Model::load(
        &ModelSource::HfFolder(tmp.path().to_owned()),
        LoadOptions::default(),
    )
    .unwrap();
    let prefixed = model("tiny-gpt2");
    let ids = Tensor::from_slice(&[0i64, 40, 41, 42, 43]).reshape([1, 5]);
    let mask = ids.ones_like();
    let a = bare.forward_logits(&ids, &mask).unwrap();
    let b = prefixed.forward_logits(&ids, &mask).unwrap();
    assert!(a.logits.equal(&b.logits));
}

/// The SmolLM2 GGUF's bytes and the position just after `key` (a metadata key or a tensor
/// name, written as a length-prefixed string).
fn smollm2_after(key: &str) -> (Vec<u8>, usize) {
    let path = match resolve("smollm2-135m", &data_dir()).unwrap() {
        ModelSource::Gguf(p) => p,
        other => panic!("{other:?}"),
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("{key} not found"));
    (bytes, at + needle.len())
}

#[test]
fn gguf_tensor_tables_that_cannot_be_right_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "blk.3.ffn_down.weight";
    // Entry: rank (u32), dims (u64 each), type (u32), offset (u64).
    let patched = |what: &str, edit: &dyn Fn(&mut Vec<u8>, usize)| -> String {
        let (mut bytes, at) = smollm2_after(name);
        edit(&mut bytes, at);
        let path = tmp_file(tmp.path(), &format!("{what}.gguf"), &bytes);
        match Model::load(&ModelSource::Gguf(path), LoadOptions::default()) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e.to_string(),
        }
    };
    let err = patched("rank", &|b, at| {
        b[at..at + 4].copy_from_slice(&7u32.to_le_bytes())
    });
    assert!(err.contains("has rank 7; GGUF allows at most 4"), "{err}");
    let err = patched("huge", &|b, at| {
        b[at + 4..at + 12].copy_from_slice(&(1u64 << 61).to_le_bytes())
    });
    assert!(
        err.contains("impossible shape") && err.contains(name),
        "{err}"
    );
    let err = patched("q5", &|b, at| {
        b[at + 20..at + 24].copy_from_slice(&6u32.to_le_bytes())
    });
    assert!(
        err.contains(name) && err.contains("Q5_0 (ggml type 6; supported"),
        "{err}"
    );
}

#[test]
fn gguf_bos_and_eos_tokens_are_special_whatever_their_type() {
    // `<|im_end|>` (id 2, the EOS) marked NORMAL instead of CONTROL: transformers still keeps it
    // whole, because the file names it as the EOS token.
    let (mut bytes, at) = smollm2_after("tokenizer.ggml.token_type");
    // Value type (u32, 9 = array), element type (u32, 5 = i32), count (u64), then the values.
    assert_eq!(bytes[at..at + 8], [9, 0, 0, 0, 5, 0, 0, 0]);
    let eos = at + 16 + 2 * 4;
    assert_eq!(bytes[eos..eos + 4], 3i32.to_le_bytes());
    bytes[eos..eos + 4].copy_from_slice(&1i32.to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp_file(tmp.path(), "eos-normal.gguf", &bytes);
    let tok = concord_models::TextTokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    let ids = tok.encode("hello<|im_end|> world").unwrap().ids;
    assert!(ids.contains(&2), "{ids:?}");
}
