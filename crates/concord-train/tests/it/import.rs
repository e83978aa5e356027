//! Imports: dictionary_learning `ae.pt` and minimal SAELens folders, and round trips.

use concord_core::SaeWeights;
use concord_core::sae::{Sae, WEIGHTS_FILE};
use concord_train::{SaeModel, load_dictionary_learning, load_saelens};
use tch::{Device, Tensor};

use crate::util::{reference_dir, tempdir};

#[test]
fn dictionary_learning_ae_pt_encodes_like_pytorch_and_round_trips() {
    let dir = reference_dir();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let sae = load_dictionary_learning(
        &dir.join("ae.pt"),
        "blocks.0.hook_mlp_out",
        "pythia-70m-deduped",
    )
    .unwrap();
    assert_eq!(
        (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.architecture.as_str()),
        (4, 8, "standard")
    );
    let floats = |key: &str| -> Vec<f32> {
        reference["ae_pt"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let model = SaeModel::from_sae(&sae, Device::Cpu).unwrap();
    let xs = Tensor::from_slice(&floats("x")).view([1, 4]);
    let cs = model.encode(&xs).unwrap();
    let got: Vec<f32> = Vec::try_from(&cs.view([-1])).unwrap();
    let x_hat: Vec<f32> = Vec::try_from(&model.decode(&cs).unwrap().view([-1])).unwrap();
    for (g, w) in got
        .iter()
        .zip(floats("features"))
        .chain(x_hat.iter().zip(floats("x_hat")))
    {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
    }
    let out = tempdir();
    sae.save(out.path(), &[]).unwrap();
    assert_eq!(load_saelens(out.path()).unwrap(), sae);
}

/// dictionary_learning writes `torch.save(ae.state_dict())`: an `OrderedDict` of parameters
/// with `_metadata`, which libtorch's own unpickler reads as `None`.
#[test]
fn ordered_dict_ae_pt_loads_like_the_plain_dict() {
    let dir = reference_dir();
    let plain = load_dictionary_learning(&dir.join("ae.pt"), "h", "m").unwrap();
    let ordered = load_dictionary_learning(&dir.join("ae_state_dict.pt"), "h", "m").unwrap();
    assert_eq!(ordered.weights, plain.weights);
    assert_eq!(ordered.cfg.d_sae, 8);
}

#[test]
fn minimal_saelens_folder_loads_and_keeps_unknown_keys() {
    let tmp = tempdir();
    let w = SaeWeights {
        d_in: 2,
        d_sae: 3,
        w_enc: vec![1.0, 0.0, 0.5, 0.0, 1.0, 0.5],
        b_enc: vec![0.0, 0.0, -1.0],
        w_dec: vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8],
        b_dec: vec![0.1, 0.2],
        threshold: None,
    };
    std::fs::write(
        tmp.path().join("cfg.json"),
        r#"{"d_in": 2, "d_sae": 3, "architecture": "standard", "hook_name": "blocks.4.hook_resid_post",
            "model_name": "gpt2", "normalize_activations": "none", "dtype": "float32"}"#,
    )
    .unwrap();
    std::fs::write(tmp.path().join(WEIGHTS_FILE), w.to_safetensors()).unwrap();
    let sae = load_saelens(tmp.path()).unwrap();
    assert_eq!(sae.weights, w);
    assert_eq!(sae.cfg.extra["normalize_activations"], "none");
    let model = SaeModel::from_sae(&sae, Device::Cpu).unwrap();
    assert!(model.apply_b_dec_to_input);
    let out = tempdir();
    sae.save(out.path(), &[]).unwrap();
    assert_eq!(Sae::load(out.path()).unwrap(), sae);
}

