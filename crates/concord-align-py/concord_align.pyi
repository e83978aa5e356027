"""Type stubs of `concord_align` (the module is compiled from Rust; see src/lib.rs)."""

from os import PathLike
from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Matrix = npt.ArrayLike
_Path = Union[str, "PathLike[str]"]

class Matching:
    """An exact maximum-weight matching of two dictionaries on cosine similarity."""

    rows: npt.NDArray[np.int64]
    """Matched features of `a`, ascending, `(min(n_a, n_b),)`."""
    cols: npt.NDArray[np.int64]
    """The feature of `b` matched to each of `rows`, `(min(n_a, n_b),)`."""
    cosines: npt.NDArray[np.float32]
    """The cosine of each matched pair, `(min(n_a, n_b),)`."""
    objective: float
    """The sum of the matched cosines."""
    mean_cos: float
    """`objective / min(n_a, n_b)`."""
    optimal: bool
    """Whether the matching is proven optimal over all pairs."""
    method: str
    """`"dense"` or `"sparse"`."""
    mmcs: Tuple[float, float]
    """MMCS `(a_to_b, b_to_a)`."""
    certificate: dict[str, Any]
    """`primal`, `dual`, `gap_bound`, `max_violation`, `rounds`, `candidate_edges`,
    `priced_rows`, `priced_cols`."""
    def __len__(self) -> int: ...

def mmcs(a: _Matrix, b: _Matrix) -> Tuple[float, float]:
    """Mean max cosine similarity of `a` `(n_a, d)` and `b` `(n_b, d)`: `(a_to_b, b_to_a)`."""

def match(a: _Matrix, b: _Matrix) -> Matching:
    """The exact maximum-weight one-to-one matching of `a` `(n_a, d)` and `b` `(n_b, d)` on
    cosine similarity, with its optimality certificate."""

def correlate(codes_a: Any, codes_b: Any) -> dict[str, Any]:
    """Centred Pearson correlation of activations `(tokens, n_a)` and `(tokens, n_b)` (scipy
    sparse or dense), both ways: `a_to_b`, `b_to_a`, `tokens`, `alive_*`, `dead_*`,
    `best_a`/`best_rho_a` `(n_a,)`, `best_b`/`best_rho_b` `(n_b,)`."""

def compare(
    sae_a: _Path, sae_b: _Path, *, null_seeds: int = 0, family_threshold: float = 0.5
) -> dict[str, Any]:
    """`concord align --a sae_a --b sae_b`'s JSON record for two SAEs: SAELens folders,
    sparsify hook folders or dictionary_learning `ae.pt` files."""

def load_sae(path: _Path) -> dict[str, Any]:
    """`cfg`, `W_enc` `(d_in, d_sae)`, `b_enc` `(d_sae,)`, `W_dec` `(d_sae, d_in)`, `b_dec`
    `(d_in,)`, `threshold` `(d_sae,)` or None, as float32 arrays."""

def sae_like_pair(
    n_a: int, n_b: int, d: int, seed: int = 0
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A seeded SAE-like pair of unit-row dictionaries `(n_a, d)`, `(n_b, d)`."""
