//! Hook point names in TransformerLens style (`blocks.{L}.hook_mlp_out`, ...).
//!
//! A [`HookName`] is a block index and a [`HookKind`]; it prints and parses as the string the
//! field uses, and that string is also the folder name of the hook's dataset in a store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a hook point captures inside one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// The input of the block (the residual stream before it).
    ResidPre,
    /// The output of the block (the residual stream after it).
    ResidPost,
    /// The MLP's output, before it is added to the residual stream.
    MlpOut,
    /// The attention's output projection, before it is added to the residual stream.
    AttnOut,
    /// The MLP's hidden activation (after the non-linearity).
    MlpPost,
}

impl HookKind {
    /// Every kind, in the order a forward pass meets them (with `ResidPost` last).
    pub const ALL: [HookKind; 5] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::MlpPost,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The suffix after `blocks.{L}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::ResidPost => "hook_resid_post",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::MlpPost => "mlp.hook_post",
        }
    }

    fn from_suffix(s: &str) -> Option<HookKind> {
        HookKind::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

/// A hook point: `blocks.{layer}.{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookName {
    pub layer: usize,
    pub kind: HookKind,
}

impl HookName {
    pub fn new(layer: usize, kind: HookKind) -> Self {
        HookName { layer, kind }
    }

    /// Parses a comma-separated list such as `blocks.3.hook_mlp_out,blocks.5.hook_resid_post`.
    pub fn parse_list(s: &str) -> Result<Vec<HookName>> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.suffix())
    }
}

impl FromStr for HookName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidHook {
            name: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("blocks.")
            .ok_or_else(|| invalid("expected `blocks.{L}.<hook>`"))?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| invalid("expected `blocks.{L}.<hook>`"))?;
        let layer = layer
            .parse::<usize>()
            .map_err(|_| invalid("the layer is not a number"))?;
        let kind = HookKind::from_suffix(suffix).ok_or_else(|| {
            invalid(
                "unknown hook; known: hook_resid_pre, hook_resid_post, hook_mlp_out, \
                 hook_attn_out, mlp.hook_post",
            )
        })?;
        Ok(HookName { layer, kind })
    }
}

impl Serialize for HookName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HookName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<(usize, HookKind)>) {
        let got = input.parse::<HookName>().ok().map(|h| (h.layer, h.kind));
        assert_eq!(got, expected, "{input}");
        if let Ok(h) = input.parse::<HookName>() {
            assert_eq!(h.to_string(), input);
        }
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        check("blocks.0.hook_resid_pre", Some((0, HookKind::ResidPre)));
        check("blocks.12.hook_resid_post", Some((12, HookKind::ResidPost)));
        check("blocks.3.hook_mlp_out", Some((3, HookKind::MlpOut)));
        check("blocks.5.hook_attn_out", Some((5, HookKind::AttnOut)));
        check("blocks.7.mlp.hook_post", Some((7, HookKind::MlpPost)));
    }

    #[test]
    fn rejects_malformed_names() {
        check("blocks.x.hook_mlp_out", None);
        check("blocks.1.hook_mlp", None);
        check("layers.1.hook_mlp_out", None);
        check("blocks.1", None);
        check("blocks.-1.hook_mlp_out", None);
        let err = "blocks.1.hook_mlp"
            .parse::<HookName>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.1.hook_mlp") && err.contains("unknown hook"),
            "{err}"
        );
    }

    #[test]
    fn parses_lists_and_serde() {
        let hooks = HookName::parse_list("blocks.1.hook_mlp_out, blocks.2.mlp.hook_post").unwrap();
        assert_eq!(hooks.len(), 2);
        let json = serde_json::to_string(&hooks).unwrap();
        assert_eq!(
            json,
            r#"["blocks.1.hook_mlp_out","blocks.2.mlp.hook_post"]"#
        );
        let back: Vec<HookName> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hooks);
    }
}