/// SAELens before v6: TopK as `standard` with `activation_fn_str` and `activation_fn_kwargs`.
#[test]
fn legacy_saelens_topk_cfg_is_topk_and_unknown_activations_are_errors() {
    let w = SaeWeights {
        d_in: 2,
        d_sae: 3,
        w_enc: vec![1.0, 0.0, 0.5, 0.0, 1.0, 0.5],
        b_enc: vec![0.0, 0.0, 0.0],
        w_dec: vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8],
        b_dec: vec![0.0, 0.0],
        threshold: None,
    };
    let folder = |extra: &str| {
        let tmp = tempdir();
        std::fs::write(
            tmp.path().join("cfg.json"),
            format!(
                r#"{{"d_in": 2, "d_sae": 3, "architecture": "standard", "hook_name": "h",
                    "model_name": "m"{extra}}}"#
            ),
        )
        .unwrap();
        std::fs::write(tmp.path().join(WEIGHTS_FILE), w.to_safetensors()).unwrap();
        tmp
    };
    let xs = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
    let l0 = |extra: &str| -> Result<i64, String> {
        let dir = folder(extra);
        let model = SaeModel::from_sae(&load_saelens(dir.path()).unwrap(), Device::Cpu)
            .map_err(|e| e.to_string())?;
        Ok(model
            .encode(&xs)
            .unwrap()
            .gt(0.0)
            .sum(tch::Kind::Int64)
            .int64_value(&[]))
    };
    assert_eq!(l0("").unwrap(), 3);
    assert_eq!(l0(r#", "activation_fn_str": "relu""#).unwrap(), 3);
    let topk = r#", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 1}"#;
    assert_eq!(l0(topk).unwrap(), 1);
    let err = l0(r#", "activation_fn_str": "topk""#).unwrap_err();
    assert!(err.contains("without k"), "{err}");
    let err = l0(r#", "activation_fn_str": "tanh""#).unwrap_err();
    assert!(err.contains("activation_fn_str \"tanh\""), "{err}");
}

#[test]
fn broken_ae_pt_is_an_error_naming_the_file() {
    let tmp = tempdir();
    let path = tmp.path().join("ae.pt");
    std::fs::write(&path, b"not a zip").unwrap();
    let err = load_dictionary_learning(&path, "h", "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ae.pt"), "{err}");
}

/// BatchTopK folders written before SAELens 6's layout say `batchtopk`; those written now say
/// `jumprelu`: both encode alike (the threshold in every feature).
#[test]
fn batchtopk_folders_old_and_new_give_identical_codes() {
    let w = SaeWeights {
        d_in: 2,
        d_sae: 3,
        w_enc: vec![1.0, -0.5, 0.5, 0.25, 1.0, 0.5],
        b_enc: vec![0.1, 0.0, -0.1],
        w_dec: vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8],
        b_dec: vec![0.2, -0.1],
        threshold: Some(vec![0.3; 3]),
    };
    let xs = Tensor::from_slice(&[1.0f32, 2.0, -0.5, 0.7, 0.3, 0.1]).view([3, 2]);
    let codes = |arch: &str| -> Vec<f32> {
        let tmp = tempdir();
        std::fs::write(
            tmp.path().join("cfg.json"),
            format!(
                r#"{{"d_in": 2, "d_sae": 3, "architecture": "{arch}", "k": 1,
                    "concord_architecture": "batchtopk", "hook_name": "h", "model_name": "m"}}"#
            ),
        )
        .unwrap();
        std::fs::write(tmp.path().join(WEIGHTS_FILE), w.to_safetensors()).unwrap();
        let sae = concord_train::load_sae(tmp.path(), "", "").unwrap();
        let cs = SaeModel::from_sae(&sae, Device::Cpu)
            .unwrap()
            .encode(&xs)
            .unwrap();
        Vec::try_from(&cs.view([-1])).unwrap()
    };
    let old = codes("batchtopk");
    assert_eq!(old, codes("jumprelu"));
    assert!(
        old.iter().any(|&c| c > 0.0) && old.contains(&0.0),
        "{old:?}"
    );
}
