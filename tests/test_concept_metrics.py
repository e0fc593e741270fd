"""PCBM head comparison metrics vs hand computations and scipy / numpy references."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from prunelens.lenses.concepts import metrics as M


def sparse_heads(rng, K=40, n=30, p_zero=0.6):
    """Elastic-net-like heads: many exact zeros, a few repeated values, one all-zero row."""
    Wd = rng.normal(size=(K, n)) * (rng.random((K, n)) > p_zero)
    Wp = np.where(rng.random((K, n)) < 0.3, 0.0, Wd + 0.3 * rng.normal(size=(K, n))) * (Wd != 0)
    Wd[:, :3] = np.round(Wd[:, :3])  # extra ties among nonzeros
    Wd[0], Wp[1] = 0.0, 0.0
    return Wd, Wp


def test_topk_ties_zeros_and_negatives():
    W = np.array([[0.5, 0.5, 0.2, -0.9, 0.0], [0, 0, 0, 0, 0], [-1.0, 0, 0.3, 0, 0]])
    np.testing.assert_array_equal(M.topk(W, 3), [[0, 1, 2], [-1, -1, -1], [2, -1, -1]])
    np.testing.assert_array_equal(M.topk(W, 3, by="magnitude"), [[3, 0, 1], [-1, -1, -1], [0, 2, -1]])
    np.testing.assert_array_equal(M.topk(W, 7, by="magnitude")[0], [3, 0, 1, 2, -1, -1, -1])  # k > N: padded
    np.testing.assert_array_equal(M.rank_rows(W)[0], [0, 1, 2, 4, 3])
    np.testing.assert_array_equal(M.rank_rows(W, by="magnitude")[2], [0, 2, 1, 3, 4])
    with pytest.raises(ValueError):
        M.topk(W, 3, by="abs")


def test_topk_jaccard_and_overlap_hand():
    T_d = np.array([[0, 1, 2], [-1, -1, -1], [4, -1, -1], [1, 2, 3]])
    T_p = np.array([[2, 3, -1], [-1, -1, -1], [-1, -1, -1], [3, 1, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(M.topk_jaccard(T_d, T_p), [1 / 4, np.nan, 0.0, 1.0])  # {2} / {0,1,2,3}
        np.testing.assert_array_equal(M.overlap_at_k(T_d, T_p, 3), [1 / 3, 0.0, 0.0, 1.0])


def test_rbo_hand_case():
    # S = [a,b,c,d], T = [b,a,d,e], q = 0.5.
    # X_1 = |{a}∩{b}| = 0, X_2 = |{a,b}∩{b,a}| = 2, X_3 = |{a,b,c}∩{b,a,d}| = 2, X_4 = |{a,b,c,d}∩{b,a,d,e}| = 3;
    # A_d = X_d/d = 0, 1, 2/3, 3/4.
    # RBO@4 = 0.5·(0 + 0.5·1 + 0.25·2/3 + 0.125·3/4) = 0.5·(48 + 16 + 9)/96 = 73/192.
    # RBO_ext@4 = (3/4)·0.5⁴ + (0.5/0.5)·(0.5·0 + 0.25·1 + 0.125·2/3 + 0.0625·3/4) = 3/64 + 73/192 = 82/192.
    trunc, ext = M.rbo(list("abcd"), list("bade"), q=0.5)
    assert trunc == pytest.approx(73 / 192) and ext == pytest.approx(82 / 192)
    trunc2, ext2 = M.rbo(list("abcd"), list("bade"), q=0.5, depth=2)  # X = 0, 2 → 0.5·(0 + 0.5) ; + 1·0.25
    assert (trunc2, ext2) == pytest.approx((0.25, 0.5))
    for bad in ({"q": 0.0}, {"q": 1.0}, {"depth": 5}, {"depth": 0}):
        with pytest.raises(ValueError):
            M.rbo(list("abcd"), list("bade"), **bad)
    with pytest.raises(ValueError):
        M.rbo(list("aab"), list("abc"))


@pytest.mark.parametrize("q", [0.3, 0.9])
def test_rbo_identical_lists_and_extrapolation_identity(q):
    rng = np.random.default_rng(0)
    k = 12
    S = rng.permutation(20)[:k].tolist()
    trunc, ext = M.rbo(S, S, q)
    assert trunc == pytest.approx(1 - q**k) and ext == pytest.approx(1.0)  # X_d = d: (1−q)Σ q^{d−1} = 1 − q^k
    for _ in range(5):
        S, T = rng.permutation(20)[:k], rng.permutation(20)[:k]
        X = np.array([len(set(S[:d]) & set(T[:d])) for d in range(1, k + 1)])
        trunc, ext = M.rbo(S, T, q)
        assert ext == pytest.approx(trunc + X[-1] / k * q**k)  # ((1−q)/q) Σ (X_d/d) q^d ≡ RBO@k
        assert 0 <= trunc <= ext <= 1


def test_rbo_rows_matches_rbo():
    rng = np.random.default_rng(1)
    R_d = np.stack([rng.permutation(15) for _ in range(6)])
    R_p = np.stack([rng.permutation(15) for _ in range(6)])
    for depth in (None, 1, 5):
        trunc, ext = M.rbo_rows(R_d, R_p, 0.8, depth)
        ref = np.array([M.rbo(a.tolist(), b.tolist(), 0.8, depth) for a, b in zip(R_d, R_p)])
        np.testing.assert_allclose(np.stack([trunc, ext], 1), ref)


def test_kendall_and_spearman_vs_scipy():
    rng = np.random.default_rng(2)
    Wd, Wp = sparse_heads(rng)
    Wd[2] = 1.5  # constant nonzero row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tau, rho = M.kendall_tau_b_rows(Wd, Wp, block=4000), M.spearman_rows(Wd, Wp)  # small block: batching
    for c in range(len(Wd)):
        if np.ptp(Wd[c]) == 0 or np.ptp(Wp[c]) == 0:
            assert np.isnan(tau[c]) and np.isnan(rho[c])
            continue
        assert tau[c] == pytest.approx(kendalltau(Wd[c], Wp[c], variant="b").statistic, abs=1e-12)
        assert rho[c] == pytest.approx(spearmanr(Wd[c], Wp[c]).statistic, abs=1e-12)
    assert np.isnan(tau[:3]).all() and np.isfinite(tau[3:]).all()


def test_kendall_hand_cases():
    x = np.array([[1.0, 2, 3], [1, 2, 3], [0, 0, 1], [0, 0, 0]])
    y = np.array([[1.0, 2, 3], [3, 2, 1], [0, 1, 1], [1, 2, 3]])
    # row 2: pair (0,1) tied in x, (0,2) concordant, (1,2) tied in y → n_c − n_d = 1, √((3−1)(3−1)) = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(M.kendall_tau_b_rows(x, y), [1.0, -1.0, 0.5, np.nan])


def test_support_sign_cosine():
    Wd = np.array([[1.0, -2, 3, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1e-9, 1, 0, 0]])
    Wp = np.array([[2.0, 2, -1, 5], [0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # row 0: S_d = {0,1,2}, S_p = {0,1,2,3}; of the shared {0,1,2} only 0 agrees in sign
        np.testing.assert_array_equal(M.support_jaccard_rows(Wd, Wp), [3 / 4, np.nan, 0.0, 1 / 2])
        np.testing.assert_array_equal(M.support_jaccard_rows(Wd, Wp, atol=1e-6), [3 / 4, np.nan, 0.0, 1.0])
        np.testing.assert_array_equal(M.sign_agreement_rows(Wd, Wp), [1 / 3, np.nan, np.nan, 1.0])
        cos = M.cosine_rows(Wd, Wp)
    ref = (Wd * Wp).sum(1) / (np.linalg.norm(Wd, axis=1) * np.linalg.norm(Wp, axis=1) + 1e-300)
    np.testing.assert_allclose(cos[[0, 2, 3]], ref[[0, 2, 3]])
    assert np.isnan(cos[1])


def test_global_metrics_hand():
    Wd = np.array([[3.0, 4, 0], [0, 0, 1], [0, 0, 0]])
    Wp = np.array([[4.0, 3, 0], [0, 0, -2], [0, 0, 0]])
    # normalised rows: (.6,.8,0) vs (.8,.6,0), (0,0,1) vs (0,0,−1), zero rows stay zero → √(.04+.04+4)
    # importance I_d = (3,4,1), I_p = (4,3,2): ranks (2,3,1) vs (3,2,1), ρ = 1 − 6·2/(3·8) = 0.5
    g = M.global_metrics(Wd, Wp)
    assert g["frobenius_normalised"] == pytest.approx(np.sqrt(4.08))
    assert g["importance_spearman"] == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(M.global_metrics(np.zeros((3, 3)), Wp)["importance_spearman"])


def test_compare_heads_identical_and_random():
    rng = np.random.default_rng(3)
    Wd, Wp = sparse_heads(rng, K=20, n=25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = M.compare_heads(Wd, Wd.copy(), q=0.9)
        out = M.compare_heads(torch.tensor(Wd, requires_grad=True), torch.tensor(Wp), k=5, by="magnitude")
    per_class = ["topk_jaccard", "overlap_at_k", "spearman", "kendall_tau_b", "rbo", "rbo_ext", "support_jaccard",
                 "sign_agreement", "cosine"]  # fmt: skip
    assert set(out) == set(per_class) | {"frobenius_normalised", "importance_spearman"}
    for name in per_class:
        assert out[name].shape == (20,) and same[name].shape == (20,)
        valid = ~np.isnan(same[name])
        assert valid[1:].all() and np.isnan(same[name][0]) == (name not in ("overlap_at_k", "rbo", "rbo_ext"))
        expected = 1 - 0.9**25 if name == "rbo" else 1.0
        if name == "overlap_at_k":  # |T_k| / k: rows with fewer than k positive weights fall short of 1
            expected = (M.topk(Wd, 3) >= 0).sum(1) / 3
        np.testing.assert_allclose(same[name][valid], np.broadcast_to(expected, (20,))[valid])
    assert same["frobenius_normalised"] == 0.0 and same["importance_spearman"] == pytest.approx(1.0)
    assert np.isnan(out["spearman"][:2]).all() and np.isfinite(out["spearman"][2:]).all()
    assert np.nanmax(out["rbo"]) <= 1 and np.all(out["rbo"] <= out["rbo_ext"])
    with pytest.raises(ValueError):
        M.compare_heads(Wd, Wp[:, :-1])
